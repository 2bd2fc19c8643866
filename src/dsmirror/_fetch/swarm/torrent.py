"""Torrents whose pieces are the manifest's pieces: creating them, reading them, checking them.

A dsmirror torrent is made *from a manifest and a folder*, with the manifest's piece size and
file-aligned pieces, so that torrent piece *t* is exactly one manifest piece: one byte range of one
file, which is also one HTTP Range request. Two kinds are made (``--torrent-format``):

``hybrid`` (default)
    BitTorrent v1 + v2 (BEP 52) in one file. v2 aligns every file on a piece boundary by
    itself; the v1 half gets the same layout through BEP 47 pad files (``<name>/.pad/<n>``), which
    clients that know them never write to disk.
``v1``
    v1 only, for clients that cannot read hybrid torrents (aria2 1.36, transmission 3), laid out
    the same way with pad files (libtorrent's ``canonical_files``). A client that does not know
    BEP 47 writes the pad files as small zero-filled files under ``<name>/.pad/``; the model files
    are unaffected.

Both sort the files by path (the v2 file tree is a sorted dictionary), so torrent piece numbers
and manifest piece numbers differ in general: :class:`PieceMap` translates between them. No tail
padding follows the last file. The torrent's root folder is the manifest name with every character
outside ``[A-Za-z0-9._+-]`` replaced by ``-``; the files keep the manifest's relative paths below it.

The .torrent bytes are reproducible: no creation date and no file times, so everyone who makes
the torrent of the same manifest and bytes gets the same info-hashes. The manifest records them
(``torrent: {"btih", "btmh"}`` for a hybrid torrent, ``{"btih_v1only"}`` for a v1 one; see
:func:`with_torrent_hashes`), which pins the torrent to the manifest: a swarm found by those hashes
serves exactly the manifest's bytes.

What the torrent hashes are not: v1 pieces are SHA-1 over the piece *plus its zero padding*, and
a v2 file's ``pieces root`` is the root of a SHA-256 Merkle tree over 16 KiB blocks, not the
SHA-256 of the file a registry (Hugging Face LFS oid, Ollama digest) publishes. So the manifest's
SHA-256 checks stay separate and are still made on every piece a swarm delivers.

The manifest's own swarm: a torrent derived from the manifest alone
=================================================================
A pull has to join a swarm before any peer holds a complete copy, and before anybody who holds the
real torrent above is around: the manifest names that torrent by its info-hashes only, and its
info dict (SHA-1 per piece, SHA-256 Merkle roots per file) can be computed only from all the bytes.
So the machines of a LAN pulling a manifest meet in a swarm whose torrent needs no bytes:
:func:`derived_torrent` builds a v1 torrent from the manifest alone, laid out like ``v1`` above
(file-aligned, BEP 47 pad files, no creation date) with the manifest's piece size. Every machine
that has the manifest computes the same info-hash (:func:`derived_info_hash`), so they find each
other by LSD (or a tracker) with no configuration, at once, with no metadata to exchange. Its piece
hashes are of two kinds.

*Real ones,* when the manifest has ``sha1`` (each piece's v1 hash; ``dsmirror manifest create``
writes them from the same read pass as the SHA-256s). The torrent then carries nothing else: it is
exactly the v1 torrent ``torrent create --torrent-format v1`` makes of the manifest and its files
(the same info dict and info-hash), so a plain BitTorrent client given that torrent joins the same
swarm, and a machine seeds one torrent, not two. libtorrent checks every piece against it before
it keeps, announces or serves it, and bans the sender of a bad one itself (a sole sender at once,
the senders of a mixed piece through its smart-ban plugin): a machine never passes a bad piece on.
(With unchecked pieces an honest machine could relay a bad one in the moment before its own check,
and be banned for it by the others: issue 13 item 5.) The session runs with checks on, and dsmirror
still checks every piece it is handed against the manifest's SHA-256 (``broker.deliver``). A wrong
``sha1`` (another tool's manifest, a bug) lets no bad byte in either: libtorrent then rejects the
good pieces of peers and of the store alike, and after two of the store's verified pieces the
swarm is dropped ("does not match the manifest's verified bytes") and mirrors fetch the rest.

*Placeholders,* for manifests without ``sha1`` (made before the field, or by ``--no-sha1``): the
"SHA-1" of piece *t* is the first 20 bytes of the manifest's SHA-256 of that piece, and the info
dict carries ``x-dsmirror-manifest`` (the manifest's SHA-256), so two manifests never share such a
swarm. These are not what a BitTorrent client checks (SHA-1 of the padded piece), so the session
of such a torrent runs with libtorrent's hash checks off (``SwarmSession(trust_pieces=True)``) and
the checks are dsmirror's: every piece libtorrent finishes is read back and checked against the
manifest's SHA-256 before it is used or kept, and the peers that sent a bad one are banned
(``dsmirror._fetch.swarm.source``). Plain BitTorrent clients cannot use this torrent; they use the
real one. Manifests made before the derived torrent existed work the same: it needs only pieces
and sizes, which every manifest with piece hashes has.

Registry manifests (``hf://``, ``ollama://``: a whole-file SHA-256 per file, no piece hashes) get
one too, laid out the same way from the piece size and file sizes; a piece of a file without piece
hashes gets a placeholder "hash" (:func:`placeholder_hash`: SHA-256 of a label, the file's SHA-256
and the piece's index in the file, cut to 20 bytes), so every machine that resolved the same
revision computes the same info-hash. Nothing can check such a piece on arrival: it is accepted,
who sent its blocks is recorded, and the file's digest decides; when the file fails, the repair
fetches the swarm's pieces again from mirrors, and the peers that sent the ones that differed are
banned by address (``SwarmSource.blame``, ``dsmirror._fetch.repair``). A file with neither piece
hashes nor a SHA-256 gives no derived torrent (there is nothing to check it by).

Torrents made elsewhere need not be file-aligned (a plain v1 torrent's pieces run across file
boundaries): :func:`file_aligned` tells the two apart, and only an aligned torrent's pieces can be a
manifest's pieces.

Documented in docs/formats.md#the-swarm-bt-btresume-and-torrents.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import quote

import libtorrent as lt

from dsmirror._core.errors import InputError, IntegrityError, UsageError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._formats.manifest import Manifest

__all__ = [
    "TORRENT_FORMATS",
    "PieceMap",
    "Torrent",
    "TorrentFileEntry",
    "check_torrent",
    "create_torrent",
    "derived_info_hash",
    "derived_torrent",
    "file_aligned",
    "load_torrent",
    "magnet_for",
    "own_swarm",
    "parse_magnet",
    "placeholder_hash",
    "torrent_from_info",
    "torrent_root_name",
    "with_torrent_hashes",
]

TORRENT_FORMATS = ("hybrid", "v1")
DERIVED_KEY = b"x-dsmirror-manifest"  # in the info dict of a torrent derived from a manifest
CREATOR = "dsmirror/0.1"
MAX_TORRENT_BYTES = 64 << 20  # a torrent of 20 M pieces is ~400 MiB of v1 hashes; refuse worse
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def torrent_root_name(manifest_name: str) -> str:
    """The torrent's root folder for a manifest name: safe on every file system."""
    name = _UNSAFE.sub("-", manifest_name).strip(".-") or "model"
    return name[:200]


