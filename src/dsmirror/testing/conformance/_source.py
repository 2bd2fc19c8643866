"""The Source suite: :func:`check_source` and the contract it checks.

The Source contract (:class:`dsmirror._fetch.source.Source`)
============================================================
*Identity.* ``info`` is a :class:`SourceInfo` with ``info.max_connections >= 1``; ``name`` is
``info.name``, a non-empty string.

*Ranges.* ``open_range(file, start, end)`` is a context manager yielding an iterator of
bytes-like chunks (``bytes``, ``bytearray`` or ``memoryview``; any sizes, empty ones allowed)
whose concatenation is exactly bytes ``[start, end]`` (inclusive) of the file: not one byte more
or less, at any offset -- the first byte, the last byte, one byte, a whole piece, a span across
piece and read-size boundaries, a whole file. The engine asks only for ``0 <= start <= end <
file.size``; an empty file has no pieces and is never asked for, but ``has_file`` answers for it
like for any file. A source does not verify what it passes on: a copy with a flipped byte is
caught by the engine, which hashes every piece, so "corrupt" is no fault a source must notice.
What a source must never do is make wrong bytes of its own: bytes of another range, an error
page, a stream that just ends short.

*Failures.* Every failure is a :class:`SourceError`, raised when the context is entered or from
the iterator, with ``source == name``. :class:`SourceNotFound` is final (``retryable`` False:
the scheduler never asks this source for that file again); every other ``SourceError`` is
``retryable`` (the scheduler backs the source off and tries again). The bytes yielded before an
error are a prefix of the right bytes. An exception the caller raises inside the ``with`` block
comes out unchanged.

- *Unknown file*: ``has_file`` is False, or ``open_range`` raises ``SourceNotFound`` before the
  first byte.
- *Past the end*: a range that reaches past the end of the source's copy of the file (the copy
  is shorter than the manifest says, or ``end >= file.size``) raises :class:`BadResponse` or
  ``SourceNotFound``. Inside its copy, a source whose copy has another size than the manifest
  says may serve the bytes it has or refuse the same way.
- *Server faults*, for sources that talk to a server (:class:`ServerFault`; the factory
  ``make_faulty`` builds a source whose server misbehaves that way on every request):

  ==================  ==========================================================================
  ``RESET``           connection reset inside the body -> :class:`SourceUnavailable`
  ``TRUNCATED``       body ends (connection closed) before the promised bytes -> ``SourceUnavailable``
  ``SHORT_ANSWER``    the answer ends cleanly (its framing says it is complete: a chunked body)
                      before the range's last byte -> ``SourceUnavailable``
  ``LONG_ANSWER``     the answer goes on past the range's last byte -> ``BadResponse``, after at
                      most the range's bytes
  ``STALL``           the body stops, the connection stays open -> :class:`Stalled`, within the
                      source's stall timeout (the suite waits up to ``timeout``)
  ``WRONG_RANGE``     bytes of a neighbouring range, announced as such -> ``BadResponse``
  ``WHOLE_FILE``      the whole file (HTTP 200) for a range -> ``BadResponse``; for a range that
                      is the whole file this is the right answer and gives the right bytes
  ``HTML_PAGE``       an HTML error or captcha page instead of the file -> ``BadResponse``
  ``UNAVAILABLE``     a server error (HTTP 500) -> ``SourceUnavailable``
  ``DOWN``            connections refused -> ``SourceUnavailable``
  ``RATE_LIMITED``    "come back in :data:`RETRY_AFTER` s" (HTTP 429) -> :class:`RateLimited`
                      with ``retry_after == RETRY_AFTER``
  ``NOT_FOUND``       the server says it does not have the file (HTTP 404) -> ``SourceNotFound``
  ==================  ==========================================================================

*Resources.* Leaving the ``with`` block early -- after some chunks, before the first one, or by an
exception -- releases what the range held, so a source can be opened and abandoned many more
times in a row than it has connections. ``close()`` releases everything and may be called twice.

*Threads.* ``open_range`` and ``has_file`` are called from many threads at once (one per
connection of the pull); each range still gets exactly its own bytes.

Test data (generated, like torf's boundary tests): files of sizes exactly on, one below and one
above the piece size and the 1 MiB read size, twice and three-and-a-third pieces, one byte, empty,
some in sub-folders; ranges at every such boundary of each file, plus seeded random ones.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dsmirror._core.errors import (
    BadResponse,
    DsmirrorError,
    RateLimited,
    SourceError,
    SourceNotFound,
    SourceUnavailable,
    Stalled,
)
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import FileEntry
from dsmirror._schedule.info import SourceInfo
from dsmirror.testing.conformance._common import Broken, Checklist, ConformanceReport, KiB, MiB, content

__all__ = [
    "RETRY_AFTER",
    "FaultySourceFactory",
    "ServerFault",
    "SourceFactory",
    "check_source",
]

#: Seconds a ``RATE_LIMITED`` server asks the client to wait (``Retry-After``).
RETRY_AFTER = 7

#: Builds a source serving ``files`` (manifest path -> content).
SourceFactory = Callable[[Mapping[str, bytes]], Source]


class ServerFault(enum.Enum):
    """How the server behind a source misbehaves (see the table in the module docstring)."""

    RESET = "reset"
    TRUNCATED = "truncated"
    SHORT_ANSWER = "short-answer"
    LONG_ANSWER = "long-answer"
    STALL = "stall"
    WRONG_RANGE = "wrong-range"
    WHOLE_FILE = "whole-file"
    HTML_PAGE = "html-page"
    UNAVAILABLE = "unavailable"
    DOWN = "down"
    RATE_LIMITED = "rate-limited"
    NOT_FOUND = "not-found"


#: Builds a source serving ``files`` whose server shows ``fault`` on every request, or returns
#: None when this kind of source cannot show that fault (the report lists it as skipped).
FaultySourceFactory = Callable[[Mapping[str, bytes], ServerFault], "Source | None"]

_EXPECTED: dict[ServerFault, type[SourceError]] = {
    ServerFault.RESET: SourceUnavailable,
    ServerFault.TRUNCATED: SourceUnavailable,
    ServerFault.SHORT_ANSWER: SourceUnavailable,
    ServerFault.LONG_ANSWER: BadResponse,
    ServerFault.STALL: Stalled,
    ServerFault.WRONG_RANGE: BadResponse,
    ServerFault.WHOLE_FILE: BadResponse,
    ServerFault.HTML_PAGE: BadResponse,
    ServerFault.UNAVAILABLE: SourceUnavailable,
    ServerFault.DOWN: SourceUnavailable,
    ServerFault.RATE_LIMITED: RateLimited,
    ServerFault.NOT_FOUND: SourceNotFound,
}


# -- test data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _File:
    data: bytes
    entry: FileEntry


def _entry(path: str, data: bytes, piece_size: int, size: int | None = None) -> FileEntry:
    pieces = tuple(
        hashlib.sha256(data[k : k + piece_size]).hexdigest() for k in range(0, len(data), piece_size)
    )
    return FileEntry(path, len(data) if size is None else size, hashlib.sha256(data).hexdigest(), pieces)


def _boundary_sizes(piece_size: int) -> dict[str, int]:
    sizes = {"empty.bin": 0, "one.bin": 1}
    for label, b in (("piece", piece_size), ("read", MiB)):
        sizes |= {f"{label}-under.bin": b - 1, f"{label}-exact.bin": b, f"{label}-over.bin": b + 1}
    sizes |= {"sub/two-pieces.bin": 2 * piece_size, "sub/deeper/big.bin": 3 * piece_size + piece_size // 3}
    return sizes


def _ranges(size: int, piece_size: int, rng: random.Random) -> list[tuple[int, int]]:
    """Ranges of a file of ``size`` bytes at every boundary that matters, and a few random ones."""
    last = size - 1
    out = {(0, last), (0, 0), (last, last)}
    for step in (piece_size, MiB):
        for cut in range(step, size, step)[:4]:
            out |= {(cut - 1, cut), (cut - 1, cut - 1), (cut, cut), (0, cut - 1), (cut, last)}
            out.add((cut, min(last, cut + step - 1)))
            out.add((cut - step, cut - 1))
    if size > 2:
        out.add((size // 3, 2 * size // 3))
    for _ in range(3):
        a = rng.randrange(size)
        out.add((a, rng.randrange(a, size)))
    return sorted(out)


# -- reading -------------------------------------------------------------------------------------
def _read(source: Source, entry: FileEntry, start: int, end: int) -> bytes:
    """All chunks of one range; raises Broken for chunks that are not bytes-like.

    Stops one byte after the range's length, so a source that never ends cannot hang the suite.
    """
    out = bytearray()
    with source.open_range(entry, start, end) as chunks:
        for chunk in chunks:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise Broken(f"open_range yielded a {type(chunk).__name__}, not bytes")
            out += chunk
            if len(out) > end - start + 1:
                break
    return bytes(out)


def _attempt(source: Source, entry: FileEntry, start: int, end: int) -> tuple[bytes, BaseException | None]:
    """The bytes a range gave before it ended, and the exception it ended with (or None)."""
    out = bytearray()
    try:
        with source.open_range(entry, start, end) as chunks:
            for chunk in chunks:
                out += chunk
                if len(out) > end - start + 1:
                    break
    except Exception as exc:
        return bytes(out), exc
    return bytes(out), None


def _what(start: int, end: int, f: _File) -> str:
    return f"bytes {start}-{end} of {f.entry.path} ({f.entry.size} bytes)"


def _diff(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"{len(got)} bytes instead of {len(want)}"
    at = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    return f"the right number of bytes, but wrong from offset {at} on"


def _check_exact(source: Source, f: _File, start: int, end: int) -> None:
    want = f.data[start : end + 1]
    try:
        got = _read(source, f.entry, start, end)
    except Broken:
        raise
    except Exception as exc:
        raise Broken(f"{_what(start, end, f)}: raised {type(exc).__name__}: {exc}") from exc
    if got != want:
        raise Broken(f"{_what(start, end, f)}: got {_diff(got, want)}")


def _check_error(source: Source, exc: BaseException | None, what: str) -> SourceError:
    """``exc`` is a SourceError of ``source`` with ``retryable`` set by the rules; return it."""
    if exc is None:
        raise Broken(f"{what}: no error raised")
    if not isinstance(exc, SourceError):
        kind = (
            "a dsmirror error but not a SourceError"
            if isinstance(exc, DsmirrorError)
            else "not a SourceError"
        )
        raise Broken(f"{what}: raised {type(exc).__name__} ({kind}): {exc}")
    if exc.source != source.name:
        raise Broken(f"{what}: {type(exc).__name__} names source {exc.source!r}, not {source.name!r}")
    final = isinstance(exc, SourceNotFound)
    if exc.retryable is final:
        raise Broken(
            f"{what}: {type(exc).__name__} has retryable={exc.retryable}; "
            "SourceNotFound is final, every other SourceError retryable"
        )
    return exc


def _check_prefix(got: bytes, f: _File, start: int, end: int, what: str) -> None:
    if got != f.data[start : start + len(got)] or len(got) > end - start + 1:
        raise Broken(f"{what}: yielded wrong bytes before the error ({len(got)} bytes, not a prefix)")


# -- the Source suite ----------------------------------------------------------------------------
@dataclass
class _SourceRun:
    source: Source
    files: list[_File]  # good files, the empty one included
    unknown: FileEntry  # a file the source was not given
    longer: _File  # a file the manifest says is longer than the source's copy
    piece_size: int
    threads: int
    timeout: float
    rng: random.Random
    progress: list[str]

    def nonempty(self) -> list[_File]:
        return [f for f in self.files if f.entry.size]

    def biggest(self) -> _File:
        return max(self.files, key=lambda f: f.entry.size)

    # -- checks ----------------------------------------------------------------------------------
    def identity(self) -> None:
        s = self.source
        if not isinstance(s.info, SourceInfo):
            raise Broken(f"info is a {type(s.info).__name__}, not a SourceInfo")
        if not isinstance(s.name, str) or not s.name:
            raise Broken(f"name is {s.name!r}, not a non-empty string")
        if s.name != s.info.name:
            raise Broken(f"name {s.name!r} is not info.name {s.info.name!r}")
        if s.info.max_connections < 1:
            raise Broken(f"info.max_connections is {s.info.max_connections}")

    def has_files(self) -> None:
        for f in self.files:
            if self.source.has_file(f.entry) is not True:
                raise Broken(
                    f"has_file({f.entry.path!r}, {f.entry.size} bytes) is not True for a file it serves"
                )

    def exact_bytes(self) -> None:
        for f in self.nonempty():
            for start, end in _ranges(f.entry.size, self.piece_size, self.rng):
                self.progress.append(_what(start, end, f))
                _check_exact(self.source, f, start, end)

    def unknown_file(self) -> None:
        entry = self.unknown
        has = self.source.has_file(entry)
        if has is False:
            return
        if has is not True:
            raise Broken(f"has_file of an unknown file returned {has!r}, not a bool")
        got, exc = _attempt(self.source, entry, 0, entry.size - 1)
        what = f"{entry.path}, a file it was not given"
        err = _check_error(self.source, exc, what)
        if got or not isinstance(err, SourceNotFound):
            raise Broken(
                f"{what}: {type(err).__name__} after {len(got)} bytes, not SourceNotFound before any"
            )

    def past_the_end(self) -> None:
        cases = []
        for f in self.nonempty():
            n = f.entry.size
            cases += [(f, n - 1, n), (f, n, n), (f, 0, n)]
        g = self.longer
        have, claimed = len(g.data), g.entry.size
        cases += [(g, have - 1, claimed - 1), (g, 0, claimed - 1), (g, have, claimed - 1)]
        for f, start, end in cases:
            what = f"{_what(start, end, f)}, past the end of its {len(f.data)} bytes"
            self.progress.append(what)
            got, exc = _attempt(self.source, f.entry, start, end)
            err = _check_error(self.source, exc, what)
            if not isinstance(err, (BadResponse, SourceNotFound)):
                raise Broken(f"{what}: raised {type(err).__name__}, not BadResponse or SourceNotFound")
            _check_prefix(got, f, start, end, what)
        # Inside its copy, a copy shorter than the manifest says: the right bytes, or a refusal.
        for start, end in ((0, have - 1), (0, 0)):
            what = f"{_what(start, end, g)}, whose copy at the source has {have} bytes"
            got, exc = _attempt(self.source, g.entry, start, end)
            if exc is None and got != g.data[start : end + 1]:
                raise Broken(f"{what}: got {_diff(got, g.data[start : end + 1])}")
            if exc is not None:
                err = _check_error(self.source, exc, what)
                if not isinstance(err, (BadResponse, SourceNotFound)):
                    raise Broken(f"{what}: raised {type(err).__name__}, not BadResponse or SourceNotFound")
                _check_prefix(got, g, start, end, what)

    def concurrent(self) -> None:
        files = self.nonempty()
        big = sorted(files, key=lambda f: f.entry.size)[-3:]
        plans = []
        for _ in range(self.threads):
            # Long ranges overlap the most (a source that moves a shared cursor gets caught), short
            # ones at boundaries catch the rest.
            plan = [(f, 0, f.entry.size - 1) for f in big]
            for _ in range(12):
                f = self.rng.choice(files)
                plan.append((f, *self.rng.choice(_ranges(f.entry.size, self.piece_size, self.rng))))
            self.rng.shuffle(plan)
            plans.append(plan)
        barrier = threading.Barrier(self.threads)
        errors: list[str] = []

        def worker(plan: list[tuple[_File, int, int]]) -> None:
            try:
                barrier.wait(self.timeout)
                for f, start, end in plan:
                    _check_exact(self.source, f, start, end)
            except Broken as exc:
                errors.append(str(exc))
            except BaseException as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        workers = [threading.Thread(target=worker, args=(p,), daemon=True) for p in plans]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        if errors:
            raise Broken(f"{self.threads} threads at once: {errors[0]}")

    def early_exit(self) -> None:
        f = self.biggest()
        n = max(32, 4 * self.source.info.max_connections + 8)
        end = f.entry.size - 1
        for k in range(n):
            self.progress.append(f"abandoned range {k + 1} of {n} (after one chunk)")
            with self.source.open_range(f.entry, 0, end) as chunks:
                next(iter(chunks), None)
        for k in range(n // 4):
            self.progress.append(f"abandoned range {k + 1} of {n // 4} (before the first chunk)")
            with self.source.open_range(f.entry, 0, end):
                pass

        class Sentinel(Exception):
            pass

        for k in range(n // 4):
            self.progress.append(f"range {k + 1} of {n // 4} left by an exception")
            try:
                with self.source.open_range(f.entry, 0, end) as chunks:
                    next(iter(chunks), None)
                    raise Sentinel
            except Sentinel:
                pass
            except Exception as exc:
                raise Broken(
                    f"an exception raised inside the with block came out as {type(exc).__name__}: {exc}"
                ) from exc
            else:
                raise Broken("an exception raised inside the with block was swallowed")
        self.progress.append("a whole range after the abandoned ones")
        _check_exact(self.source, f, 0, end)

    def closing(self) -> None:
        self.source.close()
        self.source.close()

    def fault(self, fault: ServerFault, source: Source) -> None:
        f = self.biggest()
        ranges = [(0, f.entry.size - 1), (self.piece_size, f.entry.size - 2)]
        if fault is ServerFault.WHOLE_FILE:
            _check_exact(source, f, 0, f.entry.size - 1)  # 200 is the right answer to it
            ranges = ranges[1:]
        expected = _EXPECTED[fault]
        for start, end in ranges:
            what = f"{fault.value} fault, {_what(start, end, f)}"
            self.progress.append(what)
            got, exc = _attempt(source, f.entry, start, end)
            err = _check_error(source, exc, what)
            if not isinstance(err, expected):
                raise Broken(f"{what}: raised {type(err).__name__}: {err}, not {expected.__name__}")
            if isinstance(err, RateLimited) and err.retry_after != RETRY_AFTER:
                raise Broken(f"{what}: retry_after is {err.retry_after!r}, not {RETRY_AFTER}")
            _check_prefix(got, f, start, end, what)


def check_source(
    make_source: SourceFactory,
    *,
    make_faulty: FaultySourceFactory | None = None,
    path_for: Callable[[str, bytes], str] | None = None,
    piece_size: int = 64 * KiB,
    threads: int = 8,
    timeout: float = 60.0,
    seed: int = 0,
) -> ConformanceReport:
    """Check that the sources ``make_source`` builds keep the Source contract (module docstring).

    ``make_source`` is called once, with every test file; ``make_faulty`` (optional) once per
    :class:`ServerFault`. ``path_for(name, content)`` gives the manifest path of a test file, for
    sources whose paths are fixed by the content (an Ollama registry: ``blobs/sha256-<hex>``);
    by default the suite's own names, some in sub-folders. ``piece_size`` is where the boundary
    cases sit; ``threads`` how many threads read at once; ``timeout`` bounds each check, so a
    source that hangs fails instead of hanging the caller. Raises :class:`ConformanceFailure`.
    """
    name_of = path_for or (lambda name, data: name)
    rng = random.Random(seed)
    files = []
    for name, size in _boundary_sizes(piece_size).items():
        data = content(name, size, seed)
        files.append(_File(data, _entry(name_of(name, data), data, piece_size)))
    short = content("longer.bin", piece_size + 17, seed)
    longer = _File(short, _entry(name_of("longer.bin", short), short, piece_size, len(short) + 1000))
    served = {f.entry.path: f.data for f in files} | {longer.entry.path: short}
    missing = content("unknown.bin", 1000, seed + 1)
    unknown = _entry(name_of("unknown.bin", missing), missing, piece_size)

    source = make_source(served)
    checks = Checklist(f"source {getattr(source, 'name', '?')!r} ({type(source).__name__})", timeout)
    run = _SourceRun(source, files, unknown, longer, piece_size, threads, timeout, rng, checks.progress)
    try:
        checks.run("identity", run.identity)
        checks.run("has_file", run.has_files)
        checks.run("exact bytes", run.exact_bytes)
        checks.run("unknown file", run.unknown_file)
        checks.run("past the end", run.past_the_end)
        checks.run("threads", run.concurrent)
        checks.run("early exit", run.early_exit)
    finally:
        checks.run("close", run.closing)
    for fault in ServerFault:
        faulty = make_faulty(served, fault) if make_faulty else None
        if faulty is None:
            checks.skip(f"fault: {fault.value}")
            continue
        try:
            checks.run(f"fault: {fault.value}", functools.partial(run.fault, fault, faulty))
        finally:
            with contextlib.suppress(Exception):
                faulty.close()
    return checks.report()
