"""The piece-source suite: :func:`check_piece_source` and the contract it checks.

The piece-source contract (:class:`dsmirror._fetch.broker.SwarmSource`: a BitTorrent swarm)
==========================================================================================
A *piece source* is not asked for byte ranges: it runs beside the engine's connections, takes
work from the same scheduler, obtains whole pieces its own way (from peers) and hands each one to
the engine, which verifies it against the manifest, stores it and tells the scheduler. It is
built for one pull; ``run(broker)`` is called once, in a thread of its own, with a
:class:`~dsmirror._fetch.broker.PieceBroker`, all it may see of the engine. The suite runs real
pulls (``dsmirror._fetch.engine.fetch``) and watches every call the source makes on its broker.

*Identity.* ``info`` is a :class:`SourceInfo` with ``info.max_connections >= 1`` (its slots);
``name`` is ``info.name``, a non-empty string, and the name it gives the broker (``acquire``,
``deliver``, ``set_peer_pieces``, ``ban``).

*The broker's rules.*

- Every assignment ``acquire`` returned is ``release``-d exactly once, by the time ``run``
  returns; nothing it did not acquire is released.
- ``deliver`` hands over whole pieces of assignments it holds, in their order: the piece is the
  assignment's ``next_piece`` (never one before it, never one past its end), of the manifest, and
  ``data`` is ``piece.length`` bytes.
- Once ``wanted(a)`` said False, nothing more of ``a`` is delivered.
- Asked to wait (``acquire`` returned seconds), it waits (up to a second) before asking again,
  unless the pieces it can fetch grew since (its ``set_peer_pieces`` map): the wait was the answer
  to what it could fetch then.
- ``set_peer_pieces`` gets a ``bytearray`` with one entry per piece; ``emit`` gets events.
- ``run`` returns once ``stopping()`` is true: before the engine, done with the pull, calls
  ``close()`` (it gives its threads 3 s).

*Alone, it completes a pull.* With no other source, every piece comes from it, every byte is the
manifest's, and nothing it delivers is rejected -- at piece boundaries, in one-byte and
one-piece files and files one byte over or under a piece.

*Beside other sources, it shares the work.* With a mirror that holds only some files, the pull
completes, and every byte of the files only it can get comes from it.

*A resumed pull.* Pieces the store already verified are not fetched again: it delivers exactly
the bytes that were missing.

*Closing.* ``close()`` may be called before ``run`` (a pull that stopped before it started), and
twice; it returns promptly.

Every pull must finish within ``timeout`` seconds; one that does not is stopped (the engine shuts
down cleanly) and fails its check: a piece source that never releases its work, or takes none,
fails instead of hanging the caller. The factory builds a fresh piece source for each pull, able
to get the pieces of ``manifest`` whose bytes are under ``root`` (e.g. a seeder of ``root`` it
started); the suite writes the files there and makes the manifest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.clock import Clock
from dsmirror._core.events import Event, PieceRejected, Progress, PullFinished, SourceProgress
from dsmirror._fetch.broker import PieceBroker, SwarmSource
from dsmirror._fetch.engine import fetch
from dsmirror._fetch.local import MemorySource, local_source_info
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import Manifest, Piece
from dsmirror._journal.store import Store
from dsmirror._schedule.info import SourceInfo
from dsmirror._schedule.scheduler import Assignment
from dsmirror._verify.tree import create_manifest
from dsmirror.testing.conformance._common import Broken, Checklist, ConformanceReport, KiB, content

__all__ = ["PieceSourceFactory", "check_piece_source"]

#: Builds a piece source for one pull of ``manifest``, able to get the pieces of the files under
#: the folder given (``folder/<path>`` holds each file of the manifest).
PieceSourceFactory = Callable[[Manifest, Path], SwarmSource]


def _sizes(ps: int) -> dict[str, int]:
    return {
        "a-under.bin": ps - 1,
        "b-exact.bin": ps,
        "c-over.bin": ps + 1,
        "one.bin": 1,
        "sub/big.bin": 3 * ps + ps // 3,
        "sub/two.bin": 2 * ps,
        "sub/many.bin": 8 * ps + 1,  # long enough for spans of several pieces, once measured
    }


class _Watcher(PieceBroker):
    """The engine's broker, passed through, with every call the piece source makes checked.

    Broken rules are collected in ``broken`` (the pull goes on: the suite reports them after).
    """

    def __init__(self, broker: PieceBroker, name: str, manifest: Manifest) -> None:
        self._b = broker
        self._name = name
        self._m = manifest
        self._lock = threading.Lock()
        self._broken: dict[str, list[str]] = {}  # rule -> what broke it, each time
        self.held: dict[int, Assignment] = {}
        self._unwanted: set[int] = set()
        self._wait_until = 0.0
        self._have: bytearray | None = None  # the source's set_peer_pieces map
        self._have_at_wait = 0  # that map, as an integer, when acquire last said wait

    def _rule(self, ok: bool, rule: str, what: str) -> None:
        if not ok:
            with self._lock:
                self._broken.setdefault(rule, []).append(what)

    @property
    def broken(self) -> list[str]:
        """Each rule broken: the first time, and how often."""
        with self._lock:
            return [
                w[0] + (f" (and {len(w) - 1} more times)" if len(w) > 1 else "")
                for w in self._broken.values()
            ]

    def _own(self, source: str, call: str) -> None:
        self._rule(
            source == self._name, "name", f"{call}() with source {source!r}, not its name {self._name!r}"
        )

    @property
    def clock(self) -> Clock:
        return self._b.clock

    @property
    def partial_area(self) -> Path:
        return self._b.partial_area

    @property
    def has_mirrors(self) -> bool:
        return self._b.has_mirrors

    def stopping(self) -> bool:
        return self._b.stopping()

    def finished(self) -> bool:
        return self._b.finished()

    def acquire(self, source: str) -> Assignment | float | None:
        self._own(source, "acquire")
        now = time.monotonic()
        have = int.from_bytes(self._have, "big") if self._have is not None else 0
        grown = have & ~self._have_at_wait != 0
        self._rule(
            now >= self._wait_until or grown, "wait", "asked for work again before the wait acquire() gave it"
        )
        got = self._b.acquire(source)
        if isinstance(got, float):
            self._wait_until = now + min(got, 1.0) - 0.01
            self._have_at_wait = have
        elif got is not None:
            with self._lock:
                self.held[got.id] = got
        return got

    def wanted(self, a: Assignment) -> bool:
        ok = self._b.wanted(a)
        if not ok:
            with self._lock:
                self._unwanted.add(a.id)
        return ok

    def deliver(self, a: Assignment, piece: Piece, data: bytes, source: str) -> bool:
        self._own(source, "deliver")
        with self._lock:
            held, unwanted = a.id in self.held, a.id in self._unwanted
        self._rule(
            held, "held", "delivered a piece of an assignment it did not hold (released, or never acquired)"
        )
        self._rule(not unwanted, "wanted", "delivered a piece of an assignment after wanted() said False")
        self._rule(
            piece.index == a.next_piece and a.next_piece < a.end,
            "order",
            f"delivered piece {piece.index} of the span [{a.next_piece}, {a.end}): not its next piece",
        )
        self._rule(
            0 <= piece.index < self._m.num_pieces and piece == self._m.pieces[piece.index],
            "piece",
            f"delivered a piece that is not the manifest's piece {piece.index}",
        )
        self._rule(
            len(data) == piece.length, "length", f"delivered {len(data)} bytes for a piece of {piece.length}"
        )
        return self._b.deliver(a, piece, data, source)

    def release(self, a: Assignment, error: BaseException | None = None) -> None:
        with self._lock:
            held = self.held.pop(a.id, None) is not None
        self._rule(held, "release", "released an assignment it did not hold (twice, or never acquired)")
        self._b.release(a, error)

    def is_verified(self, index: int) -> bool:
        return self._b.is_verified(index)

    def read_piece(self, piece: Piece) -> bytes:
        return self._b.read_piece(piece)

    def set_peer_pieces(self, source: str, have: bytearray) -> None:
        self._own(source, "set_peer_pieces")
        self._rule(
            isinstance(have, bytearray) and len(have) == self._m.num_pieces,
            "peers",
            f"set_peer_pieces() got a {type(have).__name__} of {len(have)}, not a bytearray of one per piece",
        )
        self._have = have
        self._b.set_peer_pieces(source, have)

    def ban(self, source: str, reason: str) -> None:
        self._own(source, "ban")
        self._b.ban(source, reason)

    def emit(self, event: Event) -> None:
        self._rule(isinstance(event, Event), "event", f"emit() got a {type(event).__name__}, not an Event")
        self._b.emit(event)


class _Watched:
    """A piece source as the engine sees it, whose ``run`` gets a :class:`_Watcher`."""

    def __init__(self, inner: SwarmSource, manifest: Manifest) -> None:
        self.inner = inner
        self.info = inner.info
        self._manifest = manifest
        self.watcher: _Watcher | None = None
        self._running = threading.Event()
        self.broken: list[str] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def run(self, broker: PieceBroker) -> None:
        self.watcher = w = _Watcher(broker, self.inner.name, self._manifest)
        self._running.set()
        try:
            self.inner.run(w)
        finally:
            self._running.clear()
            if w.held:
                self.broken.append(f"run() returned holding {len(w.held)} assignment(s) it never released")

    def piece_available(self, piece: Piece, data: bytes | None) -> None:
        self.inner.piece_available(piece, data)

    def close(self) -> None:
        if self._running.is_set():
            self.broken.append("run() had not returned when the pull ended (stopping() was true for 3 s)")
        self.inner.close()

    def rules_broken(self) -> list[str]:
        return [*(self.watcher.broken if self.watcher else []), *self.broken]


class _Pull:
    """A pull's events, closable (``fetch`` is a generator, typed as an iterator)."""

    def __init__(self, events: Iterator[Event]) -> None:
        self._events = events

    def __iter__(self) -> Iterator[Event]:
        return self._events

    def close(self) -> None:
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Broken) else f"{type(exc).__name__}: {exc}"