@dataclass(frozen=True, slots=True)
class TorrentFileEntry:
    """One file of a torrent, in torrent order; ``path`` is relative to the torrent's root folder."""

    path: str
    size: int
    offset: int  # in the torrent's concatenated byte stream
    pad: bool


@dataclass(frozen=True)
class Torrent:
    """A parsed .torrent: its bencoded bytes and what dsmirror needs to know of it."""

    data: bytes
    name: str
    btih: str | None  # v1 info-hash (v1 or hybrid torrent), 40 hex
    btmh: str | None  # v2 info-hash (v2 or hybrid torrent), 64 hex
    piece_size: int
    num_pieces: int
    total_size: int
    files: tuple[TorrentFileEntry, ...]

    @property
    def format(self) -> str:
        """``hybrid``, ``v1`` or ``v2``."""
        if self.btih and self.btmh:
            return "hybrid"
        return "v1" if self.btih else "v2"

    @cached_property
    def derived(self) -> str | None:
        """The manifest SHA-256 a torrent derived from a manifest names (:func:`derived_torrent`)."""
        info: Any = lt.bdecode(self.info().info_section())
        value = info.get(DERIVED_KEY) if isinstance(info, dict) else None
        return value.decode("ascii", "replace") if isinstance(value, bytes) else None

    @property
    def content_files(self) -> tuple[TorrentFileEntry, ...]:
        return tuple(f for f in self.files if not f.pad)

    def info(self) -> Any:
        """A fresh ``libtorrent.torrent_info`` (each session needs its own)."""
        return lt.torrent_info(self.data)

    @cached_property
    def magnet(self) -> str:
        return str(lt.make_magnet_uri(self.info()))

    def piece_length(self, index: int) -> int:
        """Bytes of torrent piece ``index`` (pad bytes included)."""
        return min(self.piece_size, self.total_size - index * self.piece_size)

    def manifest_fields(self) -> dict[str, str]:
        """What a manifest's ``torrent`` object records of this torrent."""
        if self.format == "v1":
            assert self.btih is not None
            return {"btih_v1only": self.btih}
        out = {"btmh": self.btmh} if self.btmh else {}
        if self.btih:
            out["btih"] = self.btih
        return {k: v for k, v in out.items() if v}

    def write(self, path: Path) -> None:
        atomic_write_bytes(path, self.data)

    def renamed_files(self) -> dict[int, str]:
        """libtorrent ``renamed_files``: each content file to its path below the root folder."""
        return {k: f.path for k, f in enumerate(self.files) if not f.pad and f.path}

    def file_at(self, piece: int) -> TorrentFileEntry | None:
        """The content file holding the first byte of torrent piece ``piece`` (for messages)."""
        offset = piece * self.piece_size
        for f in self.files:
            if not f.pad and f.offset <= offset < f.offset + f.size:
                return f
        return None


