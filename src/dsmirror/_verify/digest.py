"""Content digests of files: SHA-256, git blob SHA-1 and piece hashes.

``ContentHasher`` / ``hash_local_file`` compute all three at once while bytes stream past (registry
files checked against a git blob id); ``hash_file_pieces`` is the fast path for SHA-256 and pieces
alone (two hashing threads and an overlapped read), used to make and check manifests;
``hash_file_pieces_v1`` is the same read pass with the BitTorrent v1 SHA-1 of each piece too (the
manifest's ``sha1``, ``dsmirror manifest create``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = [
    "ContentHasher",
    "Digests",
    "git_blob_header",
    "git_blob_sha1",
    "hash_file_pieces",
    "hash_file_pieces_v1",
    "hash_local_file",
]

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


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


# -- the fast path: SHA-256 and pieces only ------------------------------------------------------
_POOL = ThreadPoolExecutor(
    max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="dsmirror-hash"
)


def _hexdigest(buf: memoryview, pad: int) -> str:
    """SHA-256 hex of one piece (``pad``: unused, see ``_each_piece``)."""
    return hashlib.sha256(buf).hexdigest()


_T = TypeVar("_T")


def _each_piece(
    path: Path,
    piece_size: int,
    digests: Callable[[memoryview, int], _T],
    whole: hashlib._Hash,
    on_bytes: Callable[[int], None] | None,
) -> Iterator[tuple[int, _T]]:
    """``(length, digests(piece, bytes short of a whole piece))`` for each piece of ``path``, in
    order, streaming with bounded memory (two piece buffers), ``whole`` fed every byte.

    The piece's digests run on a pool thread while this one feeds ``whole``, and the next read
    overlaps both (hashlib releases the GIL on large buffers), so a file is hashed at roughly the
    speed of one SHA-256 stream instead of half of it.
    """
    bufs = [bytearray(piece_size), bytearray(piece_size)]
    with open(path, "rb", buffering=0) as fh:
        turn = 0
        n = fh.readinto(bufs[turn])
        while n:
            view = memoryview(bufs[turn])[:n]
            fut = _POOL.submit(digests, view, piece_size - n)
            whole.update(view)
            nxt = 1 - turn
            n_next = fh.readinto(bufs[nxt]) if n == piece_size else 0
            yield n, fut.result()
            if on_bytes:
                on_bytes(n)
            turn, n = nxt, n_next or 0


def hash_file_pieces(
    path: Path,
    piece_size: int,
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[int, str, list[str]]:
    """Hash one file: (size, whole-file sha256, piece sha256s), in one read pass (``_each_piece``)."""
    whole = hashlib.sha256()
    pieces: list[str] = []
    size = 0
    for n, digest in _each_piece(path, piece_size, _hexdigest, whole, on_bytes):
        pieces.append(digest)
        size += n
    return size, whole.hexdigest(), pieces


@dataclass(frozen=True, slots=True)
class V1Hashes:
    """``hash_file_pieces_v1``: a file's SHA-256s and its BitTorrent v1 piece hashes."""

    size: int
    sha256: str
    pieces: list[str]
    #: SHA-1 of each piece, 20 bytes each, concatenated; the last piece zero-padded to the piece
    #: size (as a BEP 47 pad file follows it in a file-aligned v1 torrent)
    sha1: bytes
    #: SHA-1 of the last piece without padding (a torrent's last file has no pad file after it)
    sha1_last_unpadded: bytes


def _v1_digests(buf: memoryview, pad: int) -> tuple[str, bytes, bytes]:
    """(SHA-256 hex, SHA-1, SHA-1 with ``pad`` zero bytes after it) of one piece."""
    sha1 = hashlib.sha1(buf)
    plain = sha1.digest()
    while pad > 0:
        sha1.update(_ZEROS[: min(pad, _CHUNK)])
        pad -= _CHUNK
    return hashlib.sha256(buf).hexdigest(), plain, sha1.digest()


def hash_file_pieces_v1(
    path: Path,
    piece_size: int,
    *,
    on_bytes: Callable[[int], None] | None = None,
) -> V1Hashes:
    """``hash_file_pieces`` and the v1 SHA-1 of every piece, in the same single read pass.

    The piece digests (SHA-256, then SHA-1) run on a pool thread while this one hashes the whole
    file and reads the next piece. Measured: SHA-1 adds about a third to the hashing time of
    ``hash_file_pieces`` (1.35 -> 1.83 CPU-s per GiB here, SHA-NI), i.e. what SHA-1 alone costs;
    a second pass (libtorrent's ``set_piece_hashes``) would read every byte again.
    """
    whole = hashlib.sha256()
    pieces: list[str] = []
    sha1: list[bytes] = []
    last_plain = hashlib.sha1(b"").digest()
    size = 0
    for n, (digest, plain, padded) in _each_piece(path, piece_size, _v1_digests, whole, on_bytes):
        pieces.append(digest)
        sha1.append(padded)
        last_plain = plain
        size += n
    return V1Hashes(size, whole.hexdigest(), pieces, b"".join(sha1), last_plain)
