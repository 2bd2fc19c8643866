"""The local-reuse suite: :func:`check_local_reuse` and the contract it checks.

Local reuse is not a Source
===========================
``dsmirror._fetch.reuse`` streams no ranges to the engine: before the engine starts,
``reuse_local(store, index)`` fills the store's missing pieces from files already on this machine
(an installed earlier revision, a blob of the same content in an Ollama store or the HF cache,
the file at the same path in the destination or a ``--reuse-from`` folder). So it has no
``open_range`` to check, but it is a source of pieces all the same and makes the promise every
source makes: the bytes it hands on are the manifest's. Its contract:

- *Never a wrong byte.* Every piece the store counts as done afterwards holds the manifest's
  bytes. A candidate is only a candidate: a recorded manifest that no longer describes its file
  (edited in place), a same-name file with other content, a copy with one flipped byte cost a
  read, never a piece.
- *Nothing it can find is missed.* Every piece a candidate holds intact is reused: by piece
  digest from a recorded install (under another path, at another offset), by whole-file digest
  from a blob of the same content, at the same offsets from a same-path file that is mostly the
  same.
- *Files without piece hashes* (registries publish whole-file digests only) are reused whole or
  not at all: every piece, from a candidate whose whole-file SHA-256 matched.
- *Candidates are only read*: their bytes and modification times are the same afterwards.
- *It says what it did*: one :class:`LocalReuse` event whose ``reused_bytes`` are the bytes of
  the pieces it filled.

The suite builds, under ``workdir``, an earlier revision installed next to the destination
(``old/``, its manifest recorded), the destination (``new/``, with same-path copies in it) and a
``--reuse-from`` folder (``copy/``, a user's copy and ``blobs/sha256-<hex>``), with files on, one
below and one above piece boundaries; then it opens a store for the new revision, builds the
index the way a pull does, runs ``reuse`` once and checks the store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dsmirror._core.events import Event
from dsmirror._fetch.reuse import LocalIndex, LocalReuse, record_manifest, reuse_local, reuse_roots
from dsmirror._formats.manifest import FileEntry, Manifest, parse_manifest
from dsmirror._journal.store import Store
from dsmirror._verify.tree import create_manifest
from dsmirror.testing.conformance._common import Broken, Checklist, ConformanceReport, KiB, content

__all__ = ["ReuseFill", "check_local_reuse"]

#: What is checked: fills ``store`` from the candidates ``index`` knows, yields events.
ReuseFill = Callable[[Store, LocalIndex], Iterable[Event]]


@dataclass
class _Case:
    """One file of the new revision, where its candidates are, and which of its pieces they hold."""

    path: str
    data: bytes
    reusable: set[int]  # piece numbers within the file a candidate holds intact
    piece_hashes: bool = True
    # (folder under workdir, path under it, its bytes) of each copy put on disk
    candidates: list[tuple[str, str, bytes]] = field(default_factory=list)


def _edit(data: bytes, piece_size: int, *pieces: int) -> bytes:
    """``data`` with one byte changed in each of ``pieces`` (-1: the last byte)."""
    out = bytearray(data)
    for k in pieces:
        at = len(out) - 1 if k < 0 else min(len(out) - 1, k * piece_size + piece_size // 2)
        out[at] ^= 0xFF
    return bytes(out)


def _cases(ps: int, seed: int) -> list[_Case]:
    def c(name: str, size: int) -> bytes:
        return content(name, size, seed)

    same, changed, grown = c("same", 3 * ps + ps // 3), c("changed", 4 * ps + 1), c("grown", ps + 1)
    renamed, shifted, edited = c("renamed", 2 * ps - 1), c("shifted", 4 * ps), c("edited", 2 * ps + 7)
    whole, bad, in_dest, user, blob = (
        c("whole", 2 * ps + 3),
        c("whole-bad", ps + 5),
        c("in-dest", 3 * ps),
        c("user", 2 * ps - 1),
        c("blob", ps + 1),
    )
    return [
        _Case("same.bin", same, {0, 1, 2, 3}, candidates=[("old", "same.bin", same)]),
        # Piece 1 and the one-byte last piece changed since the old revision.
        _Case(
            "changed.bin", changed, {0, 2, 3}, candidates=[("old", "changed.bin", _edit(changed, ps, 1, -1))]
        ),
        _Case("grown.bin", grown, {0}, candidates=[("old", "grown.bin", grown[:ps])]),
        _Case("sub/renamed.bin", renamed, {0, 1}, candidates=[("old", "old-name.bin", renamed)]),
        # One new piece in front: the old pieces are all there, one piece further on.
        _Case("shifted.bin", shifted, {1, 2, 3}, candidates=[("old", "shifted.bin", shifted[ps:])]),
        # Recorded honestly, then edited in place: the record lies about piece 1.
        _Case("edited.bin", edited, {0, 2}, candidates=[("old", "edited.bin", edited)]),
        _Case("one.bin", c("one", 1), {0}, candidates=[("old", "one.bin", c("one", 1))]),
        _Case("empty.bin", b"", set(), candidates=[("old", "empty.bin", b"")]),
        _Case("whole.bin", whole, {0, 1, 2}, piece_hashes=False, candidates=[("old", "whole.bin", whole)]),
        _Case(
            "whole-bad.bin",
            bad,
            set(),
            piece_hashes=False,
            candidates=[("new", "whole-bad.bin", _edit(bad, ps, 1))],
        ),
        _Case(
            "sub/in-dest.bin", in_dest, {0, 1}, candidates=[("new", "sub/in-dest.bin", _edit(in_dest, ps, 2))]
        ),
        _Case("user.bin", user, {0}, candidates=[("copy", "user.bin", _edit(user, ps, 1))]),
        _Case(
            "blob.bin",
            blob,
            {0, 1},
            candidates=[("copy", f"blobs/sha256-{hashlib.sha256(blob).hexdigest()}", blob)],
        ),
        _Case("fresh.bin", c("fresh", ps + 1), set()),
    ]


def _manifest(cases: list[_Case], ps: int) -> Manifest:
    files = []
    for case in cases:
        n = -(-len(case.data) // ps)
        pieces = tuple(hashlib.sha256(case.data[k * ps : (k + 1) * ps]).hexdigest() for k in range(n))
        files.append(
            FileEntry(
                case.path,
                len(case.data),
                hashlib.sha256(case.data).hexdigest(),
                pieces if case.piece_hashes else ("",) * n,
            )
        )
    return parse_manifest(Manifest("reuse-conformance", ps, tuple(files)).canonical_bytes)


def _snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every candidate file (the store's private area left out)."""
    out = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != ".dsmirror"]
            for name in filenames:
                p = Path(dirpath) / name
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@dataclass
class _ReuseRun:
    store: Store
    cases: list[_Case]
    events: list[Event]
    before: dict[str, tuple[str, int]]
    after: dict[str, tuple[str, int]]

    def _pieces(self) -> Iterable[tuple[_Case, int, int]]:
        """(case, piece number in its file, global piece index) of every piece."""
        m = self.store.manifest
        for fi, case in enumerate(self.cases):
            for k, i in enumerate(m.file_piece_ranges[fi]):
                yield case, k, i

    def no_wrong_byte(self) -> None:
        m = self.store.manifest
        for case, k, i in self._pieces():
            p = m.pieces[i]
            if (
                self.store.is_done(i)
                and self.store.read_piece(p) != case.data[p.offset : p.offset + p.length]
            ):
                raise Broken(
                    f"piece {k} of {case.path} is done but its bytes in the store are not the manifest's"
                )

    def nothing_missed(self) -> None:
        missed = [
            f"{c.path} piece {k}"
            for c, k, i in self._pieces()
            if k in c.reusable and not self.store.is_done(i)
        ]
        if missed:
            raise Broken(
                f"{len(missed)} piece(s) a candidate holds intact were not reused: {', '.join(missed)}"
            )

    def whole_files_whole(self) -> None:
        m = self.store.manifest
        for fi, case in enumerate(self.cases):
            if case.piece_hashes:
                continue
            done = [self.store.is_done(i) for i in m.file_piece_ranges[fi]]
            if any(done) and not all(done):
                raise Broken(
                    f"{case.path} has no piece hashes, yet only {sum(done)} of {len(done)} pieces are done"
                )

    def candidates_untouched(self) -> None:
        changed = sorted(p for p in self.before if self.after.get(p) != self.before[p])
        if changed:
            raise Broken(f"candidates changed (bytes or mtime): {', '.join(changed)}")

    def reported(self) -> None:
        m = self.store.manifest
        reused = sum(m.pieces[i].length for _, _, i in self._pieces() if self.store.is_done(i))
        found = [e for e in self.events if isinstance(e, LocalReuse)]
        if len(found) != 1:
            raise Broken(f"yielded {len(found)} LocalReuse events, not one")
        if found[0].reused_bytes != reused:
            raise Broken(f"LocalReuse says {found[0].reused_bytes} bytes were reused; the store has {reused}")