def file_aligned(torrent: Torrent) -> bool:
    """Whether every piece of ``torrent`` holds bytes of one content file only (pad bytes aside).

    True for v2 and hybrid torrents and for v1 torrents laid out with BEP 47 pad files (as dsmirror
    makes them); false for a plain v1 torrent whose pieces run across file boundaries.
    """
    ps = torrent.piece_size
    owner: dict[int, str] = {}
    for f in torrent.files:
        if f.pad or not f.size:
            continue
        for piece in (f.offset // ps, (f.offset + f.size - 1) // ps):
            if owner.setdefault(piece, f.path) != f.path:
                return False
    return True


def load_torrent(source: bytes | Path, *, origin: str | None = None) -> Torrent:
    """Parse .torrent bytes (or a file) strictly; raise InputError for anything unusable."""
    where = origin or (str(source) if isinstance(source, Path) else "torrent")
    if isinstance(source, Path):
        try:
            if source.stat().st_size > MAX_TORRENT_BYTES:
                raise InputError(f"{where}: too large to be a torrent")
            data = source.read_bytes()
        except OSError as exc:
            raise InputError(f"{where}: cannot read ({exc.strerror or exc})") from exc
    else:
        data = bytes(source)
    try:
        ti = lt.torrent_info(data)
    except RuntimeError as exc:
        raise InputError(f"{where}: not a valid torrent ({exc})", hint="give a .torrent file") from exc
    return torrent_from_info(ti, data)


def torrent_from_info(ti: Any, data: bytes | None = None) -> Torrent:
    """A :class:`Torrent` of a ``libtorrent.torrent_info`` (e.g. metadata received from a swarm)."""
    if data is None:
        data = bytes(lt.bencode({b"info": lt.bdecode(ti.info_section())}))
    hashes = ti.info_hashes()
    btih = str(hashes.v1) if hashes.has_v1() else None
    btmh = str(hashes.v2) if hashes.has_v2() else None
    fs = ti.layout()
    name = str(ti.name())
    files = []
    for i in range(fs.num_files()):
        path = str(fs.file_path(i))
        if path.startswith(name + "/"):
            path = path[len(name) + 1 :]
        pad = bool(fs.file_flags(i) & lt.file_storage.flag_pad_file)
        files.append(TorrentFileEntry(path, int(fs.file_size(i)), int(fs.file_offset(i)), pad))
    return Torrent(
        data=data,
        name=name,
        btih=btih,
        btmh=btmh,
        piece_size=int(ti.piece_length()),
        num_pieces=int(ti.num_pieces()),
        total_size=int(ti.total_size()),
        files=tuple(files),
    )


def parse_magnet(uri: str) -> tuple[str | None, str | None]:
    """The (btih, btmh) info-hashes a magnet link names, lower-case hex; InputError if none."""
    try:
        atp = lt.parse_magnet_uri(uri)
    except RuntimeError as exc:
        raise InputError(f"not a valid magnet link ({exc})") from exc
    hashes = atp.info_hashes
    btih = str(hashes.v1) if hashes.has_v1() else None
    btmh = str(hashes.v2) if hashes.has_v2() else None
    if not btih and not btmh:
        raise InputError("the magnet link names no BitTorrent info-hash (xt=urn:btih: or urn:btmh:)")
    return btih, btmh


# -- creating ------------------------------------------------------------------------------------
def create_torrent(
    manifest: Manifest,
    folder: Path,
    *,
    format: str = "hybrid",
    trackers: Sequence[str] = (),
    verify: bool = True,
    comment: str | None = None,
    disk: Mapping[str, Path] | None = None,
) -> Torrent:
    """Make the torrent of ``manifest`` from the files under ``folder`` (``folder/<path>``).

    With ``verify`` the folder is first checked against the manifest (every piece and whole-file
    SHA-256), so a torrent is never made of bytes the manifest does not describe; pass False only
    when the manifest was just made from the same folder, or its files were checked otherwise.
    ``disk`` says where each file's bytes are when they are not at ``folder/<path>`` (a model in
    the Hugging Face cache or the Ollama store: its blobs); it needs ``verify=False``.
    """
    if disk is not None and verify:
        raise UsageError("create_torrent: files elsewhere than folder/<path> cannot be verified here")
    where = {f.path: disk[f.path] if disk is not None else folder / f.path for f in manifest.files}
    if format not in TORRENT_FORMATS:
        raise UsageError(f"--torrent-format must be one of {', '.join(TORRENT_FORMATS)}, not {format!r}")
    if manifest.total_size == 0:
        raise UsageError("every file of this model is empty: there is nothing to share in a torrent")
    for f in manifest.files:
        p = where[f.path]
        try:
            size = p.stat().st_size
        except OSError:
            raise InputError(f"{p}: missing; the folder does not hold the model of the manifest") from None
        if size != f.size:
            raise InputError(
                f"{p}: {size} bytes, the manifest says {f.size}", hint="check the folder and manifest"
            )
    if verify:
        # Imported here: a pull's swarm (its derived torrent) reads no file, and the verify layer
        # (its hashing pool: concurrent.futures, logging) is ~8 ms before the swarm is ready.
        from dsmirror._verify.tree import verify_tree

        report = verify_tree(manifest, folder)
        if not report.ok:
            bad = (
                report.missing_files
                + report.wrong_size
                + report.bad_files
                + [p.path for p in report.bad_pieces]
            )
            raise IntegrityError(
                f"{folder} does not match the manifest ({len(set(bad))} files differ, e.g. {bad[0]})",
                hint="make the torrent from a verified copy (dsmirror verify MANIFEST DIR)",
            )
    root = torrent_root_name(manifest.name)
    entries = [lt.create_file_entry(f"{root}/{f.path}", f.size) for f in manifest.files]
    flags = lt.create_torrent.canonical_files_no_tail_padding
    if format == "v1":
        flags |= lt.create_torrent.v1_only | lt.create_torrent.canonical_files
    ct = lt.create_torrent(entries, manifest.piece_size, flags)
    if ct.piece_length() != manifest.piece_size:  # pragma: no cover - libtorrent honours a valid size
        raise IntegrityError(f"libtorrent chose piece size {ct.piece_length()}, not {manifest.piece_size}")
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    ct.set_creator(CREATOR)
    if comment:
        ct.set_comment(comment)
    # libtorrent reads <dir>/<root>/<path>; a symlink named <root> lets the folder have any name
    # (and with ``disk``, one symlink per file lets each file be anywhere).
    with tempfile.TemporaryDirectory(prefix="dsmirror-torrent-") as tmp:
        if disk is None:
            os.symlink(folder.resolve(), Path(tmp) / root)
        else:
            for path, target in where.items():
                link = Path(tmp, root, path)
                link.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target.resolve(), link)
        try:
            lt.set_piece_hashes(ct, tmp)
        except RuntimeError as exc:
            raise InputError(f"{folder}: cannot read the files to hash them ({exc})") from exc
    d = ct.generate()
    d.pop(b"creation date", None)  # reproducible bytes: the same manifest and files, the same torrent
    data = bytes(lt.bencode(d))
    return load_torrent(data, origin=f"torrent of {manifest.name}")


