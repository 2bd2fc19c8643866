"""``SwarmSource._bait_search``: the piece kept at priority 1 while no slot wants one (see
``SwarmSource._bait``), found at the cost of the pieces libtorrent lacks, not of the model's.

The search runs on the real method with the few attributes it reads; the swarm behaviour around it
(seeds that stay connected) is covered by the swarm tests with real libtorrent sessions.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

from dsmirror._fetch.swarm.source import SwarmSource, piece_runs


class Broker:
    def __init__(self, verified: bytearray) -> None:
        self.verified, self.calls = verified, 0

    def is_verified(self, index: int) -> bool:
        self.calls += 1
        return bool(self.verified[index])


def state(to_torrent: list[int], have: bytearray, start: int, owned: set[int]) -> SimpleNamespace:
    return SimpleNamespace(
        map=SimpleNamespace(to_torrent=tuple(to_torrent)),
        manifest=SimpleNamespace(num_pieces=len(to_torrent)),
        _runs=None,
        _have=have,
        _bait_from=start,
        _owner=dict.fromkeys(owned),
    )


def reference(s: SimpleNamespace, broker: Broker) -> int:
    """The walk over every piece that ``_bait_search`` replaced."""
    n = s.manifest.num_pieces
    for k in range(n):
        j = (s._bait_from + k) % n
        t = s.map.to_torrent[j]
        if t >= 0 and not s._have[t] and not broker.verified[j] and j not in s._owner:
            return j
    return -1


def test_it_finds_what_the_walk_over_every_piece_found() -> None:
    rng = random.Random(7)
    for _ in range(400):
        n = rng.randrange(1, 60)
        # a torrent of some files: runs of pieces in it (in order), others outside (-1)
        to_torrent, t = [], 0
        while len(to_torrent) < n:
            run = rng.randrange(1, 10)
            inside = rng.random() < 0.7
            for _ in range(min(run, n - len(to_torrent))):
                to_torrent.append(t if inside else -1)
                t += inside
        have = bytearray(rng.random() < 0.6 for _ in range(t))
        verified = bytearray(rng.random() < 0.3 for _ in range(n))
        owned = {j for j in range(n) if rng.random() < 0.1}
        s = state(to_torrent, have, rng.randrange(n), owned)
        want = reference(s, Broker(verified))
        got = SwarmSource._bait_search(s, Broker(verified))  # type: ignore[arg-type]
        assert got == want, (to_torrent, have, verified, owned, s._bait_from)


def test_at_700k_pieces_it_looks_only_at_pieces_libtorrent_lacks() -> None:
    n = 700_000
    to_torrent = list(range(n))
    have = bytearray(b"\x01") * n
    lacking = [5, 350_000, 699_999]  # verified by the store, not yet in libtorrent's copy
    verified = bytearray(n)
    for j in lacking:
        have[j] = 0
        verified[j] = 1
    s = state(to_torrent, have, 400_000, set())
    s._runs = piece_runs(tuple(to_torrent))
    broker = Broker(verified)
    assert SwarmSource._bait_search(s, broker) == -1  # type: ignore[arg-type]
    assert broker.calls == len(lacking)  # the walk asked about all 700k
    verified[350_000] = 0
    assert SwarmSource._bait_search(s, Broker(verified)) == 350_000  # type: ignore[arg-type]
