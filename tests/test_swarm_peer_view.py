"""``peer_view`` (the swarm's map of which pieces peers have) equals the plain per-piece rule it
replaced, on generated cases: torrents missing files (-1), short availability (no picker yet),
counts over 255, tainted pieces, identity maps, maps of files in another order, shuffled maps."""

from __future__ import annotations

import random

import pytest

from dsmirror._fetch.swarm.source import _PEER_SCAN, _PEER_SCAN_MIN, peer_view, piece_runs, scan_period


def _plain(avail: list[int], mine: bytearray, tainted: set[int], to_torrent: tuple[int, ...]) -> bytes:
    return bytes(
        1 if t >= 0 and ((t < len(avail) and avail[t] > 0) or mine[t]) and t not in tainted else 0
        for t in to_torrent
    )


@pytest.mark.parametrize("seed", range(60))
def test_peer_view_is_the_per_piece_rule(seed: int) -> None:
    rnd = random.Random(seed)
    nt = rnd.choice([0, 1, 2, 7, 64, 65, 300])
    mine = bytearray(rnd.random() < 0.3 for _ in range(nt))
    top = rnd.choice([1, 3, 255, 256, 1000])
    avail = [rnd.choice([0, 0, rnd.randint(0, top)]) for _ in range(nt)]
    if rnd.random() < 0.3:
        avail = avail[: rnd.randint(0, nt)]  # no piece picker yet / a seed's empty availability
    tainted = {t for t in range(nt) if rnd.random() < 0.1}
    kind = rnd.choice(["identity", "files", "shuffled"])
    if kind == "identity":
        order = list(range(nt))
    elif kind == "files":  # runs of pieces (files) in another order, some not in the torrent
        cuts = sorted(rnd.sample(range(1, nt), min(nt - 1, rnd.randint(0, 6)))) if nt > 1 else []
        files = [list(range(a, b)) for a, b in zip([0, *cuts], [*cuts, nt], strict=True)]
        rnd.shuffle(files)
        order = [t for f in files for t in f]
        for _ in range(rnd.randint(0, 3)):
            k = rnd.randint(0, len(order))
            order[k:k] = [-1] * rnd.randint(1, 4)
    else:
        order = list(range(nt)) + [-1] * rnd.randint(0, 5)
        rnd.shuffle(order)
    to_torrent = tuple(order)
    got = peer_view(avail, mine, tainted, piece_runs(to_torrent))
    assert bytes(got) == _plain(avail, mine, tainted, to_torrent)


def test_a_cheap_map_is_scanned_every_loop_turn_and_a_dear_one_seldom() -> None:
    """A small model's map (98 pieces: a scan ~0.3 ms) is refreshed every loop turn, so that a
    peer's piece reaches the scheduler at once (it waited up to 0.25 s: the end of every pull,
    and a seeder met just before a machine alone starts); a 700k-piece map (0.08-0.17 s a scan)
    every 0.25 s, a tenth of the loop's time at most."""
    assert scan_period(0.0003) == _PEER_SCAN_MIN == 0.05
    assert scan_period(0.1) == _PEER_SCAN == 0.25
    assert scan_period(0.012) == pytest.approx(0.12)