def derived_torrent(manifest: Manifest) -> Torrent | None:
    """The torrent of the manifest's own swarm, from the manifest alone (see the module docstring).

    None when the manifest cannot have one: a file with neither piece hashes nor a whole-file
    SHA-256, or nothing but empty files. A file with a whole-file SHA-256 only (a registry pull:
    ``hf://``, ``ollama://``) gets :func:`placeholder_hash` pieces. The same manifest gives the same
    bytes on every machine.
    """
    key = manifest.sha256
    with _DERIVED_LOCK:
        if key in _DERIVED:
            return _DERIVED[key]
    t = _derive(manifest)
    with _DERIVED_LOCK:
        if len(_DERIVED) >= 8:
            _DERIVED.pop(next(iter(_DERIVED)))
        _DERIVED[key] = t
    return t


_DERIVED: dict[str, Torrent | None] = {}  # the last few manifests' derived torrents, by manifest SHA-256
_DERIVED_LOCK = threading.Lock()


def _derive(manifest: Manifest) -> Torrent | None:
    if manifest.total_size == 0 or any(
        not _HEX64.fullmatch(f.sha256) for f in manifest.files if f.size and not (f.pieces and f.pieces[0])
    ):
        return None
    real = manifest.has_sha1  # the v1 piece hashes: a real torrent (see the module docstring)
    root = torrent_root_name(manifest.name)
    entries = [lt.create_file_entry(f"{root}/{f.path}", f.size) for f in manifest.files]
    flags = (
        lt.create_torrent.canonical_files_no_tail_padding
        | lt.create_torrent.v1_only
        | lt.create_torrent.canonical_files
    )
    ct = lt.create_torrent(entries, manifest.piece_size, flags)
    if ct.piece_length() != manifest.piece_size:  # pragma: no cover - libtorrent honours a valid size
        return None
    # canonical_files sorts the files by path; map each torrent piece to its manifest piece.
    layout = ct.files()
    by_path = {f.path: k for k, f in enumerate(manifest.files)}
    ps = manifest.piece_size
    for k in range(layout.num_files()):
        if layout.file_flags(k) & lt.file_storage.flag_pad_file or not layout.file_size(k):
            continue
        path = str(layout.file_path(k)).replace(os.sep, "/")[len(root) + 1 :]
        fi = by_path[path]
        first = int(layout.file_offset(k)) // ps
        f = manifest.files[fi]
        if real:
            assert f.sha1 is not None
            for j in range(len(f.pieces)):
                ct.set_hash(first + j, f.sha1[20 * j : 20 * j + 20])
            continue
        for j, mi in enumerate(manifest.file_piece_ranges[fi]):
            sha = manifest.pieces[mi].sha256
            ct.set_hash(first + j, bytes.fromhex(sha)[:20] if sha else placeholder_hash(f.sha256, j))
    ct.set_creator(CREATOR)
    d = ct.generate()
    d.pop(b"creation date", None)
    if not real:
        d[b"info"][DERIVED_KEY] = manifest.sha256.encode("ascii")
    return load_torrent(bytes(lt.bencode(d)), origin=f"derived torrent of {manifest.name}")


