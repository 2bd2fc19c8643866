"""Incremental updates: fill a pull's store from bytes already on this machine, before fetching.

A new revision of a model shares most of its bytes with the old one: every unchanged file, and in a
changed file every piece the change did not touch. So before the engine fetches anything,
``reuse_local`` looks for each missing piece on local disk and copies it into the store. A local
copy is only ever a *candidate*: its bytes are hashed against the manifest before the piece counts,
exactly like bytes from a mirror, so a stale record or a file edited in place costs a wasted read,
never a wrong byte.

Where candidates come from, in the order they are tried for a piece:

1. *Recorded manifests*. After a pull or an import, the manifest of what was installed is kept next
   to the store's installed record (format below); together with the store's learned
   ``<mid>.pieces.json`` they map piece SHA-256 -> (file, offset) over every model installed under
   a known root. Only pieces whose digest the new manifest lists are ever read, so an unrelated
   19 GB model next door costs nothing.
2. *Same content*. A file with the same whole-file SHA-256 — in a recorded manifest under another
   path, an Ollama blob ``blobs/sha256-<hex>``, a Hugging Face cache blob ``blobs/<sha256>`` —
   holds the same pieces at the same offsets.
3. *Same path*. The file at the same relative path in the destination or a ``--reuse-from`` folder
   (an old revision without a recorded manifest, a user's copy) is tried at the same offsets; not
   under the other roots, where the same name (``config.json``) is usually another model. Files
   whose pieces a recorded manifest describes are not read again this way, and a file that missed
   8 pieces in a row without a hit is given up.

Known roots: the destination itself, its sibling folders that hold ``.dsmirror/installed`` (another
revision pulled next to it), folders given with ``--reuse-from`` (which may also be an Ollama store
or a Hugging Face cache, e.g. a USB copy), and the Hugging Face cache and Ollama store of
``Settings``.

A file without published piece hashes can only be reused whole (2 and 3): it is read once, its
whole-file SHA-256 computed while its pieces are copied, and the pieces count only if it matches.

Added to the store's layout (see ``_store``)::

    DEST/.dsmirror/installed/<mid>.manifest.json   canonical bytes of manifest <mid>, written once
                                                   the model is installed; its SHA-256 is <mid>

``plan_dry_run`` answers ``pull --dry-run`` with the same search, reading and hashing candidates but
writing nothing: per file, the bytes already present, the bytes to reuse and from where, and the
bytes to fetch and from which sources.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import resource
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsmirror._core.errors import DsmirrorError
from dsmirror._core.events import Event
from dsmirror._core.settings import Settings
from dsmirror._formats import hfcache
from dsmirror._formats.installs import read_records
from dsmirror._formats.manifest import FileEntry, Manifest, Piece, parse_manifest
from dsmirror._formats.private import PrivateArea
from dsmirror._journal.store import Store

__all__ = [
    "FileDryRun",
    "LocalIndex",
    "LocalReuse",
    "PullDryRun",
    "RecordedModel",
    "blob_dirs",
    "plan_dry_run",
    "record_manifest",
    "recorded_models",
    "reuse_local",
    "reuse_roots",
    "same_path_candidates",
]

_CHUNK = 1 << 20
#: Pieces up to this size are read into memory and verified before they are written to the store.
_BUFFER_LIMIT = 64 << 20
#: Sibling folders looked at for installed models (a folder of many models stays cheap).
_MAX_SIBLINGS = 512
#: A same-name file that missed this many pieces in a row, without a hit, is not read further.
_GIVE_UP = 8
#: Candidate files kept open at once while reading (fewer under a low descriptor limit).
_MAX_OPEN = 128
_MID = re.compile(r"^([0-9a-f]{64})\.(manifest|pieces)\.json$")


# -- events --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalReuse(Event):
    """Pieces copied from local files into the store before fetching (yielded before PullStarted)."""

    reused_bytes: int
    pieces: int
    by_origin: dict[str, int]  # origin (e.g. "r1-7b in /models/r1-7b") -> bytes
    checked_bytes: int  # bytes read from candidates, matching or not
    seconds: float


@dataclass(frozen=True)
class FileDryRun:
    path: str
    size: int
    present_bytes: int  # installed already, or verified by an interrupted pull (resumed)
    reuse_bytes: int
    fetch_bytes: int
    reuse_from: dict[str, int]  # origin -> bytes
    fetch_from: tuple[str, ...]  # source names that have this file


@dataclass(frozen=True)
class PullDryRun(Event):
    """What ``pull --dry-run`` would do; nothing was fetched or written."""

    name: str
    manifest_sha256: str
    dest: str
    total_bytes: int
    present_bytes: int
    reuse_bytes: int
    fetch_bytes: int
    files: tuple[FileDryRun, ...]
    sources: tuple[dict[str, str], ...]  # name, kind, host, region of every source


# -- installed models ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedModel:
    """A manifest recorded under ``root/.dsmirror/installed`` and the store's record of its files."""

    root: Path
    manifest: Manifest
    manifest_sha256: str  # the id it was installed under (a learned manifest hashes differently)
    record: Mapping[str, Sequence[int]]  # path -> [size, mtime_ns, inode] at install time

    def present(self) -> bool:
        """Every file is there with its size (its content is checked when it is read)."""
        for f in self.manifest.files:
            try:
                st = (self.root / f.path).stat()
            except OSError:
                return False
            if st.st_size != f.size:
                return False
        return True

    def replaced(self) -> bool:
        """Some file is no longer the one the store installed (an update replaced it, or an edit).

        A file without a record entry says nothing: the store records only the files it renamed
        into place, not those it found already there and verified.
        """
        for f in self.manifest.files:
            want = self.record.get(f.path)
            if want is None:
                continue
            try:
                st = (self.root / f.path).lstat()
            except OSError:
                return True
            if list(want) != [st.st_size, st.st_mtime_ns, st.st_ino]:
                return True
        return False