def check_local_reuse(
    workdir: Path,
    *,
    reuse: ReuseFill | None = None,
    piece_size: int = 16 * KiB,
    seed: int = 0,
    timeout: float = 60.0,
) -> ConformanceReport:
    """Check that ``reuse`` (by default ``reuse_local``) keeps the local-reuse contract.

    ``workdir`` is an empty folder the suite may fill. Raises :class:`ConformanceFailure`.
    """
    fill = reuse or reuse_local
    ps = piece_size
    cases = _cases(ps, seed)
    manifest = _manifest(cases, ps)
    old, dest, copy = workdir / "old", workdir / "new", workdir / "copy"
    for case in cases:
        for folder, path, data in case.candidates:
            target = workdir / folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    record_manifest(old, create_manifest(old, name="reuse-conformance-old", piece_size=ps))
    with open(old / "edited.bin", "r+b") as fh:  # after recording: the record now lies
        fh.write(_edit(next(c.data for c in cases if c.path == "edited.bin"), ps, 1))
    checks = Checklist(f"local reuse {getattr(fill, '__qualname__', fill)!r}", timeout)
    before = _snapshot(old, dest, copy)
    with Store.open(dest, manifest) as store:
        events: list[Event] = []

        def run_it() -> None:
            index = LocalIndex.build(manifest, dest, reuse_roots(dest, [copy]), same_path=[dest, copy])
            events.extend(fill(store, index))

        checks.run("runs", run_it)
        run = _ReuseRun(store, cases, events, before, _snapshot(old, dest, copy))
        if not checks.failures:
            checks.run("never a wrong byte", run.no_wrong_byte)
            checks.run("nothing missed", run.nothing_missed)
            checks.run("whole files whole", run.whole_files_whole)
            checks.run("candidates untouched", run.candidates_untouched)
            checks.run("reported", run.reported)
    return checks.report()
