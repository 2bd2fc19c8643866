"""The published hash manifest: one model, its files, and the SHA-256 of every piece.

On-disk format (version 1), a JSON object written as its *canonical bytes* — UTF-8, keys sorted,
no insignificant white space, no trailing newline — so that ``sha256sum manifest.json`` prints the
manifest's identity, the value a pull pins with ``--manifest-sha256``::

    {
      "files": [                                  # in this order; pieces are numbered across files
        {"path": "config.json",                   # relative POSIX path, no "..", no absolute path
         "pieces": ["<sha256 hex>", ...],         # ceil(size / piece_size) entries; [] when size == 0;
                                                  # or null: no piece hashes published (a registry
                                                  # gives whole-file digests only, see below)
         "sha1": ["<sha1 hex>", ...],             # optional: the BitTorrent v1 hash of each piece
                                                  # (see below); on every file or on none
         "sha256": "<sha256 hex of the whole file>",  # or null: no whole-file digest published;
                                                  # then "pieces" must list every piece's hash
         "size": 1234},
        ...
      ],
      "format": "dsmirror-manifest",
      "meta": {...},                              # optional free-form provenance (revision, source)
      "name": "deepseek-r1-distill-qwen-7b",
      "piece_size": 8388608,                      # power of two, 16 KiB .. 1 GiB
      "torrent": {"btih": "<40 hex>", "btmh": "<64 hex>"},  # optional: info-hashes of the same pieces
      "version": 1
    }

A file whose ``pieces`` is null is checked by its whole-file SHA-256 alone: its pieces are fetched
and stored unverified (``Piece.sha256 == ""``), and when the file fails its digest the engine finds
the source that sent bad bytes by re-fetching that source's pieces elsewhere and comparing. Once such
a file verifies, ``Manifest.with_piece_hashes`` records a complete manifest for serving and seeding.

A file whose ``sha256`` is null (``FileEntry.sha256 == ""``) is checked by its piece hashes alone,
which cover every byte: a signed shard manifest (``dsmirror._formats.signature``) publishes those
and no whole-file digest. Once such a file is in place, ``Manifest.with_file_sha256`` records the
digest its verified bytes have, for the same uses.

``sha1`` (optional, ``FileEntry.sha1``: the raw 20-byte digests, concatenated) is what piece *k*
of the file hashes to in the v1 torrent dsmirror makes of the manifest (``torrent create
--torrent-format v1``): SHA-1 of the piece followed by zero bytes up to ``piece_size`` (its BEP 47
pad file), except the last piece of the last non-empty file in the torrent's order (paths sorted
as UTF-8 bytes), which has no padding. It needs ``pieces`` listed, and is on every file or none.
With it, the manifest's own swarm is a real torrent that libtorrent checks before it shares a
piece (``dsmirror._fetch.swarm.torrent``); it adds no trust (SHA-256 is still checked on every
piece), and a manifest without it works as before.

Pieces never span files: file *i* starts on a fresh piece, so every piece is exactly one HTTP byte
range of one file (and one piece of a file-aligned BitTorrent v2/hybrid torrent). Piece *k* of a file
covers bytes ``[k * piece_size, min((k + 1) * piece_size, size))``.

Memory follows the manifest's bytes, not what it declares: a few hundred bytes may declare 20 M
pieces (``"pieces": null`` with 16 KiB pieces over large files). So the pieces of a file without
piece hashes are not stored (``NoPieceHashes``: ``n`` empty strings in O(1)), and
``Manifest.pieces`` makes each ``Piece`` when it is asked for (``PieceList``). Only piece hashes the
document lists take memory, 32 bytes each (``PieceHashes``: raw digests, hex made when read), and
parsing never holds them as strings: the "pieces" and "sha1" lists are read from the bytes into raw
digests and ``json.loads`` sees the rest (``_parse_listed``; anything not exactly such a list is
parsed the plain way, to the same result or error). The canonical bytes are not kept either;
``sha256`` and ``write`` take them in chunks (``iter_canonical``). At 700k pieces (45 MB of JSON)
parsing raises RSS by 67 MiB at the peak and keeps 21 MiB; with ``json.loads`` of the whole text
and a str per hash it was 239 MiB and 144 MiB.

Parsing refuses, with ``ManifestError``, everything else a document can do to a parser: JSON nested
too deep, numbers too long for Python's ``int``, lone surrogates (no UTF-8 for them), and paths that
collide on a case- or normalisation-insensitive filesystem (``dsmirror._formats.paths``).

Documented in docs/formats.md#the-manifest.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, overload

from dsmirror._core.errors import ManifestError, ManifestMismatch
from dsmirror._formats.paths import PathCollisions, has_surrogates, validate_relpath

__all__ = [
    "FORMAT",
    "VERSION",
    "FileEntry",
    "Manifest",
    "NoPieceHashes",
    "Piece",
    "PieceHashes",
    "PieceList",
    "load_manifest",
    "parse_manifest",
]

FORMAT = "dsmirror-manifest"
VERSION = 1
MIN_PIECE_SIZE = 16 << 10
MAX_PIECE_SIZE = 1 << 30
DEFAULT_PIECE_SIZE = 8 << 20
MAX_FILE_SIZE = 1 << 50  # 1 PiB: anything larger is a forged or broken manifest
MAX_FILES = 1_000_000
MAX_PIECES = 20_000_000
MAX_META_DEPTH = 32  # meta is provenance (revision, source): flat in practice
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_SHA256_LEN = 32


@dataclass(frozen=True, slots=True)
class Piece:
    """One verifiable unit: a byte range of one file."""

    index: int  # global index across all files
    file_index: int
    path: str
    offset: int  # within the file
    length: int
    sha256: str


class NoPieceHashes(Sequence[str]):
    """The piece hashes of a file that has none published: ``n`` empty strings, stored as ``n``.

    Equal (and hashing equal) to ``("",) * n``, which callers may use instead for small files.
    """

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return NoPieceHashes(len(range(*i.indices(self._n))))
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return ""

    def __iter__(self) -> Iterator[str]:
        for _ in range(self._n):
            yield ""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NoPieceHashes):
            return other._n == self._n
        if isinstance(other, tuple | list):
            return len(other) == self._n and all(p == "" for p in other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))  # as ("",) * n's; nothing hashes these in practice

    def __repr__(self) -> str:
        return f"NoPieceHashes({self._n})"


class PieceHashes(Sequence[str]):
    """A file's published piece hashes, stored as their raw SHA-256 digests: 32 bytes a piece.

    Reads as the tuple of lowercase hex strings it replaces (``[k]``, slices, iteration, ``in``,
    ``==`` with a tuple or list of the same strings, and its hash), each string made when asked
    for; ``raw`` is the digests concatenated and ``digest(k)`` one of them. A tuple of 700k hex
    strings costs about 80 MB; this, 22 MB.
    """

    __slots__ = ("raw",)

    raw: bytes

    def __init__(self, raw: bytes) -> None:
        if len(raw) % _SHA256_LEN:
            raise ValueError(f"{len(raw)} bytes are not whole SHA-256 digests")
        self.raw = bytes(raw)

    @staticmethod
    def from_hex(pieces: Sequence[str]) -> PieceHashes | None:
        """``pieces`` as ``PieceHashes`` when every one is 64 lowercase hex digits, else None."""
        if not pieces:
            return None
        try:
            if set(map(len, pieces)) != {2 * _SHA256_LEN}:
                return None
            joined = "".join(pieces)
            raw = bytes.fromhex(joined)
        except (TypeError, ValueError):
            return None
        # fromhex also takes upper case and skips white space: only what hex() gives back is kept.
        return PieceHashes(raw) if raw.hex() == joined else None

    def __len__(self) -> int:
        return len(self.raw) // _SHA256_LEN

    def digest(self, k: int) -> bytes:
        """The raw SHA-256 of piece ``k`` of the file."""
        n = len(self)
        if not -n <= k < n:
            raise IndexError(k)
        k %= n
        return self.raw[k * _SHA256_LEN : (k + 1) * _SHA256_LEN]

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if type(i) is int and i >= 0:  # the common case, first: each Piece asks for its own
            d = self.raw[i * _SHA256_LEN : (i + 1) * _SHA256_LEN]
            if d:
                return d.hex()
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:
                return PieceHashes(self.raw[start * _SHA256_LEN : max(start, stop) * _SHA256_LEN])
            return tuple(self[k] for k in range(start, stop, step))
        return self.digest(i).hex()

    def __iter__(self) -> Iterator[str]:
        step = _SHA256_LEN * 4096  # a few thousand strings at a time, not all of them at once
        if len(self.raw) <= step:
            return iter(self.raw.hex(" ", _SHA256_LEN).split(" ") if self.raw else ())
        return (
            h
            for at in range(0, len(self.raw), step)
            for h in self.raw[at : at + step].hex(" ", 32).split(" ")
        )

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str) or len(value) != 2 * _SHA256_LEN:
            return False
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return False
        if raw.hex() != value:
            return False
        at = self.raw.find(raw)
        while at >= 0 and at % _SHA256_LEN:
            at = self.raw.find(raw, at + 1)
        return at >= 0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PieceHashes):
            return other.raw == self.raw
        if isinstance(other, tuple | list):
            if len(other) != len(self):
                return False
            if not other:
                return True
            same = PieceHashes.from_hex(other)
            return same is not None and same.raw == self.raw
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))  # as the tuple of hex strings'; nothing hashes these in practice

    def __repr__(self) -> str:
        return f"<{len(self)} piece hashes>"


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    #: One SHA-256 hex per piece, or (no piece hashes published) as many empty strings. A tuple or
    #: list of 64-lowercase-hex strings given here is stored as ``PieceHashes`` (32 bytes a piece).
    pieces: Sequence[str]
    #: The v1 BitTorrent piece hashes (20 bytes each, concatenated), or None (see the module doc).
    sha1: bytes | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pieces, tuple | list) and self.pieces and self.pieces[0]:
            compact = PieceHashes.from_hex(self.pieces)
            if compact is not None:
                object.__setattr__(self, "pieces", compact)


class PieceList(Sequence[Piece]):
    """``Manifest.pieces``: every piece in global order, each ``Piece`` made when asked for."""

    __slots__ = ("_files", "_piece_size", "_starts", "_total")

    def __init__(self, files: Sequence[FileEntry], piece_size: int) -> None:
        self._files = files
        self._piece_size = piece_size
        self._starts: list[int] = []  # global index of each file's first piece
        total = 0
        for f in files:
            self._starts.append(total)
            total += len(f.pieces)
        self._total = total

    def __len__(self) -> int:
        return self._total

    def _make(self, fi: int, k: int) -> Piece:
        f, off = self._files[fi], k * self._piece_size
        return Piece(self._starts[fi] + k, fi, f.path, off, min(self._piece_size, f.size - off), f.pieces[k])

    @overload
    def __getitem__(self, i: int) -> Piece: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Piece]: ...
    def __getitem__(self, i: int | slice) -> Piece | Sequence[Piece]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._total))]
        if i < 0:
            i += self._total
        if not 0 <= i < self._total:
            raise IndexError(i)
        # The last file starting at or before i: an empty file shares its start with the next one.
        fi = bisect.bisect_right(self._starts, i) - 1
        return self._make(fi, i - self._starts[fi])

    def __iter__(self) -> Iterator[Piece]:
        ps = self._piece_size
        for fi, f in enumerate(self._files):
            start, path, size = self._starts[fi], f.path, f.size
            for k, sha in enumerate(f.pieces):
                off = k * ps
                yield Piece(start + k, fi, path, off, min(ps, size - off), sha)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == self._total and all(a == b for a, b in zip(self, other, strict=False))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self._total} pieces>"


@dataclass(frozen=True)
class Manifest:
    name: str
    piece_size: int
    files: tuple[FileEntry, ...]
    torrent: Mapping[str, str] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    # -- identity --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        files: list[dict[str, Any]] = []
        for f in self.files:
            fd: dict[str, Any] = {
                "path": f.path,
                "size": f.size,
                "sha256": f.sha256 or None,
                "pieces": list(f.pieces) if not f.pieces or f.pieces[0] else None,
            }
            if f.sha1 is not None:
                fd["sha1"] = [f.sha1[k : k + 20].hex() for k in range(0, len(f.sha1), 20)]
            files.append(fd)
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "piece_size": self.piece_size,
            "files": files,
        }
        if self.torrent:
            d["torrent"] = dict(self.torrent)
        if self.meta:
            d["meta"] = dict(self.meta)
        return d

    def iter_canonical(self) -> Iterator[bytes]:
        """The canonical bytes, in chunks of at most a few hundred KB.

        The same bytes as ``json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
        ensure_ascii=False).encode()``, written out without the dict: piece hashes go from their
        raw digests to text a few thousand at a time, so a 45 MB manifest is never one string
        (nor 700k of them). Raises ``UnicodeEncodeError`` for text UTF-8 cannot carry.
        """
        top: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "piece_size": self.piece_size,
        }
        if self.torrent:
            top["torrent"] = dict(self.torrent)
        if self.meta:
            top["meta"] = dict(self.meta)
        # "files" sorts before every other key; in a file, path < pieces < sha1 < sha256 < size.
        # Text is gathered in a list and sent on every few hundred KB.
        parts = ['{"files":[']
        held = 0
        for i, f in enumerate(self.files):
            parts.append(('{"path":' if i == 0 else ',{"path":') + _json_text(f.path) + ',"pieces":')
            if f.pieces and not f.pieces[0]:
                parts.append("null")
            elif isinstance(f.pieces, PieceHashes):
                for text in _hex_list(f.pieces.raw, _SHA256_LEN):
                    parts.append(text)
                    held += len(text)
                    if held > 1 << 16:
                        yield "".join(parts).encode()
                        parts, held = [], 0
            else:
                parts.append(_json_text(list(f.pieces)))
            if f.sha1 is not None:
                parts.append(',"sha1":')
                for text in _hex_list(f.sha1, 20):
                    parts.append(text)
                    held += len(text)
                    if held > 1 << 16:
                        yield "".join(parts).encode()
                        parts, held = [], 0
            size = str(f.size) if type(f.size) is int else _json_text(f.size)
            parts.append(
                ',"sha256":' + (_json_text(f.sha256) if f.sha256 else "null") + ',"size":' + size + "}"
            )
            if len(parts) > 4096:
                yield "".join(parts).encode()
                parts, held = [], 0
        parts.append("]," + _json_text(top)[1:])
        yield "".join(parts).encode()

    @property
    def canonical_bytes(self) -> bytes:
        """The canonical bytes, made on each call: ``write`` and ``sha256`` take them in chunks."""
        return b"".join(self.iter_canonical())

    @cached_property
    def sha256(self) -> str:
        """The manifest's identity: SHA-256 of its canonical bytes."""
        h = hashlib.sha256()
        for chunk in self.iter_canonical():
            h.update(chunk)
        return h.hexdigest()

    def write(self, path: Path) -> None:
        """Write the canonical bytes atomically (temp name, fsync, rename), in chunks."""
        from dsmirror._core.fsutil import atomic_write_bytes

        atomic_write_bytes(path, self.iter_canonical())

    # -- pieces ----------------------------------------------------------------------------------
    @cached_property
    def pieces(self) -> PieceList:
        """Every piece in global order (made on demand: see the module docstring)."""
        return PieceList(self.files, self.piece_size)

    @cached_property
    def file_piece_ranges(self) -> tuple[range, ...]:
        """Global piece indices of each file."""
        ranges: list[range] = []
        start = 0
        for f in self.files:
            ranges.append(range(start, start + len(f.pieces)))
            start += len(f.pieces)
        return tuple(ranges)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def num_pieces(self) -> int:
        return len(self.pieces)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    @property
    def has_piece_hashes(self) -> bool:
        return all(not f.pieces or f.pieces[0] for f in self.files)

    @property
    def has_sha1(self) -> bool:
        """Every file has its v1 piece hashes (``FileEntry.sha1``; the parser allows all or none)."""
        return bool(self.files) and all(f.sha1 is not None for f in self.files)

    def with_piece_hashes(self, path: str, pieces: Sequence[str]) -> Manifest:
        files = tuple(
            FileEntry(f.path, f.size, f.sha256, tuple(pieces)) if f.path == path else f for f in self.files
        )
        return Manifest(self.name, self.piece_size, files, self.torrent, self.meta)

    def with_file_sha256(self, path: str, sha256: str) -> Manifest:
        """The whole-file digest of a file that had none published (learned from its verified bytes)."""
        files = tuple(
            FileEntry(f.path, f.size, sha256, f.pieces, f.sha1) if f.path == path else f for f in self.files
        )
        return Manifest(self.name, self.piece_size, files, self.torrent, self.meta)

    @property
    def folder_name(self) -> str:
        """The name as one safe path component (the default destination folder of a pull)."""
        safe = re.sub(r"[^A-Za-z0-9._+@=-]+", "-", self.name).strip("-.") or "model"
        return safe[:120]

    def with_torrent(self, torrent: Mapping[str, str] | None) -> Manifest:
        return Manifest(self.name, self.piece_size, self.files, torrent, self.meta)


