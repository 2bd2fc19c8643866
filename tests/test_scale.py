"""Flat costs at 700 GB: what the scheduler and the store do per call does not grow with the pull.

A 700 GB model has 700k pieces of 1 MiB, and the engine asks the scheduler and the store
something several times a second per connection. So each call must cost the same at 2k pieces as
at 100k. That is checked by counting the Python lines a call executes (``sys.settrace``), which is
exact and independent of the machine's load; work done in C (``bytearray.find``) is not counted,
and is meant to stand in for a walk. Wall-clock figures are printed by ``scripts/bench_scale.py``.

Models with thousands of files must pull under a low descriptor limit (the store keeps a bounded
set of descriptors, syncing a written file before it closes its descriptor), and what happens per
file at the end (finalize, the learned manifest) stays linear; a dry run resolves each candidate
file's real path once, not once per piece.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import dsmirror
from dsmirror import FakeClock, FileEntry, Manifest, Scheduler, SchedulerConfig, SourceInfo, SourceNotFound
from dsmirror._fetch.engine import _Engine
from dsmirror._fetch.reuse import LocalIndex, plan_dry_run, reuse_local
from dsmirror._journal import store as store_module
from dsmirror._journal.store import Store
from dsmirror._schedule.scheduler import Assignment
from dsmirror.testing import MirrorServer, write_random_tree

KiB = 1 << 10
MiB = 1 << 20
SMALL, LARGE = 2_000, 100_000  # pieces
CLI = [sys.executable, "-c", "from dsmirror.cli import main; main()"]


def lines(fn: Callable[[], object]) -> int:
    """How many Python lines ``fn()`` executes (every frame it enters, generators included)."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def model(n: int, piece_size: int = MiB, *, files: int = 20, hashed: bool = True) -> Manifest:
    """``n`` pieces in ``files`` files (placeholder digests: nothing is hashed)."""
    per, extra = divmod(n, files)
    entries = []
    for k in range(files):
        count = per + (1 if k < extra else 0)
        digest = f"{k:064x}" if hashed else ""
        size = count * piece_size - (piece_size // 3 if count else 0)  # the last piece is short
        entries.append(FileEntry(f"f{k:03d}.bin", size, f"{k:064x}", (digest,) * count))
    return Manifest("scale", piece_size, tuple(entries))


def scheduler(m: Manifest, *, lan: bytearray | None = None) -> Scheduler:
    """Half of ``m`` done, three mirrors at work (4 connections each, 1 MB/s remembered: spans of
    6 pieces at any size), ``m2`` lacking the last file; with ``lan``, a swarm whose peers have it."""
    n = m.num_pieces
    done = bytearray(n)
    done[: n // 2] = b"\x01" * (n // 2)
    infos = [SourceInfo(f"m{j}", "http", f"m{j}.example", max_connections=4) for j in range(3)]
    if lan is not None:
        infos.append(SourceInfo("lan", "bittorrent", "lan.example", max_connections=4))
    sched = Scheduler(m, done, infos, FakeClock(), SchedulerConfig(), rng=random.Random(1))
    for info in infos:
        sched.set_prior(info.name, 1e6)
    if lan is not None:
        sched.set_lan_hosts("lan", "me", [], 1)  # met a peer: mirrors may start (dsmirror._schedule.lan)
        assert isinstance(sched.clock, FakeClock)
        sched.clock.advance(1.0)
    a = sched.acquire("m2")
    assert isinstance(a, Assignment)
    sched.release(a, SourceNotFound("404", source="m2"))
    sched.source("m2").missing_files.add(len(m.files) - 1)
    sched.source("m2").paused_until = 0.0
    for j in range(3):
        for _ in range(3):
            got = sched.acquire(f"m{j}")
            assert isinstance(got, Assignment)
            sched.progress(got, m.pieces[got.next_piece].length // 2)
    if lan is not None:
        sched.set_peer_pieces("lan", lan)  # after the mirrors took work: they have some still
    return sched


def acquire_release(
    sched: Scheduler, name: str, *, fresh: bool = False, idle: bool = False
) -> Callable[[], None]:
    """``idle``: the source is to get no work (a mirror when the LAN has everything)."""

    def run() -> None:
        if fresh:
            sched.source(name).resume_at.clear()  # a new connection: no frontier yet
        got = sched.acquire(name)
        if idle:
            assert isinstance(got, float), got
            return
        assert isinstance(got, Assignment), got
        sched.release(got)

    return run


def verify_span(sched: Scheduler) -> Callable[[], None]:
    def run() -> None:
        got = sched.acquire("m1")
        assert isinstance(got, Assignment)
        for i in range(got.start, got.end):
            sched.progress(got, sched.m.pieces[i].length)
            sched.piece_verified(got, i)
        sched.release(got)

    return run


def costs(n: int) -> dict[str, int]:
    """Lines per call of each operation, on pulls of ``n`` pieces."""
    out: dict[str, int] = {}
    sched = scheduler(model(n))
    busy = sched.acquire("m0")
    assert isinstance(busy, Assignment)

    def chunk() -> None:  # what a connection reports per read from its socket
        sched.progress(busy, 64 * KiB)
        sched.wanted(busy)

    ops: dict[str, Callable[[], object]] = {
        "acquire+release": acquire_release(sched, "m0"),
        "verify a span": verify_span(sched),
        "check_viable": sched.check_viable,
        "tick": sched.tick,
        "progress+wanted": chunk,
    }
    for name, op in ops.items():
        op()  # warm: a first call may take a span that later calls find free again
        out[name] = lines(op)
    nohash = scheduler(model(n, hashed=False))
    out["acquire, no piece hashes"] = lines(acquire_release(nohash, "m0"))
    n_ = model(n).num_pieces
    everything = scheduler(model(n), lan=bytearray(b"\x01" * n_))
    out["mirror acquire, LAN has everything"] = lines(
        acquire_release(everything, "m0", fresh=True, idle=True)
    )
    half = bytearray(n_)
    half[: n_ * 3 // 4] = b"\x01" * (n_ * 3 // 4)
    lan = scheduler(model(n), lan=half)
    out["mirror acquire, LAN has 3/4"] = lines(acquire_release(lan, "m0", fresh=True))
    out["swarm acquire"] = lines(acquire_release(lan, "lan"))
    return out


def test_scheduler_calls_cost_the_same_at_any_piece_count() -> None:
    small, large = costs(SMALL), costs(LARGE)
    for op, k in small.items():
        assert large[op] <= 1.25 * k + 30, (op, k, large[op])


def blocks_done_elsewhere_left(n: int) -> int:
    """Lines of an idle mirror's acquire in a LAN pull of two machines once this one fetched all
    its blocks and the other's are left, had by no peer, with no connection at work (the answer
    is a wait)."""
    m = model(n)
    sched = scheduler(m, lan=bytearray(m.num_pieces))
    sched.set_lan_hosts("lan", "me", ["other"], 1)
    assert isinstance(sched.clock, FakeClock)
    sched.clock.advance(1.0)  # the set of machines held still: mirrors may start
    view = sched._board.lan
    assert view is not None
    for a in list(sched._board.assignments.values()):
        sched.release(a)  # every connection idle: nothing to steal or help
    for i in range(m.num_pieces):
        if view.mine(i) and sched._pieces.is_free(i):
            sched._pieces.finish(i)
    run = acquire_release(sched, "m0", fresh=True, idle=True)
    run()
    return lines(run)


def test_idle_lan_mirror_costs_the_same_once_its_blocks_are_done() -> None:
    small, large = blocks_done_elsewhere_left(SMALL), blocks_done_elsewhere_left(LARGE)
    assert large <= 1.25 * small + 30, (small, large)


# -- the store -------------------------------------------------------------------------------------
def store_model(n: int, *, files: int = 20) -> Manifest:
    return model(n, 1 * KiB, files=files)


def test_store_progress_and_snapshot_cost_the_same_at_any_piece_count(tmp_path: Path) -> None:
    got: dict[int, tuple[int, int]] = {}
    for n in (SMALL, LARGE // 2):
        m = store_model(n)
        with Store.open(tmp_path / str(n), m) as store:
            for i in range(0, n, 3):
                store.mark_verified(m.pieces[i])
            sched = scheduler(model(n))
            engine: Any = SimpleNamespace(clock=sched.clock, sched=sched, store=store, m=sched.m)

            def progress(store: Store = store) -> tuple[int, int]:
                return store.verified_bytes, store.received_bytes

            def snapshot(engine: Any = engine) -> object:
                return _Engine.snapshot(engine, 1.0, None)  # what the engine emits 4 times a second

            got[n] = (lines(progress), lines(snapshot))
    (p1, s1), (p2, s2) = got.values()
    assert p2 <= p1 + 2 and s2 <= 1.25 * s1 + 30, got


def recount(store: Store) -> tuple[int, int]:
    """(verified, received) bytes from the pieces marked done, as the store once summed them."""
    m = store.manifest
    done = store.verified_pieces()
    received = sum(p.length for p in m.pieces if done[p.index])
    verified = sum(
        p.length for p in m.pieces if done[p.index] and (p.sha256 or store.file_verified(p.file_index))
    )
    return verified, received


def test_store_byte_counters_follow_every_change(tmp_path: Path) -> None:
    src = tmp_path / "src"
    sizes = {"hashed.bin": 40 * 16 * KiB + 5, "bare.bin": 30 * 16 * KiB - 7, "tiny.bin": 10, "empty": 0}
    write_random_tree(src, sizes, seed=3)
    full = dsmirror.create_manifest(src, name="counters", piece_size=16 * KiB)
    # bare.bin has no piece hashes: its pieces count as verified once the whole file matched.
    files = tuple(
        FileEntry(f.path, f.size, f.sha256, ("",) * len(f.pieces)) if f.path == "bare.bin" else f
        for f in full.files
    )
    m = Manifest(full.name, full.piece_size, files)
    dest = tmp_path / "dest"
    rng = random.Random(5)
    order = list(range(m.num_pieces))
    rng.shuffle(order)

    def put(store: Store, i: int) -> None:
        p = m.pieces[i]
        data = (src / p.path).read_bytes()[p.offset : p.offset + p.length]
        store.write(p, 0, data)
        store.mark_verified(p, source="src", digest="x" * 64)

    with Store.open(dest, m) as store:
        for i in order[: len(order) // 2]:
            put(store, i)
            assert (store.verified_bytes, store.received_bytes) == recount(store)
    with Store.open(dest, m) as store:  # counted again from the journal
        assert (store.verified_bytes, store.received_bytes) == recount(store)
        for i in order[len(order) // 2 :]:
            put(store, i)
        assert store.wait_checked(30)
        assert store.verified_bytes == store.received_bytes == m.total_size == recount(store)[0]
        fi = [f.path for f in m.files].index("bare.bin")
        store.invalidate(list(m.file_piece_ranges[fi])[:3])  # a repair un-trusts the bare file's pieces
        assert (store.verified_bytes, store.received_bytes) == recount(store)
        assert store.verified_bytes == m.total_size - m.files[fi].size


# -- descriptors -----------------------------------------------------------------------------------
@pytest.fixture
def fd_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Watches the descriptors of partial files: how many are open at once, and that none is
    closed with bytes written since its last fdatasync."""
    spy: dict[str, Any] = {"open": set(), "dirty": set(), "most": 0, "closed_dirty": []}
    real_open, real_pwrite, real_sync, real_close = os.open, os.pwrite, os.fdatasync, os.close

    def opened(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *args, **kw)
        if "/partial/" in str(path) and "/data/" in str(path):
            spy["open"].add(fd)
            spy["most"] = max(spy["most"], len(spy["open"]))
        return fd

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in spy["open"]:
            spy["dirty"].add(fd)
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        spy["dirty"].discard(fd)

    def close(fd: int) -> None:
        if fd in spy["dirty"]:
            spy["closed_dirty"].append(fd)
        spy["open"].discard(fd)
        spy["dirty"].discard(fd)
        real_close(fd)

    for name, fn in (("open", opened), ("pwrite", pwrite), ("fdatasync", fdatasync), ("close", close)):
        monkeypatch.setattr(os, name, fn)
    yield spy


def filled(files: int, *, file_digests: bool = True) -> Manifest:
    """``files`` one-piece files, file *k* of ``1000 + k % 7`` bytes ``k % 251``, with true
    piece digests (and whole-file digests, or none: then the store learns them)."""
    entries = []
    for k in range(files):
        digest = hashlib.sha256(content(k)).hexdigest()
        entries.append(FileEntry(f"f{k:04d}.bin", len(content(k)), digest if file_digests else "", (digest,)))
    return Manifest("filled", 1 * KiB, tuple(entries))


def content(k: int) -> bytes:
    return bytes([k % 251]) * (1000 + k % 7)


def test_store_keeps_few_descriptors_and_syncs_before_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fd_spy: dict[str, Any]
) -> None:
    monkeypatch.setattr(store_module, "fd_budget", lambda: 16)
    m = filled(300)
    dest = tmp_path / "dest"
    with Store.open(dest, m) as store:
        for p in m.pieces:
            store.write(p, 0, content(p.file_index))
            store.mark_verified(p)
            if p.index % 97 == 0:
                store.commit()
        store.commit()
        assert all(store.read_piece(p) == content(p.file_index) for p in m.pieces[::7])
    assert fd_spy["most"] <= 16 + 1  # the budget, and a file being created before it is added
    assert fd_spy["closed_dirty"] == [], "a descriptor was closed with bytes not yet synced"
    with Store.open(dest, m) as store:  # every piece the commits covered is trusted again
        assert store.stats.trusted_pieces == m.num_pieces
        assert store.stats.reverified_pieces == 0
        assert store.wait_checked(60)
        assert len(store.finalize()) == 300
    assert (dest / "f0299.bin").read_bytes() == content(299)
    assert fd_spy["most"] <= 16 + 1


@pytest.mark.slow
def test_five_thousand_files_pull_under_256_descriptors(
    tmp_path: Path, make_model: Callable[..., Any], cli_env: dict[str, str]
) -> None:
    rng = random.Random(11)
    sizes = {f"shard-{i // 100:02d}/part-{i:04d}.bin": rng.randint(1, 40 * KiB) for i in range(5000)}
    mdl = make_model(sizes, piece_size=16 * KiB, name="many-files", seed=2)
    server = MirrorServer(mdl.root, host="127.0.0.1")
    server.start()
    try:
        catalog = tmp_path / "mirrors.yaml"
        catalog.write_text(f"version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: {server.url}\n")
        dest = tmp_path / "dest"
        limited = ["sh", "-c", 'ulimit -n 256 && exec "$@"', "sh", *CLI]
        r = subprocess.run(
            [*limited, "pull", str(mdl.manifest_path), "--mirrors", str(catalog), "--no-default-catalog",
             "--dest", str(dest), "--no-p2p"],
            env=cli_env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr[-2000:]
    mdl.assert_identical(dest)


def finalize_lines(tmp_path: Path, files: int) -> tuple[int, int]:
    """Lines run by learned_manifest and by finalize for ``files`` one-piece files without
    whole-file digests (each one is learned)."""
    m = filled(files, file_digests=False)
    with Store.open(tmp_path / f"d{files}", m) as store:
        for p in m.pieces:
            store.write(p, 0, content(p.file_index))
            store.mark_verified(p)
        assert store.wait_checked(120)
        learned = lines(store.learned_manifest)
        final = lines(store.finalize)
    return learned, final


@pytest.mark.slow
def test_finalize_and_learned_manifest_are_linear_in_files(tmp_path: Path) -> None:
    (l1, f1), (l5, f5) = finalize_lines(tmp_path, 1000), finalize_lines(tmp_path, 5000)
    assert l5 <= 5 * 1.3 * l1, (l1, l5)
    assert f5 <= 5 * 1.3 * f1, (f1, f5)


# -- reuse and dry runs ----------------------------------------------------------------------------
def test_dry_run_and_reuse_resolve_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    sizes = {"a.bin": 600 * 16 * KiB, "b.bin": 200 * 16 * KiB + 3}
    write_random_tree(old, sizes, seed=1)
    write_random_tree(new, sizes, seed=1)
    with open(new / "a.bin", "r+b") as fh:  # the new revision changes one piece of a.bin
        fh.seek(300 * 16 * KiB)
        fh.write(b"changed")
    m = dsmirror.create_manifest(new, name="rev2", piece_size=16 * KiB)
    dest = tmp_path / "dest"
    dest.mkdir()
    for rel in sizes:  # the old revision, copied by hand: tried at the same paths
        (dest / rel).write_bytes((old / rel).read_bytes())
    calls = 0
    real = os.path.realpath

    def realpath(path: Any, *args: Any, **kw: Any) -> str:
        nonlocal calls
        calls += 1
        return str(real(path, *args, **kw))

    monkeypatch.setattr(os.path, "realpath", realpath)
    index = LocalIndex.build(m, dest, [dest])
    plan = plan_dry_run(m, dest, [], index)
    assert plan.present_bytes + plan.reuse_bytes == m.total_size - 16 * KiB  # b.bin is intact
    assert calls <= 20 * len(m.files) + 20, calls  # was several per piece: 800 pieces here
    calls = 0
    with Store.open(dest, m) as store:
        events = list(reuse_local(store, LocalIndex.build(m, dest, [dest])))
        assert store.received_bytes == m.total_size - 16 * KiB, events
    assert calls <= 20 * len(m.files) + 20, calls
