"""``peer_view`` (the swarm's map of which pieces peers have) equals the plain per-piece rule it
replaced, on generated cases: torrents missing files (-1), short availability (no picker yet),
counts over 255, tainted pieces, identity maps, maps of files in another order, shuffled maps."""

from __future__ import annotations

import random

import pytest

from dsmirror._fetch.swarm.source import peer_view, piece_runs


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