def recorded_models(root: Path) -> list[RecordedModel]:
    """Models installed under ``root`` whose manifest is recorded (learned piece hashes preferred)."""
    folder = PrivateArea(root).installed_dir
    found: dict[str, tuple[str, Path]] = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        m = _MID.match(name)
        if m and (m.group(2) == "pieces" or m.group(1) not in found):
            found[m.group(1)] = (m.group(2), folder / name)
    out: list[RecordedModel] = []
    for mid, (kind, path) in sorted(found.items()):
        record: dict[str, list[int]] = {}
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(PrivateArea(root).install_record(mid).read_bytes())
            if isinstance(raw, dict):
                record = {k: v for k, v in raw.items() if isinstance(v, list)}
        try:
            data = path.read_bytes()
            # A recorded manifest is named by its own digest; a learned one by the manifest it completes.
            manifest = parse_manifest(data, expected_sha256=mid if kind == "manifest" else None)
        except (OSError, DsmirrorError):
            continue
        out.append(RecordedModel(root, manifest, mid, record))
    return out


def record_manifest(dest: Path, manifest: Manifest) -> None:
    """Keep the manifest of an installed model beside its record, for reuse and ``export``."""
    path = PrivateArea(dest).installed_manifest(manifest.sha256)
    if not path.exists():
        with contextlib.suppress(DsmirrorError):  # only an optimisation for later pulls
            manifest.write(path)


def reuse_roots(dest: Path, extra: Iterable[Path] = (), settings: Settings | None = None) -> list[Path]:
    """Where installed models may hold pieces of what is pulled into ``dest``.

    The destination, its sibling folders with installed models, ``extra`` (``--reuse-from``), and
    with ``settings`` every install dsmirror knows of: the Ollama store, the Hugging Face cache's
    repo folders and the plain folders recorded under ``<state dir>/installs`` (see ``_install``).
    """
    roots = [dest]
    parent = dest.absolute().parent
    with contextlib.suppress(OSError), os.scandir(parent) as it:
        for n, entry in enumerate(it):
            if n >= _MAX_SIBLINGS:
                break
            if entry.is_dir(follow_symlinks=False) and entry.name != dest.name:
                p = Path(entry.path)
                if PrivateArea(p).installed_dir.is_dir():
                    roots.append(p)
    roots.extend(extra)
    if settings is not None:
        roots.append(settings.ollama_models)
        roots.extend(blob_dirs(settings.hf_cache, repos_only=True))
        roots.extend(_recorded_dir_installs(settings))
    out: list[Path] = []
    seen: set[str] = set()
    for r in roots:
        key = os.path.realpath(r)
        if key not in seen and (r == dest or r.is_dir()):
            seen.add(key)
            out.append(r)
    return out