def own_swarm(manifest: Manifest, torrent: Torrent) -> bool:
    """Whether ``torrent`` is the manifest's own swarm's (:func:`derived_torrent`): with placeholder
    piece hashes (it names the manifest), or the real one of a manifest with ``sha1``."""
    if torrent.derived is not None:
        return torrent.derived == manifest.sha256
    if not manifest.has_sha1 or torrent.btih is None or torrent.btmh is not None:
        return False
    return torrent.btih == derived_info_hash(manifest)


def placeholder_hash(file_sha256: str, index: int) -> bytes:
    """The 20-byte piece "hash" of piece ``index`` of a file without piece hashes in a derived
    torrent: SHA-256 of a label, the file's SHA-256 and the index, cut to 20 bytes.

    It checks nothing (nobody can compute a piece's real hash from a whole-file digest, and the
    session runs with libtorrent's checks off); it only makes every machine compute the same
    info-hash, and one that differs per file and per piece, from the manifest alone.
    """
    raw = b"dsmirror-unhashed-piece\0" + bytes.fromhex(file_sha256) + index.to_bytes(8, "big")
    return hashlib.sha256(raw).digest()[:20]


def derived_info_hash(manifest: Manifest) -> str | None:
    """The v1 info-hash of :func:`derived_torrent` (what LSD announces), or None."""
    t = derived_torrent(manifest)
    return t.btih if t is not None else None


