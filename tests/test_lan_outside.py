"""What a LAN pull's mirrors may fetch from outside, found in leaps, equals the per-piece rule.

``lan.outside_runs`` drops the free pieces of other machines' blocks from the piece map's
candidates as it meets them, so that once this machine's blocks are done an idle mirror's search
costs the same at any model size (``tests/test_scale.py``). Whatever makes a piece fetchable
again must be seen all the same: a span given back, a piece reopened, a machine that left
handing its blocks over (``lan_handover``), a peer that lost a piece, a spoiled piece. So on
generated pulls (piece and file counts, machines joining and leaving, spans taken, finished in
part and given back, pieces reopened and spoiled), after every step, the runs cover exactly the
free pieces of this machine's blocks that no peer has and the mirror may fetch, and the far end
taken after ``lan_stall`` is the last such piece of any machine's.
"""

from __future__ import annotations

import itertools
import random

import pytest

from dsmirror import (
    FakeClock,
    FileEntry,
    Manifest,
    PieceMismatch,
    Scheduler,
    SchedulerConfig,
    SourceInfo,
    SourceNotFound,
)
from dsmirror._schedule import lan
from dsmirror._schedule.scheduler import Assignment

MiB = 1 << 20
HOSTS = ["-DS0200-Maaaaaaaaaaa", "-DS0200-Mbbbbbbbbbbb", "-DS0200-Mccccccccccc", "-DS0200-Mdddddddddddd"]


def pull(rng: random.Random) -> tuple[Scheduler, bytearray]:
    """A pull of 1-5 files with a share already done: two mirrors and a swarm."""
    n = rng.choice([1, 5, 64, 130, 300, 700])
    cuts = sorted(rng.sample(range(1, n), min(rng.randint(0, 4), n - 1)))
    bounds = [0, *cuts, n]
    files = tuple(
        FileEntry(f"f{j}", (hi - lo) * MiB, "0" * 64, tuple(f"{k:064x}" for k in range(lo, hi)))
        for j, (lo, hi) in enumerate(itertools.pairwise(bounds))
    )
    done = bytearray(rng.random() < 0.3 for _ in range(n))
    infos = [
        SourceInfo("m1", "http", "m1.example", max_connections=4),
        SourceInfo("m2", "http", "m2.example", max_connections=4),
        SourceInfo("swarm", "bittorrent", "swarm", max_connections=8),
    ]
    cfg = SchedulerConfig(lan_handover=rng.choice([3.0, 0.0]))  # 0: a machine that left hands over at once
    s = Scheduler(Manifest("gen", MiB, files), done, infos, FakeClock(), cfg, rng=rng)
    have = bytearray(n)
    s.set_peer_pieces("swarm", have)
    return s, have


def step(rng: random.Random, s: Scheduler, have: bytearray, held: list[Assignment]) -> None:
    """One thing that happens in a LAN pull."""
    n, op = len(have), rng.random()
    assert isinstance(s.clock, FakeClock)
    if op < 0.1:  # the machines pulling change
        others = rng.sample(HOSTS[1:], rng.randint(0, 3))
        s.set_lan_hosts("swarm", HOSTS[0], others, len(others) + rng.randint(0, 1))
    elif op < 0.25:  # time passes: the set holds still, a machine's hold expires, the pull stalls
        s.clock.advance(rng.choice([0.1, 0.5, 1.0, 3.5, 9.0]))
        s.tick()
    elif op < 0.35:  # peers got pieces, one by one or a run
        lo = rng.randrange(n)
        hi = min(n, lo + rng.choice([1, 1, 8, 40]))
        have[lo:hi] = b"\x01" * (hi - lo)
    elif op < 0.38:  # ... or lost one (a peer left)
        have[rng.randrange(n)] = 0
    elif op < 0.75:
        name = rng.choice(["m1", "m1", "m2", "swarm"])
        if rng.random() < 0.5:
            s.source(name).resume_at.clear()  # a new connection
        got = s.acquire(name)
        if isinstance(got, Assignment):
            held.append(got)
    elif op < 0.9 and held:  # a connection ends: some pieces verified, the rest given back
        a = held.pop(rng.randrange(len(held)))
        for k in range(a.next_piece, a.end):
            if rng.random() < 0.4:
                break
            s.progress(a, MiB)
            s.clock.advance(0.05)
            if not s.piece_verified(a, k):
                break
        s.release(a, SourceNotFound("404", source=a.source) if rng.random() < 0.1 else None)
    elif op < 0.93:  # a file failed its whole digest
        s.reopen(k for k in {rng.randrange(n) for _ in range(3)} if s._pieces.is_done(k))
    elif op < 0.95:
        s.source("m2").missing_files.add(rng.randrange(len(s.m.files)))
    elif held:  # a piece failed its hash
        a = held[rng.randrange(len(held))]
        if a.next_piece < a.end:
            s.piece_failed(a, a.next_piece, PieceMismatch(a.next_piece, path="f", expected="0", actual="1"))


def check(s: Scheduler) -> None:
    board, pieces, view = s._board, s._pieces, s._board.lan
    for name in ("m1", "m2"):
        src = s.source(name)
        ok = [
            k
            for k in range(pieces.cursor, len(pieces))
            if pieces.is_free(k) and not board.peers_have(k) and board.usable_for(src, k)
        ]
        runs = list(lan.outside_runs(board, src, pieces.cursor, view))
        covered = [k for lo, hi in runs for k in range(lo, hi)]
        assert covered == [k for k in ok if view is None or view.mine(k)], (name, runs)
        if view is not None:
            assert all((hi - 1) // view.block == lo // view.block for lo, hi in runs), runs
        assert lan._far_end(board, src) == (ok[-1] if ok else None), name


@pytest.mark.parametrize("seed", range(40))
def test_outside_runs_and_far_end_follow_the_per_piece_rule(seed: int) -> None:
    rng = random.Random(seed)
    s, have = pull(rng)
    held: list[Assignment] = []
    s.set_lan_hosts("swarm", HOSTS[0], rng.sample(HOSTS[1:], rng.randint(0, 3)), 1)
    for _ in range(120):
        step(rng, s, have, held)
        check(s)