def _recorded_dir_installs(settings: Settings) -> list[Path]:
    """Folders of plain installs (their records: ``dsmirror._formats.installs``)."""
    records = itertools.islice(read_records(settings.state_dir), _MAX_SIBLINGS)
    return [Path(doc["dest"]) for _, doc in records if isinstance(doc.get("dest"), str)]


# -- the index of local candidates ---------------------------------------------------------------
@dataclass(frozen=True)
class _Loc:
    path: Path
    offset: int
    origin: str
    #: ``os.path.realpath(path)``, resolved once per file: per piece it was most of a dry run's
    #: time (an lstat per path component, several times per piece)
    real: str

    @classmethod
    def of(cls, path: Path, offset: int, origin: str) -> _Loc:
        return cls(path, offset, origin, os.path.realpath(path))

    def at(self, offset: int) -> _Loc:
        """The same file at another offset."""
        return _Loc(self.path, offset, self.origin, self.real)


def _regular_size(path: Path) -> int | None:
    """Size of a regular file (symlinks followed: HF snapshots link into blobs), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _describe(root: Path, dest: Path) -> str:
    return "this folder" if os.path.realpath(root) == os.path.realpath(dest) else str(root)


@dataclass
class LocalIndex:
    """Where the pieces and files a manifest wants may be found on this machine (see module doc)."""

    manifest: Manifest
    dest: Path
    roots: list[Path]
    pieces: dict[str, list[_Loc]] = field(default_factory=dict)
    files: dict[str, list[_Loc]] = field(default_factory=dict)  # whole-file sha256 -> files
    described: set[str] = field(default_factory=set)  # realpaths whose pieces a manifest lists
    exclude: list[str] = field(default_factory=list)  # realpath prefixes never read (our partial area)
    same_path: list[Path] = field(default_factory=list)  # roots whose same-path files are tried
    _tally: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        manifest: Manifest,
        dest: Path,
        roots: Sequence[Path],
        settings: Settings | None = None,
        *,
        same_path: Sequence[Path] | None = None,
    ) -> LocalIndex:
        """Index ``roots``; files at the same path are tried under ``same_path`` (default: dest).

        Same-path candidates are only taken from folders that hold this model's history (the
        destination, ``--reuse-from``): under the other roots the same name (``config.json``,
        ``model-00001-of-00004.safetensors``) is usually another model.
        """
        idx = cls(manifest, dest, list(roots), same_path=list(same_path or [dest]))
        idx.exclude.append(os.path.realpath(PrivateArea(dest).partial(manifest.sha256)) + os.sep)
        # Made when a recorded model lists piece hashes: 700k strings are ~110 MB, and a first pull
        # (nothing recorded) needs none of them.
        want_pieces: set[str] | None = None
        want_files = {f.sha256 for f in manifest.files if f.size and f.sha256}
        for root in roots:
            for im in recorded_models(root):
                origin = f"{im.manifest.name} in {_describe(root, dest)}"
                ps = im.manifest.piece_size
                for f in im.manifest.files:
                    path = root / f.path
                    if not f.size or _regular_size(path) != f.size:
                        continue
                    real = os.path.realpath(path)
                    if f.sha256 in want_files:
                        idx.files.setdefault(f.sha256, []).append(_Loc(path, 0, origin, real))
                    if f.pieces and f.pieces[0]:
                        idx.described.add(real)
                        if want_pieces is None:
                            want_pieces = {
                                d for w in manifest.files if w.pieces and w.pieces[0] for d in w.pieces
                            }
                        for k, d in enumerate(f.pieces):
                            if d in want_pieces:
                                idx.pieces.setdefault(d, []).append(_Loc(path, k * ps, origin, real))
        stores: list[tuple[Path, str]] = [(r, _describe(r, dest)) for r in roots]
        if settings is not None:
            stores += [(settings.ollama_models, "the Ollama store"), (settings.hf_cache, "the HF cache")]
        blobs = [(folder, origin) for base, origin in stores for folder in blob_dirs(base)]
        for f in manifest.files:
            if not f.size or not f.sha256:  # blobs are named by whole-file digest
                continue
            for folder, origin in blobs:
                # Ollama names a blob sha256-<hex>; the HF cache names an LFS blob by its sha256.
                for c in (folder / f"sha256-{f.sha256}", folder / f.sha256):
                    if _regular_size(c) == f.size:
                        idx.files.setdefault(f.sha256, []).append(_Loc.of(c, 0, origin))
        return idx

    def _usable(self, real: str) -> bool:
        """May the file whose realpath is ``real`` be read?"""
        return not any(real.startswith(x) for x in self.exclude)

    def same_file_candidates(self, f: FileEntry) -> list[_Loc]:
        """Files that may hold ``f`` at the same offsets: same content first, then same path."""
        out = [loc for loc in self.files.get(f.sha256, []) if self._usable(loc.real)]
        for root in self.same_path:
            for path in same_path_candidates(root, f.path):
                real = os.path.realpath(path)
                if real in self.described or not self._usable(real) or _regular_size(path) is None:
                    continue
                out.append(_Loc(path, 0, _describe(root, self.dest), real))
        seen: set[str] = set()
        unique = []
        for loc in out:
            if loc.real not in seen:
                seen.add(loc.real)
                unique.append(loc)
        return unique

    def find(self, piece: Piece, same_file: Sequence[_Loc], reader: _Reader) -> _Loc | None:
        """The first candidate that holds ``piece`` (read and hashed; written if the reader writes).

        A candidate file that missed ``_GIVE_UP`` pieces in a row without a single hit is not
        read again: it is a different file that happens to have the same name.
        """
        for loc in self.piece_candidates(piece, same_file):
            tally = self._tally.setdefault(loc.real, [0, 0])  # hits, misses
            if tally[0] == 0 and tally[1] >= _GIVE_UP:
                continue
            if reader.piece(piece, loc):
                tally[0] += 1
                return loc
            tally[1] += 1
        return None

    def piece_candidates(self, piece: Piece, same_file: Sequence[_Loc]) -> Iterator[_Loc]:
        seen: set[tuple[str, int]] = set()
        for loc in self.pieces.get(piece.sha256, []):
            key = (loc.real, loc.offset)
            if key not in seen and self._usable(loc.real):
                seen.add(key)
                yield loc
        for loc in same_file:
            key = (loc.real, piece.offset)
            if key not in seen:
                seen.add(key)
                yield loc.at(piece.offset)


def _max_open() -> int:
    """Candidate files a reader keeps open: ``_MAX_OPEN``, or an eighth of a lower soft limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _MAX_OPEN if soft == resource.RLIM_INFINITY else max(8, min(_MAX_OPEN, soft // 8))


def blob_dirs(base: Path, *, repos_only: bool = False) -> list[Path]:
    """Content-addressed folders of an Ollama store or HF repo folder (``blobs/``) and HF cache repos.

    With ``repos_only``: the cache's repo folders (``models--*``) themselves.
    """
    out = [] if repos_only else [base / "blobs"]
    with contextlib.suppress(OSError), os.scandir(base) as it:
        for n, entry in enumerate(it):
            if n >= _MAX_SIBLINGS:
                break
            if entry.name.startswith(hfcache.REPO_PREFIXES) and entry.is_dir(follow_symlinks=False):
                out.append(Path(entry.path) if repos_only else Path(entry.path) / "blobs")
    return [d for d in out if d.is_dir()]


def same_path_candidates(root: Path, rel: str) -> list[Path]:
    """``root/rel``, and ``root/snapshots/*/rel`` when root is a Hugging Face cache repo folder."""
    return [root / rel] + [snap / rel for snap in hfcache.snapshots(root)]


# -- reading candidates --------------------------------------------------------------------------
class _Reader:
    """Reads and hashes candidate bytes; writes them into a store when given one."""

    def __init__(self, store: Store | None) -> None:
        self.store = store
        self.checked = 0
        self._fds: dict[str, int | None] = {}

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()

    def _fd(self, loc: _Loc) -> int | None:
        key = loc.real
        if key not in self._fds:
            if len(self._fds) >= _max_open():
                self.close()
            fd: int | None = None
            with contextlib.suppress(OSError):
                fd = os.open(key, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    fd = None
            self._fds[key] = fd
        return self._fds[key]

    def _read(self, fd: int, n: int, offset: int) -> bytes | None:
        try:
            data = os.pread(fd, n, offset)
        except OSError:
            return None
        self.checked += len(data)
        return data if len(data) == n else None

    def piece(self, piece: Piece, loc: _Loc) -> bool:
        """Whether ``loc`` holds ``piece``; if so and there is a store, its bytes are now written there."""
        fd = self._fd(loc)
        if fd is None:
            return False
        if piece.length <= _BUFFER_LIMIT:
            data = self._read(fd, piece.length, loc.offset)
            if data is None or hashlib.sha256(data).hexdigest() != piece.sha256:
                return False
            if self.store is not None:
                self.store.write(piece, 0, data)
            return True
        # Huge pieces: stream (bounded memory); bytes written before the check are not trusted
        # until mark_verified, and are overwritten by the fetch if the check fails.
        h = hashlib.sha256()
        for pos in range(0, piece.length, _CHUNK):
            chunk = self._read(fd, min(_CHUNK, piece.length - pos), loc.offset + pos)
            if chunk is None:
                return False
            h.update(chunk)
            if self.store is not None:
                self.store.write(piece, pos, chunk)
        return h.hexdigest() == piece.sha256

    def whole_file(self, m: Manifest, fi: int, loc: _Loc) -> list[str] | None:
        """Piece digests if ``loc`` holds file ``fi`` (whole-file SHA-256); its pieces are then written."""
        f = m.files[fi]
        fd = self._fd(loc)
        if fd is None or os.fstat(fd).st_size != f.size:
            return None
        whole = hashlib.sha256()
        digests = []
        for i in m.file_piece_ranges[fi]:
            piece = m.pieces[i]
            h = hashlib.sha256()
            for pos in range(0, piece.length, _CHUNK):
                chunk = self._read(fd, min(_CHUNK, piece.length - pos), piece.offset + pos)
                if chunk is None:
                    return None
                h.update(chunk)
                whole.update(chunk)
                if self.store is not None and not self.store.is_done(i):
                    self.store.write(piece, pos, chunk)
            digests.append(h.hexdigest())
        same = whole.hexdigest() == f.sha256 if f.sha256 else digests == list(f.pieces)
        return digests if same else None


# -- reuse before a pull -------------------------------------------------------------------------
def reuse_local(store: Store, index: LocalIndex) -> Iterator[Event]:
    """Copy every missing piece of ``store`` found (and verified) in ``index``; yield LocalReuse.

    Call after ``Store.open`` and before ``fetch``: the fetch counts what is verified when it
    starts as reused (``PullFinished.reused_bytes``).
    """
    m = store.manifest
    t0 = time.monotonic()
    reader = _Reader(store)
    by_origin: dict[str, int] = {}
    pieces = 0
    whole_files: list[int] = []
    with_hash: dict[int, int] = {}  # file index -> bytes of pieces with a published hash reused
    base = store.verified_bytes
    try:
        for fi, f in enumerate(m.files):
            rng = m.file_piece_ranges[fi]
            if all(store.is_done(i) for i in rng):  # no list of what is missing: there may be millions
                continue
            same = index.same_file_candidates(f)
            if f.pieces and not f.pieces[0]:
                for cand in same:
                    digests = reader.whole_file(m, fi, cand)
                    if digests is None:
                        continue
                    for i, d in zip(rng, digests, strict=True):
                        if store.mark_verified(m.pieces[i], source="local", digest=d):
                            by_origin[cand.origin] = by_origin.get(cand.origin, 0) + m.pieces[i].length
                            pieces += 1
                    whole_files.append(fi)
                    break
                continue
            for i in rng:
                if store.is_done(i):
                    continue
                piece = m.pieces[i]
                loc = index.find(piece, same, reader)
                if loc is not None:
                    store.mark_verified(piece)
                    with_hash[fi] = with_hash.get(fi, 0) + piece.length
                    by_origin[loc.origin] = by_origin.get(loc.origin, 0) + piece.length
                    pieces += 1
        store.commit()
    finally:
        reader.close()
    reused = sum(by_origin.values())
    if whole_files:
        # Pieces without a published hash count as verified once the store's background hasher has
        # matched their file's digest (again); wait for it, so the pull reports them as reused.
        need = sum(m.files[fi].size for fi in whole_files)
        expected = base + need + sum(with_hash.values())
        deadline = time.monotonic() + 10 + need / (200 << 20)
        while store.verified_bytes < expected and time.monotonic() < deadline:
            time.sleep(0.01)
    if pieces or reader.checked:
        yield LocalReuse(reused, pieces, by_origin, reader.checked, time.monotonic() - t0)


# -- dry run -------------------------------------------------------------------------------------
def plan_dry_run(
    manifest: Manifest,
    dest: Path,
    sources: Sequence[Any],
    index: LocalIndex | None,
) -> PullDryRun:
    """What a pull would take from where, reading and hashing local candidates but writing nothing."""
    reader = _Reader(None)
    present_paths = _installed_paths(dest, manifest)
    partial = PrivateArea(dest).partial(manifest.sha256) / "data"
    rows: list[FileDryRun] = []
    try:
        for fi, f in enumerate(manifest.files):
            rng = manifest.file_piece_ranges[fi]
            fetch_from = tuple(s.name for s in sources if not hasattr(s, "has_file") or s.has_file(f))
            if f.path in present_paths or not f.size or _intact(reader, manifest, fi, dest):
                rows.append(FileDryRun(f.path, f.size, f.size, 0, 0, {}, fetch_from))
                continue
            resume = _Loc.of(partial / f.path, 0, "resume")
            same = [resume, *(index.same_file_candidates(f) if index else [])]
            reuse: dict[str, int] = {}
            if f.pieces and not f.pieces[0]:
                for loc in same:
                    if reader.whole_file(manifest, fi, loc) is not None:
                        reuse[loc.origin] = f.size
                        break
            else:
                for i in rng:
                    piece = manifest.pieces[i]
                    if index is not None:
                        found = index.find(piece, same, reader)
                    else:
                        loc = resume.at(piece.offset)
                        found = loc if reader.piece(piece, loc) else None
                    if found is not None:
                        reuse[found.origin] = reuse.get(found.origin, 0) + piece.length
            present = reuse.pop("resume", 0)
            got = present + sum(reuse.values())
            rows.append(FileDryRun(f.path, f.size, present, got - present, f.size - got, reuse, fetch_from))
    finally:
        reader.close()
    return PullDryRun(
        manifest.name,
        manifest.sha256,
        str(dest),
        manifest.total_size,
        sum(r.present_bytes for r in rows),
        sum(r.reuse_bytes for r in rows),
        sum(r.fetch_bytes for r in rows),
        tuple(rows),
        tuple(
            {"name": s.name, "kind": s.info.kind, "host": s.info.host, "region": s.info.region}
            for s in sources
        ),
    )


def _intact(reader: _Reader, m: Manifest, fi: int, dest: Path) -> bool:
    """The file is already at its final path, unrecorded but matching (the store will keep it)."""
    f = m.files[fi]
    path = dest / f.path
    if path.is_symlink() or _regular_size(path) != f.size:
        return False
    digests = reader.whole_file(m, fi, _Loc.of(path, 0, ""))
    return digests is not None and (not f.pieces or not f.pieces[0] or tuple(digests) == f.pieces)


def _installed_paths(dest: Path, manifest: Manifest) -> set[str]:
    """Files the store would find installed: recorded unchanged, as ``Store`` checks it."""
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(PrivateArea(dest).install_record(manifest.sha256).read_bytes())
    out = set()
    for f in manifest.files:
        with contextlib.suppress(OSError):
            st = (dest / f.path).lstat()
            if stat.S_ISREG(st.st_mode) and record.get(f.path) == [st.st_size, st.st_mtime_ns, st.st_ino]:
                out.add(f.path)
    return out