def with_torrent_hashes(manifest: Manifest, torrents: Iterable[Torrent]) -> Manifest:
    """``manifest`` recording the info-hashes of ``torrents`` (merged with what it records already)."""
    fields: dict[str, str] = dict(manifest.torrent or {})
    for t in torrents:
        fields.update(t.manifest_fields())
    return manifest.with_torrent(fields or None)


# -- checking ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PieceMap:
    """Where each manifest piece is in a torrent.

    ``to_torrent[i]`` is the torrent piece of manifest piece *i*, or -1 when the torrent does not
    hold that file (a torrent may cover part of a model). ``padded[i]`` is the length of that
    torrent piece: the manifest piece plus the zero bytes of the pad file that follows it.
    """

    to_torrent: tuple[int, ...]
    padded: tuple[int, ...]
    missing_files: frozenset[int]
    pinned: bool  # the manifest records this torrent's info-hash

    @cached_property
    def from_torrent(self) -> dict[int, int]:
        return {t: i for i, t in enumerate(self.to_torrent) if t >= 0}

    def torrent_piece(self, index: int) -> int | None:
        t = self.to_torrent[index]
        return t if t >= 0 else None


def _pinned(manifest: Manifest, torrent: Torrent) -> bool | None:
    """True/False if the manifest records info-hashes (matching or not), None if it records none."""
    if torrent.derived is not None:
        return torrent.derived == manifest.sha256  # the manifest's own swarm names the manifest
    if own_swarm(manifest, torrent):
        return True  # made from the manifest's own piece hashes
    rec = manifest.torrent or {}
    if not rec:
        return None
    mine = {torrent.btih, torrent.btmh} - {None}
    return bool(mine & set(rec.values()))