def _last_progress(events: list[Event]) -> tuple[SourceProgress, ...]:
    found = [e for e in events if isinstance(e, Progress)]
    return found[-1].sources if found else ()


@dataclass
class _PieceRun:
    make: PieceSourceFactory
    manifest: Manifest
    root: Path
    workdir: Path
    files: Mapping[str, bytes]
    timeout: float
    progress: list[str]

    def _pull(
        self, name: str, inner: SwarmSource, others: list[Source], prefill: set[int] | None = None
    ) -> PullFinished:
        dest = self.workdir / name
        m = self.manifest
        events: list[Event] = []
        source = _Watched(inner, m)
        failed: Exception | None = None
        try:
            with Store.open(dest, m) as store:
                for i in sorted(prefill or ()):
                    p = m.pieces[i]
                    store.write(p, 0, self.files[p.path][p.offset : p.offset + p.length])
                    store.mark_verified(p)
                self.progress.append(f"pulling into {dest}")
                deadline = time.monotonic() + self.timeout
                # Progress events come every 0.25 s, so the deadline is seen; leaving the
                # generator early closes it, which stops the engine's threads.
                with contextlib.closing(_Pull(fetch(m, [*others, source], store))) as pull:
                    for ev in pull:
                        events.append(ev)
                        if time.monotonic() > deadline:
                            got = sum(s.delivered for s in _last_progress(events) if s.name == source.name)
                            raise Broken(
                                f"the pull did not finish within {self.timeout:g} s "
                                f"({got} bytes came from the piece source)"
                            )
        except Exception as exc:  # reported below, after the rules it broke (the likely cause)
            failed = exc
        finally:
            source.close()
        if broken := source.rules_broken():
            also = f" (and then the pull failed: {_describe(failed)})" if failed else ""
            raise Broken(f"broke the broker's rules: {'; '.join(broken)}{also}")
        if isinstance(failed, Broken):
            raise failed
        if failed is not None:
            raise Broken(f"the pull failed: {_describe(failed)}") from failed
        rejected = [e for e in events if isinstance(e, PieceRejected) and e.source == source.name]
        if rejected:
            raise Broken(f"{len(rejected)} of its pieces were rejected, e.g. {rejected[0].reason}")
        for path, data in self.files.items():
            if (dest / path).read_bytes() != data:
                raise Broken(f"{path} as pulled differs from the manifest's bytes")
        done = [e for e in events if isinstance(e, PullFinished)]
        if not done:
            raise Broken("the pull ended without PullFinished")
        return done[-1]

    def identity(self) -> None:
        s = self.make(self.manifest, self.root)
        try:
            if not isinstance(s.info, SourceInfo):
                raise Broken(f"info is a {type(s.info).__name__}, not a SourceInfo")
            if not isinstance(s.name, str) or not s.name or s.name != s.info.name:
                raise Broken(f"name {s.name!r} is not info.name {s.info.name!r} (or empty)")
            if s.info.max_connections < 1:
                raise Broken(f"info.max_connections is {s.info.max_connections}")
        finally:
            s.close()

    def close_before_run(self) -> None:
        s = self.make(self.manifest, self.root)
        self.progress.append("close() before run()")
        s.close()
        self.progress.append("close() again")
        s.close()

    def alone(self) -> None:
        s = self.make(self.manifest, self.root)
        done = self._pull("alone", s, [])
        if done.delivered_by_source != {s.name: self.manifest.total_size}:
            raise Broken(f"delivered {done.delivered_by_source}, not all {self.manifest.total_size} bytes")
        self.progress.append("close() after the pull, again")
        s.close()

    def beside_a_mirror(self) -> None:
        s = self.make(self.manifest, self.root)
        names = sorted(self.files)
        held = {p: self.files[p] for p in names[::2]}
        mirror = MemorySource(local_source_info("mirror"), held)
        done = self._pull("beside", s, [mirror])
        only_here = sum(len(d) for p, d in self.files.items() if p not in held)
        got = done.delivered_by_source.get(s.name, 0)
        if got < only_here:
            raise Broken(f"delivered {got} bytes, but {only_here} bytes were to be had from it alone")

    def resumed(self) -> None:
        s = self.make(self.manifest, self.root)
        m = self.manifest
        prefill = set(range(0, m.num_pieces, 2))
        done = self._pull("resumed", s, [], prefill)
        missing = sum(p.length for p in m.pieces if p.index not in prefill)
        if done.delivered_by_source.get(s.name, 0) != missing:
            raise Broken(f"delivered {done.delivered_by_source}, not the {missing} bytes that were missing")