_ESCAPED = re.compile(r'[\x00-\x1f"\\]')  # what json.dumps escapes in a str (ensure_ascii=False)


def _json_text(value: Any) -> str:
    """``value`` as canonical JSON text (a plain str without json.dumps: most paths and digests)."""
    if type(value) is str and not _ESCAPED.search(value):
        return '"' + value + '"'
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hex_list(raw: bytes, width: int) -> Iterator[str]:
    """``raw`` (digests of ``width`` bytes, concatenated) as a JSON list of hex strings, in chunks."""
    if not raw:
        yield "[]"
        return
    step = width * 1024
    for at in range(0, len(raw), step):
        yield '["' if at == 0 else '","'
        yield raw[at : at + step].hex(",", width).replace(",", '","')
    yield '"]'


# -- validation ------------------------------------------------------------------------------------
def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise ManifestError(message)


def parse_manifest(data: bytes, *, expected_sha256: str | None = None, origin: str | None = None) -> Manifest:
    """Parse and strictly validate manifest bytes; check the pin when given.

    Anything wrong with ``data`` raises ``ManifestError`` (naming ``origin``), never another error.
    """
    m = _parse_listed(data)
    if m is None:
        m = _parse_plain(data, origin)
    if expected_sha256 is not None and m.sha256 != expected_sha256.lower():
        raise ManifestMismatch(expected_sha256.lower(), m.sha256, where=origin or "manifest")
    return m


