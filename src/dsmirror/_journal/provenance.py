"""Which source sent which piece, in memory: 34 bytes per piece received, not a dict of tuples.

``Store.provenance`` remembers, for each piece of a file without published piece hashes, the source
that sent it and the SHA-256 of the bytes received (the on-disk form is the ``provenance`` file,
see ``dsmirror._journal.store``). A dict of ``(source, hex digest)`` tuples costs about 270 bytes a
piece: 190 MB for the 700k pieces of a DeepSeek-V3-sized pull. This mapping keeps the digest as
its 32 raw bytes and the source as a 16-bit index into the names seen, in blocks of 4096 pieces
made when a piece of the block is first recorded, so memory follows what was received (a manifest
that declares 20 M pieces allocates nothing for them). It reads like the dict it replaces
(``get``, ``[]``, ``in``, ``items``, ``dict(...)``), in ascending piece order.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterator, MutableMapping

__all__ = ["Provenance"]

_BLOCK = 4096
_DIGEST = 32
#: How a piece recorded with no digest ("": its bytes were not hashed on their own, see
#: ``dsmirror._fetch.engine``) is kept: a SHA-256 of all zeros, which no bytes have in practice.
_NONE = bytes(_DIGEST)


class Provenance(MutableMapping[int, tuple[str, str]]):
    """piece index -> (source name, hex SHA-256 of the bytes it sent)."""

    __slots__ = ("_blocks", "_count", "_ids", "_names", "_odd")

    def __init__(self) -> None:
        self._names: list[str] = [""]  # id 0: no record
        self._ids: dict[str, int] = {}
        self._blocks: dict[int, tuple[array[int], bytearray]] = {}  # block -> (source ids, digests)
        self._odd: dict[int, tuple[str, str]] = {}  # digests that are not 64 hex digits, names past 65535
        self._count = 0

    def __setitem__(self, index: int, value: tuple[str, str]) -> None:
        source, digest = value
        raw: bytes | None = _NONE if not digest else None
        if len(digest) == 2 * _DIGEST:
            try:
                raw = bytes.fromhex(digest)
            except ValueError:
                raw = None
        sid = self._ids.get(source)
        if sid is None and len(self._names) <= 0xFFFF:
            sid = self._ids[source] = len(self._names)
            self._names.append(source)
        if index in self:
            del self[index]
        if raw is None or sid is None or (digest and (raw.hex() != digest or raw == _NONE)):
            self._odd[index] = (source, digest)  # kept as given (upper case, odd lengths: rare)
        else:
            block, at = divmod(index, _BLOCK)
            ids, digests = self._blocks.get(block) or self._new_block(block)
            ids[at] = sid
            digests[at * _DIGEST : (at + 1) * _DIGEST] = raw
        self._count += 1

    def _new_block(self, block: int) -> tuple[array[int], bytearray]:
        made = self._blocks[block] = (array("H", bytes(2 * _BLOCK)), bytearray(_BLOCK * _DIGEST))
        return made

    def __getitem__(self, index: int) -> tuple[str, str]:
        odd = self._odd.get(index)
        if odd is not None:
            return odd
        got = self._blocks.get(index // _BLOCK) if index >= 0 else None
        at = index % _BLOCK
        if got is None or not got[0][at]:
            raise KeyError(index)
        ids, digests = got
        raw = digests[at * _DIGEST : (at + 1) * _DIGEST]
        return self._names[ids[at]], raw.hex() if raw != _NONE else ""

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        if index in self._odd:
            return True
        got = self._blocks.get(index // _BLOCK) if index >= 0 else None
        return got is not None and bool(got[0][index % _BLOCK])

    def __delitem__(self, index: int) -> None:
        if self._odd.pop(index, None) is not None:
            self._count -= 1
            return
        if index not in self:
            raise KeyError(index)
        self._blocks[index // _BLOCK][0][index % _BLOCK] = 0
        self._count -= 1

    def __iter__(self) -> Iterator[int]:
        return heapq.merge(self._recorded(), sorted(self._odd))

    def _recorded(self) -> Iterator[int]:
        for block in sorted(self._blocks):
            ids, base = self._blocks[block][0], block * _BLOCK
            for at, sid in enumerate(ids):
                if sid:
                    yield base + at

    def __len__(self) -> int:
        return self._count

    def digests(self, start: int, stop: int) -> bytes | None:
        """The raw digests of pieces ``start`` to ``stop - 1``, concatenated, when each is recorded
        (with a 64-hex digest, not without one), else None: a learned file's ``PieceHashes``
        without a string each."""
        if any(start <= i < stop for i in self._odd):
            return None
        out = bytearray()
        i = start
        while i < stop:
            block, at = divmod(i, _BLOCK)
            got = self._blocks.get(block)
            upto = min(stop, (block + 1) * _BLOCK) - block * _BLOCK
            if got is None or not all(got[0][at:upto]):
                return None
            raw = got[1][at * _DIGEST : upto * _DIGEST]
            if any(raw[k : k + _DIGEST] == _NONE for k in range(0, len(raw), _DIGEST)):
                return None  # a piece recorded without its digest
            out += raw
            i = (block + 1) * _BLOCK
        return bytes(out)
