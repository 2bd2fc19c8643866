"""Machines of a LAN share one uplink (``dsmirror._schedule.lan``): how many connections a machine
opens to a mirror while others pull too, and when it starts. On the scheduler alone, fake clock.

Measured on the namespaced LAN (``scripts/bench_lan.py``, 96 MiB, 1 MiB pieces, 12 MB/s): with every
machine opening all its connections (8 each), 8 machines had 64 pieces in flight at once, the first
of them verified after 4-5 s and the LAN had to carry most of the model after that, so the last
machine finished 2.4 s after the upstream's last byte (1.49x one copy); a killed machine wasted its
8 pieces in flight. One connection each: 1.20x, and a killed machine loses one piece in flight.
"""

from __future__ import annotations

import dsmirror
from _lan_sched import advance, lan_sched
from dsmirror._schedule.state import Assignment

MiB = 1 << 20
IDS = [f"-DS0200-M{c * 11}" for c in "abcdefgh"]


def _sched(n: int, conns: int = 8) -> tuple[dsmirror.Scheduler, bytearray]:
    return lan_sched(n, conns=conns)


_advance = advance


def _open(s: dsmirror.Scheduler, limit: int = 16) -> list[Assignment]:
    """Every connection of the upstream that gets work now."""
    got = []
    for _ in range(limit):
        a = s.acquire("upstream")
        if not isinstance(a, Assignment):
            break
        got.append(a)
    return got


def test_machines_that_share_the_uplink_open_one_connection_each() -> None:
    for machines in (2, 3, 8):
        s, _ = _sched(256)
        s.set_lan_hosts("swarm", IDS[0], IDS[1:machines], machines - 1)
        _advance(s, 0.5)  # met, and the set held still
        assert len(_open(s)) == 1, machines


def test_a_machine_that_met_only_pullers_starts_one_connection_before_the_set_holds_still() -> None:
    s, _ = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], IDS[1:3], 2)  # LSD found two machines pulling too
    first = _open(s)
    assert len(first) == 1 and first[0].end - first[0].start == 1  # one piece, in its best block
    _advance(s, 0.5)
    assert _open(s) == []  # settled: one connection per machine while the others pull too
    # A seed among the peers: its pieces are known from its bitfield only; wait for the set.
    s, _ = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], IDS[1:2], 2)
    assert _open(s) == []
    # A machine pulling that has pieces already (a late join, or a peer turning into a seed).
    s, have = _sched(256)
    have[7] = 1
    s.set_lan_hosts("swarm", IDS[0], IDS[1:2], 1)
    assert _open(s) == []
    # A small model (fewer than 64 blocks): two machines are likely to start in the same block.
    s, _ = _sched(32)
    s.set_lan_hosts("swarm", IDS[0], IDS[1:2], 1)
    assert _open(s) == []


def test_a_machine_alone_starts_on_time_unless_a_peer_is_on_its_way() -> None:
    """Alone (no peer met), one connection starts 1.1 s after the swarm was ready (seeders announce
    every second), and its connections are told to ask again then, not on a 0.2 s grid (they all
    ask in step: bench_lan's first machine began 1.40 s after its swarm was ready, 1.25 s plus
    the grid). A peer still connecting or in its handshake (``pending``) may be a seed: the machine
    waits for it (it was not counted at all: only peers through their handshake were)."""
    s, _ = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], [], 0)  # ready, no peer
    _advance(s, 1.0)
    wait = s.acquire("upstream")
    assert isinstance(wait, float) and 0 < wait <= 0.1 + 1e-9
    _advance(s, wait)
    first = _open(s)
    assert len(first) == 1 and first[0].end - first[0].start == 1
    # The same, but a peer is connecting when the second and a tenth is up.
    s, _ = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], [], 0)
    _advance(s, 1.05)
    s.set_lan_hosts("swarm", IDS[0], [], 0, 1)  # heard of (LSD) and being dialled
    _advance(s, 0.1)
    assert _open(s) == []
    s.set_lan_hosts("swarm", IDS[0], [], 1, 0)  # met: a seed (it has pieces, it is no host)
    _advance(s, 0.1)
    assert _open(s) == []  # a seed met: wait for the set to hold still, then take what it has not
    # A peer that never gets through (a dead address dialled again and again) is no longer on its
    # way after a while (the swarm stops counting it), and the machine starts.
    s, _ = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], [], 0, 1)
    _advance(s, 1.2)
    assert _open(s) == []
    s.set_lan_hosts("swarm", IDS[0], [], 0, 0)
    assert len(_open(s)) == 1


