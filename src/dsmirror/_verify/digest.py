"""Content digests computed while bytes stream past: SHA-256, git blob SHA-1 and piece hashes at once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ContentHasher", "Digests", "git_blob_header", "git_blob_sha1", "hash_local_file"]

_CHUNK = 1 << 20


def git_blob_header(size: int) -> bytes:
    """What git hashes before a file's content: ``b"blob <size>\\0"``."""
    return b"blob %d\0" % size


def git_blob_sha1(data: bytes) -> str:
    """Git's object id of a file: SHA-1 of ``b"blob <size>\\0" + content`` (the Hub's etag of small files)."""
    return hashlib.sha1(git_blob_header(len(data)) + data).hexdigest()


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    git_sha1: str
    pieces: tuple[str, ...]
    data: bytes | None  # the content, when it was kept


class ContentHasher:
    """Feed the bytes of one file of a known size in order; ``finish`` gives every digest of it."""

    def __init__(self, size: int, piece_size: int, *, keep: bool = False) -> None:
        self.size = size
        self.piece_size = piece_size
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1(git_blob_header(size))
        self._piece = hashlib.sha256()
        self._fill = 0
        self._pieces: list[str] = []
        self._buf: bytearray | None = bytearray() if keep else None
        self.received = 0

    def update(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        self._sha256.update(data)
        self._sha1.update(data)
        if self._buf is not None:
            self._buf += data
        view = memoryview(data)
        while view:
            take = min(len(view), self.piece_size - self._fill)
            self._piece.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self.piece_size:
                self._pieces.append(self._piece.hexdigest())
                self._piece = hashlib.sha256()
                self._fill = 0

    def finish(self) -> Digests:
        pieces = list(self._pieces)
        if self._fill:
            pieces.append(self._piece.hexdigest())
        data = bytes(self._buf) if self._buf is not None else None
        return Digests(self.received, self._sha256.hexdigest(), self._sha1.hexdigest(), tuple(pieces), data)


def hash_local_file(path: Path, piece_size: int, *, keep: bool = False) -> Digests:
    """Every digest of a local file, read once (raises OSError)."""
    size = path.stat().st_size
    h = ContentHasher(size, piece_size, keep=keep)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.finish()
