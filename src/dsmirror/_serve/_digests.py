"""Hashing the files the server serves, once: ``DigestCache``.

Every file the index serves has a content digest (its etag, or the check against a manifest).
Hashing is remembered across rescans, keyed by (path, size, mtime_ns, inode), so a rescan of an
unchanged store hashes nothing, and a file a pull-through just verified is primed, not re-read.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from dsmirror._core.errors import InputError
from dsmirror._verify.digest import git_blob_header

__all__ = ["DigestCache", "hash_file"]

_CHUNK = 8 * 1024 * 1024


def hash_file(path: Path, *, git: bool) -> tuple[int, str, str | None]:
    """Return (size, sha256, git blob sha1 or None) of a file, read once in chunks."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(git_blob_header(size)) if git else None
    seen = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            seen += len(chunk)
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    if seen != size:
        raise InputError(f"{path} changed size while it was being indexed")
    return size, sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


_StatKey = tuple[str, int, int, int]


class DigestCache:
    """Digests of files already hashed, valid while (path, size, mtime_ns, inode) are unchanged.

    Thread-safe. ``prime`` records a digest computed elsewhere (a pull that just verified the file),
    so the next rescan does not hash it again.
    """

    def __init__(self) -> None:
        self._known: dict[_StatKey, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: Path, st: os.stat_result) -> _StatKey:
        return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)

    def digests(self, path: Path, *, git: bool) -> tuple[int, str, str | None]:
        """(size, sha256, git blob sha1 if ``git``) of ``path``, hashing only if not known."""
        st = path.stat()
        key = self._key(path, st)
        with self._lock:
            known = self._known.get(key)
        if known is not None and (known[1] is not None or not git):
            return st.st_size, known[0], known[1]
        size, sha256, sha1 = hash_file(path, git=git)
        with self._lock:
            self._known[key] = (sha256, sha1)
        return size, sha256, sha1

    def known(self, path: Path) -> tuple[str, str | None] | None:
        """The (sha256, git blob sha1 or None) recorded for ``path`` as it is now; None: never hashed."""
        try:
            st = path.stat()
        except OSError:
            return None
        with self._lock:
            return self._known.get(self._key(path, st))

    def prime(self, path: Path, sha256: str, git_sha1: str | None = None) -> None:
        st = path.stat()
        with self._lock:
            self._known[self._key(path, st)] = (sha256, git_sha1)
