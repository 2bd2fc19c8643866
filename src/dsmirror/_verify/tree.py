"""A folder and a manifest: hashing a folder into one (``dsmirror manifest create``), checking a
folder against one (``dsmirror verify``; a torrent's files before seeding). The manifest format is
``dsmirror._formats.manifest``'s; files are hashed by ``dsmirror._verify.digest.hash_file_pieces``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dsmirror._core.errors import ManifestError, UsageError
from dsmirror._formats.manifest import (
    DEFAULT_PIECE_SIZE,
    MAX_PIECE_SIZE,
    MIN_PIECE_SIZE,
    FileEntry,
    Manifest,
    Piece,
    parse_manifest,
)
from dsmirror._formats.paths import validate_relpath
from dsmirror._formats.private import PRIVATE_DIR
from dsmirror._verify.digest import hash_file_pieces, hash_file_pieces_v1

__all__ = ["VerifyReport", "create_manifest", "v1_last_file", "verify_tree"]


def _walk(root: Path) -> Iterator[str]:
    """Regular files below root as sorted relative POSIX paths; refuse symlinks and specials."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if not (rel_dir == "." and d == PRIVATE_DIR))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise ManifestError(
                    f"{os.path.join(rel_dir, d)} is a symlink; dsmirror does not follow links"
                )
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                raise ManifestError(f"{os.path.relpath(full, root)} is not a regular file")
            yield PurePosixPath(os.path.relpath(full, root)).as_posix()


def create_manifest(
    root: Path,
    *,
    name: str | None = None,
    piece_size: int = DEFAULT_PIECE_SIZE,
    files: Sequence[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    sha1: bool = False,
) -> Manifest:
    """Hash a folder (or the listed files in it) into a manifest.

    With ``sha1`` the manifest also records each piece's BitTorrent v1 hash (``FileEntry.sha1``),
    from the same read pass: its own swarm is then a torrent libtorrent checks
    (``dsmirror._fetch.swarm.torrent``). ``dsmirror manifest create`` asks for it (``--no-sha1``
    not to); the library's default stays off for now, so that callers (and tests) that build on
    the four keys of a file entry see the manifests they did.
    """
    if not (MIN_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE and piece_size & (piece_size - 1) == 0):
        raise UsageError(
            f"piece size {piece_size} is not a power of two between 16 KiB and 1 GiB",
            hint="use e.g. --piece-size 4MiB or 8MiB",
        )
    if not root.is_dir():
        raise ManifestError("is not a folder", path=str(root))
    rels = list(files) if files is not None else list(_walk(root))
    entries = []
    unpadded: dict[str, bytes] = {}
    for rel in rels:
        validate_relpath(rel)
        if sha1:
            h = hash_file_pieces_v1(root / rel, piece_size, on_bytes=on_bytes)
            entries.append(FileEntry(rel, h.size, h.sha256, tuple(h.pieces), h.sha1))
            unpadded[rel] = h.sha1_last_unpadded
            continue
        size, digest, pieces = hash_file_pieces(root / rel, piece_size, on_bytes=on_bytes)
        entries.append(FileEntry(rel, size, digest, tuple(pieces)))
    last = v1_last_file(entries) if sha1 else None
    if last is not None:  # no pad file follows the torrent's last file: its last piece as it is
        f = entries[last]
        assert f.sha1 is not None
        entries[last] = FileEntry(f.path, f.size, f.sha256, f.pieces, f.sha1[:-20] + unpadded[f.path])
    m = Manifest(name or root.resolve().name, piece_size, tuple(entries), None, dict(meta or {}))
    return parse_manifest(m.canonical_bytes)  # round-trip through the validator


def v1_last_file(files: Sequence[FileEntry]) -> int | None:
    """Index of the file that comes last in a v1 torrent of these files (no pad file after it).

    dsmirror's torrents (libtorrent's ``canonical_files``) order files by path as UTF-8 bytes and
    pad every non-empty file to a piece boundary except the last non-empty one; None if all are
    empty. (tests/test_torrent_sha1.py checks this order against libtorrent's.)
    """
    best: int | None = None
    for k, f in enumerate(files):
        if f.size and (best is None or f.path.encode() > files[best].path.encode()):
            best = k
    return best


# -- verification ----------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    bad_pieces: list[Piece] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)  # whole-file digest mismatch
    checked_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not (self.bad_pieces or self.missing_files or self.wrong_size or self.bad_files)


def verify_tree(
    manifest: Manifest,
    root: Path,
    *,
    paths: Iterable[str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every piece and whole-file digest of ``manifest`` against the files under ``root``."""
    report = VerifyReport()
    wanted = set(paths) if paths is not None else None
    for fi, f in enumerate(manifest.files):
        if wanted is not None and f.path not in wanted:
            continue
        p = root / f.path
        try:
            st = p.lstat()
        except FileNotFoundError:
            report.missing_files.append(f.path)
            continue
        if not stat.S_ISREG(st.st_mode):
            report.missing_files.append(f.path)
            continue
        if st.st_size != f.size:
            report.wrong_size.append(f.path)
            continue
        _, digest, pieces = hash_file_pieces(p, manifest.piece_size, on_bytes=on_bytes)
        report.checked_bytes += f.size
        rng = manifest.file_piece_ranges[fi]
        for k, (got, want) in enumerate(zip(pieces, f.pieces, strict=True)):
            if got != want:
                report.bad_pieces.append(manifest.pieces[rng[k]])
        if f.sha256 and digest != f.sha256:
            report.bad_files.append(f.path)
    return report
