#!/usr/bin/env python3
"""Per-operation cost of the scheduler and the store as the piece count grows (no network).

One command::

    python scripts/bench_scale.py                          # 1k, 10k, 100k and 700k pieces
    python scripts/bench_scale.py --pieces 1000,100000 --budget 0.1

The model has the shape of DeepSeek-V3/R1 (about 700 GB: 163 files of 4.3 GB at 700k pieces of
1 MiB; fewer files for fewer pieces). The scheduler is driven directly with an in-memory manifest
and a fake clock: three mirrors of 8 connections (40 MB/s each, remembered, so spans are sized as
in a real pull at ~1 GB/s), each connection holding a span with half a piece received. The store
is a real one on sparse files in a temporary folder, with the same piece count and 1 KiB pieces
(its costs depend on the number of pieces, not on their size).

Each operation is timed in three states of the pull: 10%, 50% and 90% of the pieces done (a done
front, as the free cursor leaves it), and the mean is printed, in microseconds per call:

- ``acquire``, ``release``: an idle connection takes a span and gives it back (``acquire/pc``:
  the mean span, in pieces). Variants: ``nohash`` (no piece hashes: the tail check runs),
  ``lan`` (a BitTorrent swarm whose peers have half the pieces, in blocks, and one other
  machine pulling, so each owns about half the blocks; a fresh mirror connection, without a
  frontier, looks for pieces of its machine's blocks that no peer has), ``lan-all`` (the peers
  have every piece), ``lan-done`` (this machine's blocks are all done, the other machine's are
  left and no peer has them: the mirror finds nothing of its own to fetch and waits), ``swarm``
  (the swarm source itself takes work).
- ``verified``: ``Scheduler.piece_verified``, per piece.
- ``viable``, ``tick``: ``Scheduler.check_viable`` and ``tick``, once per turn of the engine's
  loop (20 a second).
- ``mark``: ``Store.mark_verified``, per piece (a journal record is written).
- ``bytes``: ``Store.verified_bytes`` + ``Store.received_bytes``; ``snapshot``: the engine's
  progress event (``_Engine.snapshot``: the sources' rates and both store counters), 4 a second.
- ``chunk``: ``Scheduler.progress`` + ``wanted``, per 64 KiB read from a socket.

Then the share of one core these calls take at 1 GB/s, for 1 MiB and 8 MiB pieces: per second
``1e9/P`` pieces (``verified`` + ``mark``), that many over the mean span acquires and releases,
20 turns, 4 progress events (``snapshot`` + one more ``received_bytes``), and, listed apart
because it does not depend on pieces, 15k chunks. And, for LAN pulls, the share of a core
that idle mirror connections take asking for work every 0.2 s (``lan-all``, ``lan-done``: the
answer is a wait). The machine's load is printed before and after: on a busy machine every
figure is high by about the load over the cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from dsmirror import FakeClock, FileEntry, Manifest, Scheduler, SchedulerConfig, SourceInfo
from dsmirror._fetch.engine import _Engine
from dsmirror._journal.store import Store
from dsmirror._schedule.owners import LanView
from dsmirror._schedule.scheduler import Assignment

MIB = 1 << 20
#: DeepSeek-V3/R1: 163 files of about 4.3 GB.
FILES, PIECES_PER_FILE = 163, 4096
MIRRORS, CONNS, CONN_RATE = 3, 8, 40e6
STATES = (0.1, 0.5, 0.9)
CHUNK = 64 << 10
TURNS_PER_S, EVENTS_PER_S = 20, 4
IDLE_RETRY = 0.2  # seconds a connection waits when acquire has no work for it (``Scheduler.acquire``)
DIGEST = "ab" * 32


def model(n: int, piece_size: int, *, hashed: bool = True) -> Manifest:
    files = max(1, min(FILES, round(n / PIECES_PER_FILE)))
    per, extra = divmod(n, files)
    entries = []
    for k in range(files):
        count = per + (1 if k < extra else 0)
        digest = DIGEST if hashed else ""
        entries.append(FileEntry(f"model-{k:05d}.safetensors", count * piece_size, DIGEST, (digest,) * count))
    return Manifest("bench-scale", piece_size, tuple(entries))


def timed(fn: Callable[[], object], budget: float, *, min_reps: int = 3) -> float:
    """Microseconds per call of ``fn``, repeated for about ``budget`` seconds."""
    reps, spent = 0, 0.0
    while reps < min_reps or spent < budget:
        t0 = time.perf_counter()
        fn()
        spent += time.perf_counter() - t0
        reps += 1
    return spent / reps * 1e6


class SchedulerState:
    """A scheduler ``done`` of the way through a pull of ``m``, every mirror connection busy."""

    def __init__(self, m: Manifest, done: float, kind: str) -> None:
        self.m = m
        self.clock = FakeClock()
        n = m.num_pieces
        front = int(n * done)
        flags = bytearray(n)
        flags[:front] = b"\x01" * front
        if kind == "lan-done":  # this machine fetched all its blocks; the other's are left
            view = LanView.for_model(0.0, n, m.piece_size)
            view.update("me", ["other"], 1, 0.0)
            for lo in range(0, n, view.block):
                if view.mine(lo):
                    flags[lo : lo + view.block] = b"\x01" * len(flags[lo : lo + view.block])
        infos = [SourceInfo(f"m{j}", "http", f"m{j}.example", max_connections=CONNS) for j in range(MIRRORS)]
        if kind.startswith(("lan", "swarm")):
            infos.append(SourceInfo("lan", "bittorrent", "lan.example", max_connections=CONNS))
        self.sched = Scheduler(m, flags, infos, self.clock, SchedulerConfig(), rng=random.Random(1))
        for info in infos:
            self.sched.set_prior(info.name, CONN_RATE)
        if kind.startswith(("lan", "swarm")):
            have = bytearray(n)
            for lo in range(0, n, 1024):
                have[lo : lo + 512] = b"\x01" * len(have[lo : lo + 512])
            if kind == "lan-all":
                have = bytearray(b"\x01" * n)
            if kind == "lan-done":
                have = bytearray(n)  # nobody has the other machine's pieces yet
            self.sched.set_peer_pieces("lan", have)
            # The swarm met one other machine pulling: its mirrors may start (``lan``, "The start").
            self.sched.set_lan_hosts("lan", "me", ["other"], 1)
            self.clock.advance(1.0)
        self.busy: list[Assignment] = []
        # One connection of each mirror stays idle; in a LAN pull of two machines, each machine
        # has fewer at work (a machine's share of the uplink).
        busy = CONNS // 2 - 1 if kind.startswith(("lan", "swarm")) else CONNS - 1
        for j in range(MIRRORS):
            for _ in range(busy):
                got = self.sched.acquire(f"m{j}")
                if isinstance(got, Assignment):
                    self.sched.progress(got, m.pieces[got.next_piece].length // 2)
                    self.busy.append(got)


def measure_scheduler(m: Manifest, kind: str, budget: float) -> dict[str, float]:
    """The scheduler's costs for one kind of pull, averaged over STATES."""
    rows: dict[str, list[float]] = {}
    for done in STATES:
        for key, value in measure_state(SchedulerState(m, done, kind), kind, budget).items():
            rows.setdefault(key, []).append(value)
    return {k: statistics.fmean(v) for k, v in rows.items()}


