"""Feeding a model's files into a store, and the events an import yields.

Importing streams each file through a ``Store``: every piece is hashed as it arrives and written
to the partial area; files are renamed into place only when every piece and whole-file digest
matched, so a truncated or tampered bundle leaves nothing under a final name (``ImportRejected``
names the file and the piece), and importing the same bundle again resumes.
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dsmirror._bundle.format import CHUNK
from dsmirror._bundle.target import Target
from dsmirror._core.errors import ImportRejected, IntegrityError, StorageError
from dsmirror._core.events import Event, Progress, PullFinished, PullStarted
from dsmirror._fetch.reuse import record_manifest
from dsmirror._formats.manifest import FileEntry, Manifest, Piece
from dsmirror._journal.store import Store

__all__ = ["BundleOpened", "Ingest", "bundle_opened", "catalog_pins", "pin_of", "pull_started"]


@dataclass(frozen=True)
class BundleOpened(Event):
    """The manifest of a bundle (or folder) being imported was read and checked."""

    origin: str
    name: str
    manifest_sha256: str
    pinned_by: str | None  # "--manifest-sha256", "catalog alias NAME", or None: self-consistent only
    files: int
    total_bytes: int
    dest: str
    format: str


def pin_of(manifest_sha: str, pinned_by: str | None, aliases: Mapping[str, str] | None) -> str | None:
    """Who vouches for this manifest: the caller's pin, or a catalog alias that pins this digest."""
    if pinned_by:
        return pinned_by
    for alias, sha in (aliases or {}).items():
        if sha == manifest_sha:
            return f"catalog alias {alias}"
    return None


def bundle_opened(
    origin: str,
    manifest: Manifest,
    pinned_by: str | None,
    known: Mapping[str, str] | None,
    target: Target,
    fmt: str,
) -> BundleOpened:
    """The event that opens an import of ``manifest`` into ``target``."""
    return BundleOpened(
        origin,
        manifest.name,
        manifest.sha256,
        pin_of(manifest.sha256, pinned_by, known),
        len(manifest.files),
        manifest.total_size,
        str(target.dest),
        fmt,
    )


def catalog_pins(models: Mapping[str, Any]) -> dict[str, str]:
    """Alias -> pinned manifest SHA-256 of a catalog's models (those that pin one)."""
    return {name: a.manifest_sha256 for name, a in models.items() if getattr(a, "manifest_sha256", None)}


def pull_started(target: Target, store: Store, origin: str) -> PullStarted:
    m = target.manifest
    return PullStarted(
        m.name,
        m.sha256,
        str(target.dest),
        m.total_size,
        store.verified_bytes,
        m.num_pieces,
        m.piece_size,
        (origin,),
        store.stats.reverified_pieces,
        store.stats.rejected_pieces,
        store.stats.reused_files,
    )