def _parse_plain(data: bytes, origin: str | None) -> Manifest:
    try:
        obj = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ManifestError("not valid JSON (nested too deeply)", path=origin) from None
    except ValueError as exc:  # also UnicodeDecodeError, JSONDecodeError, and ints too long for int()
        why = str(exc)
        if "integer string conversion" in why:
            why = f"a number of more than {sys.get_int_max_str_digits()} digits"
        raise ManifestError(f"not valid JSON ({why})", path=origin) from exc
    try:
        return _from_obj(obj)
    except ManifestError as exc:
        if origin:
            raise ManifestError(exc.message, path=origin, hint=exc.hint) from None
        raise


# -- the lists of piece hashes, read without json.loads ------------------------------------------
# A 700k-piece manifest is 45 MB of JSON, nearly all of it "pieces" lists. json.loads would make
# the whole text one str and each hash its own (about 240 MB at the peak, 80 MB kept); these lists
# are read straight from the bytes into raw digests instead, and json.loads sees the rest of the
# document with each of them replaced by NaN (which the document itself may not contain).
_WS = b" \t\n\r"  # JSON's white space, and nothing else
_OPEN = re.compile(rb"[ \t\n\r]*:[ \t\n\r]*\[")
_SPACED = {
    w: re.compile(
        rb'\[[ \t\n\r]*"[0-9a-f]{%d}"(?:[ \t\n\r]*,[ \t\n\r]*"[0-9a-f]{%d}")*[ \t\n\r]*\]' % (2 * w, 2 * w)
    )
    for w in (_SHA256_LEN, 20)  # pieces, sha1
}