def measure_state(st: SchedulerState, kind: str, budget: float) -> dict[str, float]:
    """The scheduler's costs in one state of a pull."""
    sched, clock, m = st.sched, st.clock, st.m
    taker = "lan" if kind == "swarm" else "m0"
    spans: list[int] = []
    t_acq: list[float] = []
    t_rel: list[float] = []

    def cycle() -> None:
        if kind.startswith("lan"):
            sched.source(taker).resume_at.clear()  # a fresh connection: no frontier yet
        t0 = time.perf_counter()
        got = sched.acquire(taker)
        t1 = time.perf_counter()
        if isinstance(got, Assignment):
            spans.append(got.end - got.start)
            sched.release(got)
            t_rel.append(time.perf_counter() - t1)
        t_acq.append(t1 - t0)

    timed(cycle, budget)
    out = {
        "acquire": statistics.fmean(t_acq) * 1e6,
        "release": statistics.fmean(t_rel) * 1e6 if t_rel else 0.0,
        "span": statistics.fmean(spans) if spans else 0.0,
    }
    if kind != "hashed":
        return out
    out["viable"] = timed(sched.check_viable, budget)
    out["tick"] = timed(sched.tick, budget)
    a = st.busy[0]

    def chunk() -> None:
        clock.advance(0.0005)
        sched.progress(a, CHUNK)
        sched.wanted(a)

    out["chunk"] = timed(chunk, budget / 2, min_reps=1000)
    t_ver: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or not t_ver:
        got = sched.acquire("m1")
        if not isinstance(got, Assignment):
            break
        for i in range(got.next_piece, got.end):
            sched.progress(got, m.pieces[i].length)
            t0 = time.perf_counter()
            go_on = sched.piece_verified(got, i)
            t_ver.append(time.perf_counter() - t0)
            if not go_on:
                break
        sched.release(got)
    out["verified"] = statistics.fmean(t_ver) * 1e6
    return out