def check_torrent(manifest: Manifest, torrent: Torrent, *, require_all_files: bool = False) -> PieceMap:
    """Check that ``torrent`` holds the manifest's pieces, file-aligned; return the piece map.

    Raises IntegrityError when the manifest records info-hashes and this torrent has none of them,
    or when a file the two share differs in size, or when the torrent's pieces are not the
    manifest's (another piece size, or a piece that spans two files). Files of the manifest that the
    torrent lacks are listed in ``missing_files`` (an error with ``require_all_files``).
    """
    pin = _pinned(manifest, torrent)
    if pin is False:
        raise IntegrityError(
            f"torrent {torrent.btih or torrent.btmh} is not the one manifest {manifest.name} records "
            f"({', '.join(f'{k} {v}' for k, v in sorted((manifest.torrent or {}).items()))})",
            hint="use the torrent made from this manifest (dsmirror torrent create)",
        )
    if torrent.piece_size != manifest.piece_size:
        raise IntegrityError(
            f"the torrent has {torrent.piece_size}-byte pieces, the manifest {manifest.piece_size}-byte ones",
            hint="make the torrent from the manifest: dsmirror torrent create MANIFEST DIR",
        )
    ps = manifest.piece_size
    by_path = {f.path: (k, f) for k, f in enumerate(torrent.files) if not f.pad}
    to_torrent = [-1] * manifest.num_pieces
    padded = [0] * manifest.num_pieces
    missing: set[int] = set()
    for fi, f in enumerate(manifest.files):
        hit = by_path.get(f.path)
        if hit is None:
            missing.add(fi)
            continue
        k, tf = hit
        if tf.size != f.size:
            raise IntegrityError(f"{f.path}: {tf.size} bytes in the torrent, {f.size} in the manifest")
        if f.size == 0:
            continue
        if tf.offset % ps:
            raise IntegrityError(
                f"{f.path} does not start on a piece boundary in the torrent (no pad files?)",
                hint="make a file-aligned torrent with dsmirror torrent create",
            )
        # The last piece of the file may only be followed by pad bytes (or the end of the torrent).
        end = tf.offset + tf.size
        piece_end = min(-(-end // ps) * ps, torrent.total_size)
        pos = end
        for nxt in torrent.files[k + 1 :]:
            if pos >= piece_end:
                break
            if nxt.size and not nxt.pad:
                raise IntegrityError(
                    f"the last piece of {f.path} also holds bytes of {nxt.path} in the torrent",
                    hint="make a file-aligned torrent with dsmirror torrent create",
                )
            pos = nxt.offset + nxt.size
        first = tf.offset // ps
        for j, mi in enumerate(manifest.file_piece_ranges[fi]):
            t = first + j
            to_torrent[mi] = t
            padded[mi] = torrent.piece_length(t)
    if missing and require_all_files:
        names = ", ".join(manifest.files[i].path for i in sorted(missing)[:3])
        raise IntegrityError(f"the torrent lacks {len(missing)} files of the manifest ({names})")
    if len(missing) == len(manifest.files):
        raise IntegrityError(
            "the torrent holds none of the manifest's files", hint="check the torrent and manifest"
        )
    return PieceMap(tuple(to_torrent), tuple(padded), frozenset(missing), bool(pin))


def magnet_for(manifest: Manifest, *, name: str | None = None, peers: Sequence[str] = ()) -> str | None:
    """A magnet link from the info-hashes a manifest records (hybrid preferred), or None."""
    rec: Mapping[str, str] = manifest.torrent or {}
    parts = []
    if rec.get("btih"):
        parts.append(f"xt=urn:btih:{rec['btih']}")
    if rec.get("btmh"):
        parts.append(f"xt=urn:btmh:1220{rec['btmh']}")
    if not parts and rec.get("btih_v1only"):
        parts.append(f"xt=urn:btih:{rec['btih_v1only']}")
    if not parts:
        return None
    parts.append(f"dn={quote(name or torrent_root_name(manifest.name))}")
    parts += [f"x.pe={p}" for p in peers]
    return "magnet:?" + "&".join(parts)