class _Listed:
    """One "pieces" or "sha1" list of the document, read as raw digests (NaN in the text parsed)."""

    __slots__ = ("key", "raw", "used")

    def __init__(self, key: str, raw: bytes) -> None:
        self.key, self.raw, self.used = key, raw, False


def _parse_listed(data: bytes) -> Manifest | None:
    """``parse_manifest`` for a document with lists of hex piece hashes, without a str per hash.

    None when there are none, or when anything is not exactly as expected (a list that is not where
    a file's pieces go, a NaN in the document, anything invalid): the plain parse then decides, and
    names what is wrong.
    """
    if not isinstance(data, bytes):
        return None
    parts: list[bytes] = []
    listed: list[_Listed] = []
    at = 0
    for key, start, end, raw in _hex_lists(data):
        parts += (data[at:start], b"NaN")
        listed.append(_Listed(key, raw))
        at = end
    parts.append(data[at:])
    # The lists hold hex digits only: a NaN of the document's own is in what is left.
    if not listed or any(b"NaN" in part for part in parts[::2]):
        return None
    slots = iter(listed)

    def slot(name: str) -> _Listed:
        got = next(slots, None)
        if name != "NaN" or got is None:
            raise ValueError(f"{name} is not a JSON number")
        return got

    try:
        m = _from_obj(json.loads(b"".join(parts), parse_constant=slot))
    except (ValueError, TypeError, RecursionError, ManifestError):  # TypeError: a list in meta
        return None
    # Each list was a file's pieces or sha1, once: the document is the one parsed, lists put back.
    return m if all(x.used for x in listed) else None


