"""The piece-source suite: :func:`check_piece_source` and the contract it checks.

The piece-source contract (the engine's ``SwarmSource``: a BitTorrent swarm)
===========================================================================
A *piece source* is not asked for byte ranges: it runs beside the engine's connections, takes
work from the same scheduler, obtains whole pieces its own way (from peers) and hands each one to
the engine, which verifies it against the manifest, stores it and tells the scheduler. It is
built for one pull; ``run`` is called once, in its own thread. Its contract, checked through the
engine that uses it (``dsmirror._fetch.engine.fetch``):

*Identity.* ``info`` is a :class:`SourceInfo` with ``info.max_connections >= 1`` (its slots);
``name`` is ``info.name``, a non-empty string.

*Alone, it completes a pull.* With no other source, every piece comes from it, every byte is the
manifest's, and nothing it delivers is rejected -- at piece boundaries, in one-byte and
one-piece files and files one byte over or under a piece.

*Beside other sources, it shares the work.* With a mirror that holds only some files, the pull
completes, and every byte of the files only it can get comes from it: it takes only what the
scheduler gives it, and gives back what it cannot do (it releases every assignment), or the
pull would never finish.

*A resumed pull.* Pieces the store already verified are not fetched again: it delivers exactly
the bytes that were missing.

*Closing.* ``close()`` may be called before ``run`` (a pull that stopped before it started), and
twice; it returns promptly (the engine waits for it when a pull ends).

Every pull must finish within ``timeout`` seconds; one that does not is stopped (the engine shuts
down cleanly) and fails its check: a piece source that never releases its work, or takes none,
fails instead of hanging the caller. The factory builds a fresh piece source for each
pull, able to get the pieces of ``manifest`` whose bytes are under ``root`` (e.g. a seeder of
``root`` it started); the suite writes the files there and makes the manifest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.events import Event, PieceRejected, Progress, PullFinished, SourceProgress
from dsmirror._fetch.engine import SwarmSource, fetch
from dsmirror._fetch.local import MemorySource, local_source_info
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import Manifest
from dsmirror._journal.store import Store
from dsmirror._schedule.info import SourceInfo
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
    }


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
        self, name: str, source: SwarmSource, others: list[Source], prefill: set[int] | None = None
    ) -> PullFinished:
        dest = self.workdir / name
        m = self.manifest
        events: list[Event] = []
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
        finally:
            source.close()
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
    piece_size: int = 64 * KiB,
    seed: int = 0,
    timeout: float = 120.0,
) -> ConformanceReport:
    """Check that the piece sources ``make_piece_source`` builds keep the contract (module docstring).

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