class Ingest:
    """Feeds files, read in order, into a store: hash every piece, write it, mark it verified."""

    def __init__(self, bundle: Manifest, target: Target, store: Store, origin: str) -> None:
        self.m = bundle
        self.t = target
        self.store = store
        self.origin = origin
        self.taken = 0  # bytes written into the store from the import
        self.read = 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def file_done(self, fi: int) -> bool:
        sfi = self.t.file_map[fi]
        if sfi is None:
            return True
        sm = self.t.manifest
        return all(self.store.is_done(i) for i in sm.file_piece_ranges[sfi])

    def file(self, fi: int, read: Callable[[int], bytes]) -> Iterator[Event]:
        """Consume file ``fi`` from ``read`` (exactly its size); raise ImportRejected on any mismatch."""
        m, f = self.m, self.m.files[fi]
        spieces = self._store_pieces(fi)
        whole = hashlib.sha256()
        unhashed: list[tuple[int, str]] = []  # store piece index, digest: marked once the file matches
        for k, gi in enumerate(m.file_piece_ranges[fi]):
            piece = m.pieces[gi]
            sp = spieces[k] if spieces else None
            write = sp is not None and not self.store.is_done(sp.index)
            got = self._copy_piece(f, piece, read, whole.update, sp if write else None)
            self._check_piece(f, piece, got)
            if sp is not None and write:
                if piece.sha256:
                    self.store.mark_verified(sp)
                else:
                    unhashed.append((sp.index, got))
            now = time.monotonic()
            if now - self._last >= 0.25:
                self._last = now
                yield self.progress()
        self._check_file(f, whole.hexdigest())
        for si, digest in unhashed:
            self.store.mark_verified(self.t.manifest.pieces[si], source="import", digest=digest)

    def _store_pieces(self, fi: int) -> list[Piece]:
        """The store's pieces of bundle file ``fi`` (none for a duplicate blob: only checked)."""
        sfi = self.t.file_map[fi]
        if sfi is None:
            return []
        sm = self.t.manifest
        return [sm.pieces[i] for i in sm.file_piece_ranges[sfi]]

    def _copy_piece(
        self,
        f: FileEntry,
        piece: Piece,
        read: Callable[[int], bytes],
        also_hash: Callable[[bytes], None],
        sp: Piece | None,
    ) -> str:
        """Read ``piece`` of ``f`` (into store piece ``sp``, if it is to be written, and into the
        whole-file hash ``also_hash``); returns the piece's SHA-256."""
        h = hashlib.sha256()
        pos = 0
        while pos < piece.length:
            chunk = self._read(read, min(CHUNK, piece.length - pos))
            if not chunk:
                raise ImportRejected(
                    f"ends inside {f.path}, piece {piece.index} (bytes {piece.offset + pos} of "
                    f"{piece.offset}-{piece.offset + piece.length - 1}): the bundle is truncated",
                    origin=self.origin,
                    path=f.path,
                    piece=piece.index,
                )
            h.update(chunk)
            also_hash(chunk)
            if sp is not None:
                self.store.write(sp, pos, chunk)
                self.taken += len(chunk)
            pos += len(chunk)
            self.read += len(chunk)
        return h.hexdigest()

    def _read(self, read: Callable[[int], bytes], n: int) -> bytes:
        """Up to ``n`` bytes; b"" at the end of the data (a damaged tar counts as its end)."""
        try:
            return read(n)
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
                raise StorageError(f"cannot read {self.origin}: {exc.strerror}", path=self.origin) from exc
            return b""

    def _check_piece(self, f: FileEntry, piece: Piece, got: str) -> None:
        if piece.sha256 and got != piece.sha256:
            raise ImportRejected(
                f"piece {piece.index} of {f.path} "
                f"(bytes {piece.offset}-{piece.offset + piece.length - 1}) "
                f"has SHA-256 {got[:16]}…, the manifest says {piece.sha256[:16]}…: the bundle is damaged "
                "or was tampered with",
                origin=self.origin,
                path=f.path,
                piece=piece.index,
                expected=piece.sha256,
                actual=got,
            )

    def _check_file(self, f: FileEntry, got: str) -> None:
        if got != f.sha256:
            raise ImportRejected(
                f"{f.path} has SHA-256 {got[:16]}…, the manifest says {f.sha256[:16]}…",
                origin=self.origin,
                path=f.path,
                expected=f.sha256,
                actual=got,
            )

    def progress(self) -> Progress:
        elapsed = max(1e-6, time.monotonic() - self.t0)
        rate = self.read / elapsed
        total = self.m.total_size
        left = max(0, total - self.read)
        return Progress(self.read, total, rate, left / rate if rate > 0 else None, (), self.read)

    def finish(self, files_before: int) -> Iterator[Event]:
        store = self.store
        store.commit()
        if not store.wait_checked():
            raise IntegrityError(
                f"{self.origin}: a file does not match its whole-file SHA-256 although every piece did; "
                "the manifest is inconsistent",
                hint="re-create the manifest from a good copy",
            )
        installed = store.finalize()
        record_manifest(self.t.dest, self.t.manifest)
        if self.t.after is not None:
            self.t.after(store)
        yield self.progress()
        yield PullFinished(
            self.m.name,
            str(self.t.dest),
            tuple(installed),
            self.t.manifest.total_size,
            self.taken,
            files_before,
            0,
            0,
            time.monotonic() - self.t0,
            {self.origin: self.taken},
        )