def _hex_lists(data: bytes) -> Iterator[tuple[str, int, int, bytes]]:
    """Each list of plain lowercase hex digests after a "pieces" or "sha1" key, in order: the key,
    where the list starts and ends, and its digests (raw). Looks for keys only between such lists."""
    pos = 0
    while True:
        p = data.find(b'"pieces"', pos)
        s = data.find(b'"sha1"', pos, len(data) if p < 0 else p)
        if s >= 0:
            key, width, pos = "sha1", 20, s + 6
        elif p >= 0:
            key, width, pos = "pieces", _SHA256_LEN, p + 8
        else:
            return
        opened = _OPEN.match(data, pos)
        if not opened:
            continue
        start = opened.end() - 1
        end = data.find(b"]", start) + 1
        if not end:
            return
        raw = _strided(data[start:end] if end - start <= 1 << 16 else memoryview(data)[start:end], width)
        if raw is None and _SPACED[width].fullmatch(data, start, end):  # white space between strings
            raw = _strided(data[start:end].translate(None, _WS), width)
        if raw is not None:
            yield key, start, end, raw
            pos = end


_DIGITS = bytes.maketrans(b"ABCDEF", b"!!!!!!")  # upper case: not a hex digit to unhexlify either


def _strided(text: bytes | memoryview, width: int) -> bytes | None:
    """``text`` as raw digests when it is exactly ``["h","h",...,"h"]``, each ``h`` 2 * ``width``
    lowercase hex digits (a string every 2 * width + 3 bytes); else None."""
    stride = 2 * width + 3
    n, extra = divmod(len(text) - 1, stride)
    if extra or n < 1:
        return None
    quotes = b'"' * n
    if text[1::stride] != quotes or text[stride - 1 :: stride] != quotes:
        return None
    if text[stride::stride] != b"," * (n - 1) + b"]":
        return None
    # The strings hold the rest, 2 * width hex digits each (a '"' or ',' among them would leave
    # fewer once those are taken out). A chunk at a time:
    out: list[bytes] = []
    per = 8192
    for first in range(0, n, per):
        k = min(per, n - first)
        chunk = bytes(text[1 + first * stride : min(1 + (first + k) * stride, len(text) - 1)])
        digits = chunk.translate(_DIGITS, b'",')
        if len(digits) != 2 * width * k:
            return None
        try:
            out.append(binascii.unhexlify(digits))
        except ValueError:  # binascii.Error: not a hex digit (white space, upper case, ...)
            return None
    return out[0] if len(out) == 1 else b"".join(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(obj: Any) -> int:
    """How deeply ``obj`` (parsed JSON) nests lists and objects (without recursing)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            stack.extend((child, d + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _from_obj(obj: Any) -> Manifest:
    _expect(isinstance(obj, dict), "a manifest must be a JSON object")
    _expect(obj.get("format") == FORMAT, f"not a dsmirror manifest (format must be {FORMAT!r})")
    _expect(obj.get("version") == VERSION, f"unsupported manifest version {obj.get('version')!r}")
    unknown = set(obj) - {"format", "version", "name", "piece_size", "files", "torrent", "meta"}
    _expect(not unknown, f"unknown manifest field(s): {', '.join(sorted(unknown))}")
    name = obj.get("name")
    _expect(isinstance(name, str) and 0 < len(name) <= 200, "name must be a string of 1..200 characters")
    _expect("\x00" not in name, "name must not contain NUL")
    _expect(not has_surrogates(name), f"name {name!r} is not valid Unicode (a lone surrogate)")
    ps = obj.get("piece_size")
    _expect(
        isinstance(ps, int)
        and not isinstance(ps, bool)
        and MIN_PIECE_SIZE <= ps <= MAX_PIECE_SIZE
        and ps & (ps - 1) == 0,
        f"piece_size {ps!r} must be a power of two between 16 KiB and 1 GiB",
    )
    files_obj = obj.get("files")
    _expect(isinstance(files_obj, list), "files must be a list")
    _expect(len(files_obj) <= MAX_FILES, f"too many files ({len(files_obj)})")
    files: list[FileEntry] = []
    # Duplicates, a file that is also a folder, and names one filesystem or another takes as equal.
    collisions = PathCollisions()
    total_pieces = 0
    for i, fo in enumerate(files_obj):
        where = f"files[{i}]"
        _expect(isinstance(fo, dict), f"{where} must be an object")
        _expect(
            set(fo) - {"sha1"} == {"path", "size", "sha256", "pieces"},
            f"{where} needs exactly path, size, sha256, pieces (and optionally sha1)",
        )
        path = validate_relpath(fo["path"], where=f"{where}.path")
        collision = collisions.add(path)
        _expect(collision is None, f"{where}.path {collision}")
        size = fo["size"]
        _expect(
            isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_FILE_SIZE,
            f"{where}.size {size!r} is not a plausible size",
        )
        digest = fo["sha256"]
        pieces = fo["pieces"]
        hex_digest = isinstance(digest, str) and bool(_HEX64.match(digest))
        _expect(
            hex_digest or (digest is None and pieces is not None),
            f"{where}.sha256 is not 64 lowercase hex (null only when every piece hash is listed)",
        )
        # Limits first: nothing per piece is made for what a document merely declares.
        want = -(-size // ps)
        _expect(total_pieces + want <= MAX_PIECES, f"too many pieces (> {MAX_PIECES})")
        total_pieces += want
        if isinstance(pieces, _Listed):  # read by _parse_listed: 64 lowercase hex digits each
            n = len(pieces.raw) // _SHA256_LEN
            _expect(pieces.key == "pieces" and n == want, f"{where}: {n} piece hashes for {size} bytes")
            pieces.used = True
            files.append(
                FileEntry(path, size, digest or "", PieceHashes(pieces.raw), _sha1(fo, where, want, False))
            )
            continue
        if pieces is None:
            _expect("sha1" not in fo, f"{where}.sha1 needs the piece hashes (pieces) listed")
            files.append(FileEntry(path, size, digest, NoPieceHashes(want)))
            continue  # unknown: the whole-file digest is the only check
        _expect(isinstance(pieces, list), f"{where}.pieces must be a list or null")
        _expect(
            len(pieces) == want, f"{where}: {len(pieces)} piece hashes for {size} bytes (expected {want})"
        )
        hashes = PieceHashes.from_hex(pieces)  # None unless every one is 64 lowercase hex digits
        _expect(hashes is not None or all(p == "" for p in pieces), f"{where}.pieces: bad digest")
        unhashed = hashes is None and bool(pieces)  # all ""
        _expect(digest is not None or not unhashed, f"{where}: sha256 null needs every piece hash")
        listed = hashes if hashes is not None else NoPieceHashes(want) if want else ()
        files.append(FileEntry(path, size, digest or "", listed, _sha1(fo, where, want, unhashed)))
    with_sha1 = sum(f.sha1 is not None for f in files)
    _expect(with_sha1 in (0, len(files)), "sha1 must be given for every file or for none")
    torrent = obj.get("torrent")
    if torrent is not None:
        _expect(isinstance(torrent, dict), "torrent must be an object")
        _expect(set(torrent) <= {"btih", "btmh", "btih_v1only"}, "torrent accepts btih, btmh, btih_v1only")
        for k, v in torrent.items():
            ok = isinstance(v, str) and bool((_HEX64 if k == "btmh" else _HEX40).match(v))
            _expect(ok, f"torrent.{k} is not a hex info-hash")
    meta = obj.get("meta", {})
    _expect(isinstance(meta, dict), "meta must be an object")
    _expect(_depth(meta) <= MAX_META_DEPTH, f"meta nests deeper than {MAX_META_DEPTH} levels")
    m = Manifest(name, ps, tuple(files), torrent, meta)
    try:
        m.sha256  # noqa: B018 - made now (and kept): text UTF-8 cannot carry fails here
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise ManifestError(f"not valid Unicode: {exc.reason} ({bad!r})") from None
    return m


def _sha1(fo: Mapping[str, Any], where: str, want: int, unhashed: bool) -> bytes | None:
    """A file's ``sha1`` list (validated) as concatenated raw digests, or None when absent."""
    if "sha1" not in fo:
        return None
    sha1 = fo["sha1"]
    _expect(not unhashed, f"{where}.sha1 needs the piece hashes (pieces) listed")
    if isinstance(sha1, _Listed):  # read by _parse_listed: 40 lowercase hex digits each
        _expect(
            sha1.key == "sha1" and len(sha1.raw) == 20 * want, f"{where}: sha1 piece hashes for {want} pieces"
        )
        sha1.used = True
        return sha1.raw
    _expect(isinstance(sha1, list), f"{where}.sha1 must be a list")
    _expect(len(sha1) == want, f"{where}: {len(sha1)} sha1 piece hashes for {want} pieces")
    _expect(
        all(isinstance(h, str) and _HEX40.fullmatch(h) for h in sha1), f"{where}.sha1: not 40 lowercase hex"
    )
    return bytes.fromhex("".join(sha1))


def load_manifest(path: Path, *, expected_sha256: str | None = None) -> Manifest:
    try:
        st = path.stat()
        if st.st_size > 4 << 30:
            raise ManifestError("file is too large to be a manifest", path=str(path))
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError("no such file", path=str(path), hint="check the path of the manifest") from None
    except IsADirectoryError:
        raise ManifestError("is a folder, not a manifest file", path=str(path)) from None
    except PermissionError:
        raise ManifestError("permission denied", path=str(path)) from None
    return parse_manifest(data, expected_sha256=expected_sha256, origin=str(path))