def measure_store(n: int, sched_m: Manifest, root: Path, budget: float) -> dict[str, float]:
    """The store's costs on sparse files with ``n`` pieces of 1 KiB, averaged over STATES."""
    m = model(n, 1024)
    rows: dict[str, list[float]] = {}
    store = Store.open(root / f"store-{n}", m)
    try:
        st = SchedulerState(sched_m, 0.5, "hashed")
        engine = SimpleNamespace(clock=st.clock, sched=st.sched, store=store, m=sched_m)
        done = 0
        for frac in STATES:
            upto = int(n * frac)
            t0 = time.perf_counter()
            for i in range(done, upto):
                store.mark_verified(m.pieces[i])
            if upto > done:
                rows.setdefault("mark", []).append((time.perf_counter() - t0) / (upto - done) * 1e6)
            done = upto
            store.commit()
            while store._hash_queue.qsize():  # let the background whole-file hasher catch up
                time.sleep(0.05)
            time.sleep(0.1)
            progress = timed(lambda: (store.verified_bytes, store.received_bytes), budget)
            rows.setdefault("bytes", []).append(progress)
            rows.setdefault("received", []).append(timed(lambda: store.received_bytes, budget / 2))
            rows.setdefault("snapshot", []).append(
                timed(lambda: _Engine.snapshot(engine, 0.0, None), budget)  # type: ignore[arg-type]
            )
    finally:
        store.close()
        shutil.rmtree(root / f"store-{n}", ignore_errors=True)
    return {k: statistics.fmean(v) for k, v in rows.items()}


def share(c: dict[str, float], piece_size: int) -> tuple[float, float]:
    """Percent of one core at 1 GB/s: (per-piece machinery, per-chunk calls)."""
    pieces = 1e9 / piece_size
    spans = pieces / max(1.0, c["span"])
    us = (
        pieces * (c["verified"] + c["mark"])
        + spans * (c["acquire"] + c["release"])
        + TURNS_PER_S * (c["viable"] + c["tick"])
        + EVENTS_PER_S * (c["snapshot"] + c["received"])
    )
    return us / 1e4, 1e9 / CHUNK * c["chunk"] / 1e4


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pieces", default="1000,10000,100000,700000", help="piece counts, comma-separated")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds spent timing each operation")
    args = ap.parse_args()
    counts = [int(x) for x in args.pieces.split(",")]
    print(f"dsmirror bench_scale: python {sys.version.split()[0]}, {load()}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="dsmirror-bench-scale-"))
    results: dict[int, dict[str, float]] = {}
    results8: dict[int, dict[str, float]] = {}
    try:
        for n in counts:
            gc.collect()
            m1 = model(n, MIB)
            c = measure_scheduler(m1, "hashed", args.budget)
            for kind in ("nohash", "lan", "lan-all", "lan-done", "swarm"):
                mk = model(n, MIB, hashed=kind != "nohash")
                got = measure_scheduler(mk, kind, args.budget)
                c[f"acq-{kind}"] = got["acquire"]
            c |= measure_store(n, m1, root, args.budget)
            results[n] = c
            results8[n] = measure_scheduler(model(n, 8 * MIB), "hashed", args.budget) | {
                k: c[k] for k in ("mark", "bytes", "received", "snapshot")
            }
            print(f"  {n} pieces measured ({load()})", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cols = [
        ("acquire", "acquire"),
        ("span", "span/pc"),
        ("release", "release"),
        ("acq-nohash", "nohash"),
        ("acq-lan", "lan"),
        ("acq-lan-all", "lan-all"),
        ("acq-lan-done", "lan-done"),
        ("acq-swarm", "swarm"),
        ("verified", "verified"),
        ("viable", "viable"),
        ("tick", "tick"),
        ("mark", "mark"),
        ("bytes", "bytes"),
        ("snapshot", "snapshot"),
        ("chunk", "chunk"),
    ]
    print("\nmicroseconds per call (1 MiB pieces; mean of 10%, 50%, 90% done; span/pc: pieces per acquire)")
    print(f"{'pieces':>8} " + " ".join(f"{h:>9}" for _, h in cols))
    for n, c in results.items():
        print(f"{n:>8} " + " ".join(f"{c[k]:>9.1f}" for k, _ in cols))
    print("\nshare of one core at 1 GB/s (per-piece machinery; + per-chunk progress/wanted, 64 KiB reads)")
    print(f"{'pieces':>8} {'1 MiB':>9} {'8 MiB':>9} {'chunks':>9}")
    for n in results:
        one, chunks = share(results[n], MIB)
        eight, _ = share(results8[n], 8 * MIB)
        print(f"{n:>8} {one:>8.2f}% {eight:>8.2f}% {chunks:>8.2f}%")
    print(
        f"\nLAN pulls: {MIRRORS * CONNS} idle mirror connections asking every {IDLE_RETRY} s (acquire "
        "answers a wait), share of one core"
    )
    print(f"{'pieces':>8} {'lan-all':>9} {'lan-done':>9}")
    for n, c in results.items():
        idle = MIRRORS * CONNS / IDLE_RETRY / 1e4
        print(f"{n:>8} {idle * c['acq-lan-all']:>8.2f}% {idle * c['acq-lan-done']:>8.2f}%")
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