def check_piece_source(
    make_piece_source: PieceSourceFactory,
    workdir: Path,
    *,
    piece_size: int = 256 * KiB,
    seed: int = 0,
    timeout: float = 120.0,
) -> ConformanceReport:
    """Check that the piece sources ``make_piece_source`` builds keep the contract (module docstring).

    ``piece_size``: the scheduler measures a source by a piece of at least 256 KiB and only then
    hands it spans of several pieces, so smaller pieces leave the order rule untested.

    ``workdir`` is an empty folder the suite fills: ``workdir/files`` holds the files the factory
    gets as ``root``, the pulls go to folders beside it. Raises :class:`ConformanceFailure`.
    """
    root = workdir / "files"
    files: dict[str, bytes] = {}
    for path, size in _sizes(piece_size).items():
        files[path] = data = content(path, size, seed)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    manifest = create_manifest(root, name="piece-source-conformance", piece_size=piece_size)
    # A pull ends at its own deadline (the engine stopped cleanly); the check's is for the rest.
    checks = Checklist(f"piece source of {make_piece_source!r}", timeout + 60)
    run = _PieceRun(make_piece_source, manifest, root, workdir, files, timeout, checks.progress)
    checks.run("identity", run.identity)
    checks.run("close before run", run.close_before_run)
    checks.run("alone", run.alone)
    checks.run("beside a mirror", run.beside_a_mirror)
    checks.run("resumed", run.resumed)
    return checks.report()