def test_the_last_machine_fetching_gets_all_its_connections_back() -> None:
    """The others finished their blocks (they still pull, over the LAN): once nothing new has
    appeared among the pieces peers have for a second, this machine may use the whole uplink."""
    s, have = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], IDS[1:4], 3)
    _advance(s, 0.5)
    assert len(_open(s)) == 1
    for k in range(0, 256, 2):  # what the others fetched from outside, as it appears
        have[k] = 1
        _advance(s, 0.05)
        assert _open(s) == []
    _advance(s, 0.3)
    assert _open(s) == []  # (counted every quarter of a second: the last ones just seen)
    _advance(s, 1.1)  # nothing new since
    assert len(_open(s)) == 7


def test_a_stolen_span_ends_where_a_machine_that_joins_owns_the_pieces() -> None:
    """A machine alone opens all its connections; the last idle one steals the back of a span.
    When another machine joins, every span from outside ends where the other's blocks begin
    (``lan.cut_to_owner``): the stolen one too. (It was not marked as a span from outside, so it
    went on over the other machine's blocks, which that machine fetched as well: bench_lan 3 hosts
    5 s apart, the second host met the first late, and 6 pieces came from the upstream twice.)"""
    s, _ = _sched(64, conns=2)
    s.set_prior("upstream", 50e6)  # spans of many pieces
    s.set_lan_hosts("swarm", IDS[0], [], 0)
    _advance(s, 10.0)  # alone, past the grace
    spans: list[Assignment] = []
    while s._pieces.free_count():  # every free piece taken ...
        spans += _open(s, 1)
    spans += _open(s, 1)  # ... and then a steal
    stolen = spans[-1]
    assert stolen.end - stolen.start > 8  # the back half of a span
    s.set_lan_hosts("swarm", IDS[0], IDS[1:2], 1)  # a machine joins
    view = s._board.lan
    assert view is not None and not view.alone
    for a in spans:
        mine = [view.mine(k) for k in range(a.next_piece + 1, a.end)]
        assert all(mine), (a.start, a.end, a.outside)


def test_its_own_fetches_do_not_keep_the_last_machine_at_one_connection() -> None:
    """The swarm's map of what peers have holds this machine's own copy too (what it fetched from
    outside, handed to libtorrent). Those pieces are not the others at work on the uplink: once the
    others' pieces stop appearing, the last machine fetching gets its connections back even while
    its own pieces keep appearing in the map. (Counted with them, it stayed at one connection to the
    end: bench_lan 3 hosts 5 s apart, load 4-5, the second host fetched its last 30 pieces alone at
    8 MB/s of the uplink's 12, and the first finished at 1.45x one copy.)"""
    s, have = _sched(256)
    s.set_lan_hosts("swarm", IDS[0], IDS[1:2], 1)
    _advance(s, 0.5)
    for k in range(0, 64, 2):  # the other machine at work on the uplink
        have[k] = 1
        _advance(s, 0.1)
    mine = _open(s)
    assert len(mine) == 1
    a = mine[0]
    for _ in range(20):  # two seconds of this machine's own pieces, fed to libtorrent as they come
        k = a.next_piece
        s.piece_verified(a, k)
        have[k] = 1
        if a.next_piece >= a.end:
            s.release(a)
            a = s.acquire("upstream")
            assert isinstance(a, Assignment)
        _advance(s, 0.1)
    assert len(_open(s)) == 7  # nothing new from the other machine for 2 s: the whole uplink
