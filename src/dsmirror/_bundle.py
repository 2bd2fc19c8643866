"""Offline bundles: one plain tar with a manifest and the files it describes, verified on import.

Bundle format (version 1): a POSIX (pax) tar, uncompressed — model weights do not compress, and a
plain tar can be written and read as a stream, so ``dsmirror export ... -o - | ssh host dsmirror
import -`` works and no temporary copy is needed on either side::

    manifest.json           member 0: the manifest's canonical bytes; its SHA-256 is the bundle's
                            identity (what ``--manifest-sha256`` pins)
    sidecar/<name>          optional documents an install needs besides the files, each pinned by
                            the manifest: ``sidecar/ollama-manifest``, the Ollama manifest bytes,
                            whose SHA-256 is ``meta.manifest_sha256`` (``--format ollama``)
    files/<path>            every file of the manifest, in manifest order, exactly ``size`` bytes

Every member is a regular file with mode 0644, owner 0 and mtime 0, so exporting the same model
twice gives the same bytes. Long names and files over 8 GiB use pax extended headers. An importer
never uses a member's name as a path: it compares it with the name the manifest dictates at that
position and writes through the store, so a crafted bundle cannot write outside the destination,
create links, or slip in a file the manifest does not list.

Importing reads the manifest first (and checks it against the pin, before any file data is read),
then streams each file through a ``Store``: every piece is hashed as it arrives and written to the
partial area; files are renamed into place only when every piece and whole-file digest matched, so
a truncated or tampered bundle leaves nothing under a final name (``ImportRejected`` names the file
and the piece), and importing the same bundle again resumes. A folder (a plain copy of a model, a
USB copy of another machine's Ollama store or Hugging Face cache) is imported the same way, file
by file, with a manifest given or recorded in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dsmirror._core.errors import (
    DsmirrorError,
    ImportRejected,
    IntegrityError,
    ManifestError,
    StorageError,
    UsageError,
    VerifyFailed,
)
from dsmirror._core.events import Event, Progress, PullFinished, PullStarted
from dsmirror._core.fsutil import fsync_dir, storage_errors
from dsmirror._core.settings import Settings
from dsmirror._fetch.reuse import blob_dirs, record_manifest, recorded_models, same_path_candidates
from dsmirror._formats.manifest import FileEntry, Manifest, hash_file_pieces, parse_manifest
from dsmirror._journal.store import Store

__all__ = [
    "BundleOpened",
    "ExportSource",
    "catalog_pins",
    "export_source",
    "folder_manifest",
    "import_bundle",
    "import_folder",
    "write_bundle",
    "write_bundle_file",
]

MANIFEST_MEMBER = "manifest.json"
FILES_PREFIX = "files/"
SIDECAR_PREFIX = "sidecar/"
OLLAMA_SIDECAR = "ollama-manifest"
_MAX_MANIFEST = 1 << 30
_MAX_SIDECAR = 16 << 20
_MAX_SIDECARS = 16
_CHUNK = 1 << 20
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


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


# -- export ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSource:
    """A model to export: its manifest, where each file is on disk, and sidecar documents."""

    manifest: Manifest
    files: Mapping[str, Path]  # manifest path -> local file
    sidecars: Mapping[str, bytes] = field(default_factory=dict)
    description: str = ""


def export_source(
    ref: str,
    *,
    from_dir: Path | None = None,
    manifest_sha256: str | None = None,
    settings: Settings | None = None,
) -> ExportSource:
    """What ``dsmirror export REF`` exports.

    - a manifest file with ``from_dir``: the files under that folder;
    - a folder dsmirror installed into (its manifest is recorded there); with several models
      installed in it, ``manifest_sha256`` picks one;
    - ``ollama://[host/][ns/]name:tag``: a model of the Ollama store (``from_dir`` or the configured one);
    - ``hf://org/name[@revision]``: a snapshot of the Hugging Face cache (``from_dir`` or the configured one).
    """
    if ref.startswith("ollama://"):
        store = from_dir or (settings.ollama_models if settings else None)
        if store is None:
            raise UsageError("give the Ollama store with --from DIR")
        return _ollama_source(store, ref)
    if ref.startswith("hf://"):
        cache = from_dir or (settings.hf_cache if settings else None)
        if cache is None:
            raise UsageError("give the Hugging Face cache with --from DIR")
        return _hf_source(cache, ref)
    path = Path(ref)
    if path.is_dir():
        if from_dir is not None:
            raise UsageError("--from goes with a manifest file, not with an installed folder")
        return _installed_source(path, manifest_sha256)
    if not path.is_file():
        raise UsageError(
            f"{ref} is neither a manifest file nor a folder",
            hint="give MANIFEST --from DIR, an installed folder, ollama://name:tag or hf://org/name",
        )
    from dsmirror._formats.manifest import load_manifest

    manifest = load_manifest(path, expected_sha256=manifest_sha256)
    if from_dir is None:
        raise UsageError(
            f"which folder holds the files of {ref}?", hint="add --from DIR (the folder with the model files)"
        )
    return ExportSource(manifest, {f.path: from_dir / f.path for f in manifest.files}, {}, str(from_dir))


def _installed_source(folder: Path, pin: str | None) -> ExportSource:
    models = recorded_models(folder)
    if pin:
        models = [m for m in models if pin.lower() in (m.manifest_sha256, m.manifest.sha256)]
    if not models:
        raise UsageError(
            f"{folder} holds no model installed by dsmirror with a recorded manifest"
            + (f" of SHA-256 {pin}" if pin else ""),
            hint="export it from its manifest: dsmirror export MANIFEST --from DIR -o FILE",
        )
    # An older revision updated in place keeps its record, but some of its files were replaced;
    # the model none of whose files was replaced is the current one (pieces are checked anyway).
    present = [m for m in models if m.present()] or models
    current = [m for m in present if not m.replaced()] or present
    if len(current) > 1:
        ids = ", ".join(f"{m.manifest.name} ({m.manifest_sha256[:12]})" for m in current)
        raise UsageError(f"{folder} holds several models: {ids}", hint="choose one with --manifest-sha256")
    m = current[0].manifest
    side: dict[str, bytes] = {}
    if m.meta.get("source") == "ollama":  # pulled in the Ollama layout: take its manifest along
        raw = _ollama_manifest_in(folder, m)
        if raw is not None:
            side[OLLAMA_SIDECAR] = raw
    return ExportSource(m, {f.path: folder / f.path for f in m.files}, side, str(folder))


def _ollama_source(store: Path, ref: str) -> ExportSource:
    from dsmirror._formats.ollama import parse_ollama_manifest, parse_ollama_name, store_blob

    name = parse_ollama_name(ref)
    mpath = store / name.manifest_path
    try:
        raw = mpath.read_bytes()
        blobs = parse_ollama_manifest(raw)
    except OSError as exc:
        raise UsageError(
            f"{name.short} is not in the Ollama store {store} ({exc.strerror})",
            hint="check the name with `ollama list`, or give the store with --from DIR",
        ) from exc
    except ValueError as exc:
        raise ManifestError(f"not an Ollama manifest: {exc}", path=str(mpath)) from exc
    raw_sha = hashlib.sha256(raw).hexdigest()
    model = f"{name.host}/{name.namespace}/{name.name}:{name.tag}"
    for rec in recorded_models(store):
        meta = rec.manifest.meta
        if meta.get("model") == model and meta.get("manifest_sha256") == raw_sha:
            files = {f.path: store / f.path for f in rec.manifest.files}
            return ExportSource(rec.manifest, files, {OLLAMA_SIDECAR: raw}, f"{name.short} in {store}")
    # Installed by Ollama itself: hash the blobs (each must match its name) into a manifest.
    from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE

    entries = []
    paths: dict[str, Path] = {}
    for b in blobs:
        local = store / store_blob(store, b.sha256)
        try:
            size, digest, pieces = hash_file_pieces(local, DEFAULT_PIECE_SIZE)
        except OSError as exc:
            raise StorageError(f"cannot read {local}: {exc.strerror}", path=str(local)) from exc
        if digest != b.sha256 or size != b.size:
            raise VerifyFailed(
                f"{local} does not match its name (the blob is damaged)", bad_pieces=[], bad_files=[b.path]
            )
        entries.append(FileEntry(b.path, size, digest, tuple(pieces)))
        paths[b.path] = local
    meta = {"source": "ollama", "model": model, "manifest_sha256": raw_sha}
    manifest = parse_manifest(
        Manifest(name.short, DEFAULT_PIECE_SIZE, tuple(entries), None, meta).canonical_bytes
    )
    return ExportSource(manifest, paths, {OLLAMA_SIDECAR: raw}, f"{name.short} in {store}")


def _hf_source(cache: Path, ref: str) -> ExportSource:
    from dsmirror._formats import hfcache
    from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE
    from dsmirror._resolve.ref import parse_ref

    r = parse_ref(ref)
    assert r.repo is not None
    repo_dir = hfcache.repo_folder(cache, r.repo)
    rev = r.revision or "main"
    commit = hfcache.resolve_revision(repo_dir, rev)
    if commit is None:
        raise UsageError(
            f"{r.repo}@{rev} is not in the Hugging Face cache {cache}",
            hint="check with `dsmirror ls`, or give the cache with --from DIR",
        )
    snap = hfcache.snapshot_dir(repo_dir, commit)
    if not snap.is_dir():
        raise UsageError(f"{r.repo} has no snapshot {commit} in {cache}")
    entries = []
    files: dict[str, Path] = {}
    git_ids: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(snap):
        dirnames.sort()
        for fn in sorted(filenames):
            link = Path(dirpath) / fn
            rel = link.relative_to(snap).as_posix()
            etag = os.path.basename(os.readlink(link)) if link.is_symlink() else ""
            size, digest, pieces = hash_file_pieces(link, DEFAULT_PIECE_SIZE)
            if len(etag) == 64 and etag != digest:
                raise VerifyFailed(
                    f"{link} does not match its blob name {etag}", bad_pieces=[], bad_files=[rel]
                )
            if _HEX40.match(etag):
                git_ids[rel] = etag
            entries.append(FileEntry(rel, size, digest, tuple(pieces)))
            files[rel] = link
    meta: dict[str, Any] = {"source": "hf", "repo": r.repo, "commit": commit, "git_blob_ids": git_ids}
    if rev != commit:
        meta["revision"] = rev
    name = r.repo.split("/")[-1]
    manifest = parse_manifest(Manifest(name, DEFAULT_PIECE_SIZE, tuple(entries), None, meta).canonical_bytes)
    return ExportSource(manifest, files, {}, f"{r.repo}@{commit[:12]} in {cache}")


class _CheckedReader(io.RawIOBase):
    """Reads one file for the tar writer and checks its pieces against the manifest on the way.

    Exporting a damaged local copy fails (naming the file and piece) instead of producing a bundle
    that every importer would reject.
    """

    def __init__(
        self, fh: IO[bytes], manifest: Manifest, fi: int, local: Path, on_bytes: Callable[[int], None] | None
    ):
        self.fh = fh
        self.m = manifest
        self.fi = fi
        self.local = local
        self.on_bytes = on_bytes
        self.rng = manifest.file_piece_ranges[fi]
        self.k = 0  # piece of the file being read
        self.at = 0  # bytes of it read
        self.h = hashlib.sha256()
        self.whole = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            chunk = self.fh.read(_CHUNK if n < 0 else min(_CHUNK, n - len(out)))
            if not chunk:
                break
            out += chunk
            self._account(memoryview(chunk))
        if self.on_bytes and out:
            self.on_bytes(len(out))
        return bytes(out)

    def _account(self, mv: memoryview) -> None:
        f = self.m.files[self.fi]
        self.whole.update(mv)
        while mv:
            if self.k >= len(self.rng):
                raise StorageError(f"{self.local} grew while being exported", path=str(self.local))
            piece = self.m.pieces[self.rng[self.k]]
            take = min(len(mv), piece.length - self.at)
            self.h.update(mv[:take])
            self.at += take
            mv = mv[take:]
            if self.at == piece.length:
                got = self.h.hexdigest()
                if piece.sha256 and got != piece.sha256:
                    raise VerifyFailed(
                        f"{self.local}: piece {piece.index} of {f.path} (bytes {piece.offset}-"
                        f"{piece.offset + piece.length - 1}) does not match the manifest; not exporting "
                        "a damaged copy",
                        bad_pieces=[piece.index],
                        bad_files=[f.path],
                    )
                self.k += 1
                self.at = 0
                self.h = hashlib.sha256()
                if self.k == len(self.rng) and self.whole.hexdigest() != f.sha256:
                    raise VerifyFailed(
                        f"{self.local} does not match the SHA-256 of {f.path}; not exporting a damaged copy",
                        bad_pieces=[],
                        bad_files=[f.path],
                    )


def _member(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_bundle(src: ExportSource, out: IO[bytes], *, on_bytes: Callable[[int], None] | None = None) -> None:
    """Stream the bundle of ``src`` to ``out`` (see the module docstring for the format)."""
    m = src.manifest
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        data = m.canonical_bytes
        tar.addfile(_member(MANIFEST_MEMBER, len(data)), io.BytesIO(data))
        for name, body in sorted(src.sidecars.items()):
            tar.addfile(_member(SIDECAR_PREFIX + name, len(body)), io.BytesIO(body))
        for fi, f in enumerate(m.files):
            local = src.files[f.path]
            try:
                fh = open(local, "rb")  # noqa: SIM115 - closed below; tarfile reads it
            except FileNotFoundError:
                raise VerifyFailed(
                    f"{local} is missing; cannot export {m.name}", bad_pieces=[], bad_files=[f.path]
                ) from None
            except OSError as exc:
                raise StorageError(f"cannot read {local}: {exc.strerror}", path=str(local)) from exc
            with fh:
                size = os.fstat(fh.fileno()).st_size
                if size != f.size:
                    raise VerifyFailed(
                        f"{local} is {size} bytes, the manifest says {f.size}; not exporting a damaged copy",
                        bad_pieces=[],
                        bad_files=[f.path],
                    )
                reader = _CheckedReader(fh, m, fi, local, on_bytes)
                tar.addfile(_member(FILES_PREFIX + f.path, f.size), reader)
                if f.size == 0 and hashlib.sha256(b"").hexdigest() != f.sha256:
                    raise VerifyFailed(
                        f"{f.path} is empty but its SHA-256 is not", bad_pieces=[], bad_files=[f.path]
                    )


def write_bundle_file(
    src: ExportSource, output: Path, *, on_bytes: Callable[[int], None] | None = None
) -> None:
    """Write the bundle to a temporary name beside ``output``, fsync, rename: never a half bundle."""
    with storage_errors(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write_bundle(src, fh, on_bytes=on_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(output.parent)


# -- import: where the model goes ------------------------------------------------------------------
@dataclass
class _Target:
    """The store manifest (the bundle's, or re-pathed for a layout) and where each bundle file goes."""

    manifest: Manifest
    dest: Path
    file_map: list[int | None]  # bundle file index -> store file index (None: a duplicate blob)
    after: Callable[[Store], None] | None = None


def _target(
    manifest: Manifest,
    sidecars: Mapping[str, bytes],
    fmt: str,
    dest: Path | None,
    settings: Settings | None,
    origin: str,
) -> _Target:
    identity: list[int | None] = list(range(len(manifest.files)))
    raw = sidecars.get(OLLAMA_SIDECAR)
    if raw is not None:
        _check_ollama_sidecar(manifest, raw, origin)
    if fmt == "dir":
        d = dest or Path.cwd() / manifest.folder_name
        after: Callable[[Store], None] | None = None
        if raw is not None and settings is not None:
            after = _ollama_after(settings, d, manifest, raw, origin, "dir")
        elif settings is not None:
            from dsmirror._install.records import record_after_install

            after = record_after_install(settings, origin, "dir", manifest)
        return _Target(manifest, d, identity, after)
    if fmt == "ollama":
        if raw is None:
            raise UsageError(
                f"{origin} does not hold an Ollama model (no Ollama manifest in it)",
                hint="import it with --format dir",
            )
        store = dest or (settings.ollama_models if settings else None)
        if store is None:
            raise UsageError("give the Ollama store with --dest DIR")
        return _Target(
            manifest, store, identity, _ollama_after(settings, store, manifest, raw, origin, "ollama")
        )
    if fmt == "hf":
        return _hf_target(manifest, dest, settings, origin)
    raise UsageError("--format must be dir, hf or ollama")


def _check_ollama_sidecar(manifest: Manifest, raw: bytes, origin: str) -> None:
    from dsmirror._formats.ollama import parse_ollama_manifest

    want = manifest.meta.get("manifest_sha256")
    got = hashlib.sha256(raw).hexdigest()
    if want != got:
        raise ImportRejected(
            f"the Ollama manifest in it has SHA-256 {got[:16]}…, "
            f"the bundle's manifest says {str(want)[:16]}…",
            origin=origin,
            path=SIDECAR_PREFIX + OLLAMA_SIDECAR,
        )
    try:
        blobs = {b.path for b in parse_ollama_manifest(raw)}
    except ValueError as exc:
        raise ImportRejected(f"its Ollama manifest is invalid: {exc}", origin=origin) from exc
    if blobs != {f.path for f in manifest.files}:
        raise ImportRejected("its Ollama manifest lists other blobs than the bundle holds", origin=origin)


def _ollama_after(
    settings: Settings | None, dest: Path, manifest: Manifest, raw: bytes, origin: str, fmt: str
) -> Callable[[Store], None]:
    from dsmirror._formats.ollama import parse_ollama_name
    from dsmirror._install.ollama import ollama_after_install

    model = str(manifest.meta.get("model", ""))
    name = parse_ollama_name(model)
    if settings is None:
        settings = Settings.from_env()
    return ollama_after_install(settings, dest, name.manifest_path, raw, origin, manifest, fmt=fmt)


def _hf_target(manifest: Manifest, dest: Path | None, settings: Settings | None, origin: str) -> _Target:
    from dsmirror._formats.hfcache import repo_folder
    from dsmirror._install.hf import hf_after_install

    meta = manifest.meta
    repo, commit = meta.get("repo"), meta.get("commit")
    if meta.get("source") != "hf" or not isinstance(repo, str) or not isinstance(commit, str):
        raise UsageError(
            f"{origin} does not hold a Hugging Face snapshot (its manifest names no repo and commit)",
            hint="import it with --format dir",
        )
    if any(f.path.startswith("blobs/") for f in manifest.files):
        raise UsageError(
            f"{origin} holds cache blobs without their file names",
            hint="export the model from the HF cache with `dsmirror export hf://ORG/NAME`",
        )
    cache = dest or (settings.hf_cache if settings else None)
    if cache is None:
        raise UsageError("give the Hugging Face cache with --dest DIR")
    repo_dir = repo_folder(cache, repo)
    git_ids = meta.get("git_blob_ids") or {}
    by_etag: dict[str, int] = {}
    entries: list[FileEntry] = []
    file_map: list[int | None] = []
    links: list[tuple[str, str]] = []
    for f in manifest.files:
        etag = str(git_ids.get(f.path) or f.sha256)
        links.append((f.path, etag))
        if etag in by_etag:
            file_map.append(None)
            continue
        by_etag[etag] = len(entries)
        file_map.append(len(entries))
        entries.append(FileEntry(f"blobs/{etag}", f.size, f.sha256, f.pieces))
    store_manifest = parse_manifest(
        Manifest(
            manifest.name, manifest.piece_size, tuple(entries), manifest.torrent, dict(meta)
        ).canonical_bytes
    )
    revision = str(meta.get("revision") or commit)
    after = hf_after_install(repo_dir, commit=commit, revision=revision, files=links)
    return _Target(store_manifest, repo_dir, file_map, after)


# -- import: streaming pieces into the store -------------------------------------------------------
class _Ingest:
    """Feeds files, read in order, into a store: hash every piece, write it, mark it verified."""

    def __init__(self, bundle: Manifest, target: _Target, store: Store, origin: str) -> None:
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
        sfi = self.t.file_map[fi]
        spieces = (
            [self.t.manifest.pieces[i] for i in self.t.manifest.file_piece_ranges[sfi]]
            if sfi is not None
            else []
        )
        whole = hashlib.sha256()
        unhashed: list[tuple[int, str]] = []  # store piece index, digest: marked once the file matches
        for k, gi in enumerate(m.file_piece_ranges[fi]):
            piece = m.pieces[gi]
            sp = spieces[k] if spieces else None
            write = sp is not None and not self.store.is_done(sp.index)
            h = hashlib.sha256()
            pos = 0
            while pos < piece.length:
                try:
                    chunk = read(min(_CHUNK, piece.length - pos))
                except (tarfile.TarError, EOFError, OSError) as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
                        raise StorageError(
                            f"cannot read {self.origin}: {exc.strerror}", path=self.origin
                        ) from exc
                    chunk = b""
                if not chunk:
                    raise ImportRejected(
                        f"ends inside {f.path}, piece {piece.index} (bytes {piece.offset + pos} of "
                        f"{piece.offset}-{piece.offset + piece.length - 1}): the bundle is truncated",
                        origin=self.origin,
                        path=f.path,
                        piece=piece.index,
                    )
                h.update(chunk)
                whole.update(chunk)
                if write:
                    assert sp is not None
                    self.store.write(sp, pos, chunk)
                    self.taken += len(chunk)
                pos += len(chunk)
                self.read += len(chunk)
            got = h.hexdigest()
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
            if sp is not None and write:
                if piece.sha256:
                    self.store.mark_verified(sp)
                else:
                    unhashed.append((sp.index, got))
            now = time.monotonic()
            if now - self._last >= 0.25:
                self._last = now
                yield self.progress()
        got_whole = whole.hexdigest()
        if got_whole != f.sha256:
            raise ImportRejected(
                f"{f.path} has SHA-256 {got_whole[:16]}…, the manifest says {f.sha256[:16]}…",
                origin=self.origin,
                path=f.path,
                expected=f.sha256,
                actual=got_whole,
            )
        for si, digest in unhashed:
            self.store.mark_verified(self.t.manifest.pieces[si], source="import", digest=digest)

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


def _started(target: _Target, store: Store, origin: str) -> PullStarted:
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


def _pin(manifest_sha: str, pinned_by: str | None, aliases: Mapping[str, str] | None) -> str | None:
    """Who vouches for this manifest: the caller's pin, or a catalog alias that pins this digest."""
    if pinned_by:
        return pinned_by
    for alias, sha in (aliases or {}).items():
        if sha == manifest_sha:
            return f"catalog alias {alias}"
    return None


def import_bundle(
    stream: IO[bytes],
    *,
    origin: str,
    fmt: str = "dir",
    dest: Path | None = None,
    expected_sha256: str | None = None,
    pinned_by: str | None = None,
    known: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> Iterator[Event]:
    """Verify and install a bundle read from ``stream``, yielding BundleOpened and pull events.

    ``expected_sha256`` pins the manifest (``pinned_by`` says who vouched for it); ``known`` maps
    catalog aliases to their pinned manifest digests, so a bundle of a known model is recognised.
    Raises ManifestMismatch before any file is read if the pin does not match, and ImportRejected
    (naming the file and piece) for a truncated, damaged or reordered bundle.
    """
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, EOFError) as exc:
        raise ImportRejected(f"not a dsmirror bundle (not a tar file: {exc})", origin=origin) from exc
    with tar:
        first = _next(tar, origin, "its manifest")
        if first is None or first.name != MANIFEST_MEMBER or not first.isfile():
            raise ImportRejected(
                f"not a dsmirror bundle: the first member must be {MANIFEST_MEMBER}",
                origin=origin,
                hint="bundles are written by `dsmirror export`",
            )
        if first.size > _MAX_MANIFEST:
            raise ImportRejected("its manifest is implausibly large", origin=origin)
        data = _read_member(tar, first, origin)
        manifest = parse_manifest(data, expected_sha256=expected_sha256, origin=f"{origin}:{MANIFEST_MEMBER}")
        sidecars: dict[str, bytes] = {}
        member = _next(tar, origin, "the first file")
        while member is not None and member.name.startswith(SIDECAR_PREFIX):
            if not member.isfile() or member.size > _MAX_SIDECAR or len(sidecars) >= _MAX_SIDECARS:
                raise ImportRejected(f"bad member {member.name}", origin=origin)
            sidecars[member.name[len(SIDECAR_PREFIX) :]] = _read_member(tar, member, origin)
            member = _next(tar, origin, "the first file")
        target = _target(manifest, sidecars, fmt, dest, settings, origin)
        yield BundleOpened(
            origin,
            manifest.name,
            manifest.sha256,
            _pin(
                manifest.sha256, pinned_by or ("--manifest-sha256" if expected_sha256 else None), known or {}
            ),
            len(manifest.files),
            manifest.total_size,
            str(target.dest),
            fmt,
        )
        with Store.open(target.dest, target.manifest) as store:
            before = store.verified_bytes
            yield _started(target, store, origin)
            ingest = _Ingest(manifest, target, store, origin)
            for fi, f in enumerate(manifest.files):
                want = FILES_PREFIX + f.path
                if fi:
                    member = _next(tar, origin, f.path)
                if member is None:
                    raise ImportRejected(
                        f"ends before {f.path} (file {fi + 1} of {len(manifest.files)}): "
                        "the bundle is truncated",
                        origin=origin,
                        path=f.path,
                        piece=manifest.file_piece_ranges[fi].start if f.size else None,
                    )
                if member.name != want or not member.isfile():
                    raise ImportRejected(
                        f"member {member.name!r} where {want!r} belongs: the bundle was altered",
                        origin=origin,
                        path=f.path,
                    )
                if member.size != f.size:
                    raise ImportRejected(
                        f"{f.path} is {member.size} bytes in the bundle, the manifest says {f.size}",
                        origin=origin,
                        path=f.path,
                    )
                fh = tar.extractfile(member)
                assert fh is not None
                yield from ingest.file(fi, fh.read)
            extra = _next(tar, origin, "the end")
            if extra is not None:
                raise ImportRejected(
                    f"unexpected member {extra.name!r} after the last file: the bundle was altered",
                    origin=origin,
                )
            yield from ingest.finish(before)


def _next(tar: tarfile.TarFile, origin: str, what: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.TarError, EOFError) as exc:
        raise ImportRejected(
            f"unreadable before {what} ({exc}): the bundle is truncated or damaged", origin=origin
        ) from exc


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, origin: str) -> bytes:
    fh = tar.extractfile(member)
    assert fh is not None
    try:
        data = fh.read()
    except (tarfile.TarError, EOFError) as exc:
        raise ImportRejected(f"{member.name} is truncated ({exc})", origin=origin) from exc
    if len(data) != member.size:
        raise ImportRejected(f"{member.name} is truncated", origin=origin)
    return data


# -- import from a folder ------------------------------------------------------------------------
def _locate(folder: Path, f: FileEntry) -> Path | None:
    """The copy of ``f`` in ``folder``: same path, an HF snapshot, or a content-addressed blob."""
    cands = same_path_candidates(folder, f.path)
    for d in blob_dirs(folder):
        cands += [d / f"sha256-{f.sha256}", d / f"sha256:{f.sha256}", d / f.sha256]
    for c in cands:
        with contextlib.suppress(OSError):
            if c.is_file() and c.stat().st_size == f.size:
                return c
    return None


def folder_manifest(folder: Path, pin: str | None) -> Manifest:
    """The manifest recorded in a folder dsmirror installed into (``import DIR`` without --manifest)."""
    models = recorded_models(folder)
    if pin:
        models = [m for m in models if pin.lower() == m.manifest.sha256]
    if len(models) != 1:
        raise UsageError(
            f"which manifest describes {folder}?"
            + (" it records several" if len(models) > 1 else " it records none"),
            hint="give it with --manifest FILE",
        )
    return models[0].manifest


def import_folder(
    folder: Path,
    manifest: Manifest,
    *,
    fmt: str = "dir",
    dest: Path | None = None,
    pinned_by: str | None = None,
    known: Mapping[str, str] | None = None,
    settings: Settings | None = None,
    sidecars: Mapping[str, bytes] | None = None,
    files: Mapping[str, Path] | None = None,
) -> Iterator[Event]:
    """Verify and install the files of ``manifest`` found in ``folder`` (copied, never moved).

    ``folder`` may be a plain copy of the model, a Hugging Face cache repo folder (``snapshots/``)
    or an Ollama store (``blobs/sha256-<hex>``); ``files`` says where each file is when known
    (``export_source`` of a store). Every file must be there: a missing, short or damaged one
    raises ImportRejected naming it (and the piece), and nothing is installed.
    """
    origin = str(folder)
    side = dict(sidecars or {})
    if manifest.meta.get("source") == "ollama" and OLLAMA_SIDECAR not in side:
        raw = _ollama_manifest_in(folder, manifest)
        if raw is not None:
            side[OLLAMA_SIDECAR] = raw
    target = _target(manifest, side, fmt, dest, settings, origin)
    # (Importing a folder into itself just verifies it: the store adopts the files that match.)
    located: list[Path | None] = [
        (files[f.path] if files and f.path in files else _locate(folder, f)) if f.size else None
        for f in manifest.files
    ]
    missing = [f.path for f, p in zip(manifest.files, located, strict=True) if f.size and p is None]
    if missing:
        raise ImportRejected(
            f"{missing[0]} is missing or has the wrong size"
            + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""),
            origin=origin,
            path=missing[0],
            hint="copy the whole model folder, or give the manifest that matches it",
        )
    yield BundleOpened(
        origin,
        manifest.name,
        manifest.sha256,
        _pin(manifest.sha256, pinned_by, known),
        len(manifest.files),
        manifest.total_size,
        str(target.dest),
        fmt,
    )
    with Store.open(target.dest, target.manifest) as store:
        before = store.verified_bytes
        yield _started(target, store, origin)
        ingest = _Ingest(manifest, target, store, origin)
        for fi, local in enumerate(located):
            if local is None or ingest.file_done(fi):
                continue
            try:
                fh = open(local, "rb")  # noqa: SIM115
            except OSError as exc:
                raise StorageError(f"cannot read {local}: {exc.strerror}", path=str(local)) from exc
            with fh:
                yield from ingest.file(fi, fh.read)
        yield from ingest.finish(before)


def _ollama_manifest_in(folder: Path, manifest: Manifest) -> bytes | None:
    """The Ollama manifest of an Ollama-sourced model, if ``folder`` is (a copy of) an Ollama store."""
    from dsmirror._formats.ollama import parse_ollama_name

    model = manifest.meta.get("model")
    if not isinstance(model, str):
        return None
    with contextlib.suppress(DsmirrorError, OSError):
        return (folder / parse_ollama_name(model).manifest_path).read_bytes()
    return None


def catalog_pins(models: Mapping[str, Any]) -> dict[str, str]:
    """Alias -> pinned manifest SHA-256 of a catalog's models (those that pin one)."""
    return {name: a.manifest_sha256 for name, a in models.items() if getattr(a, "manifest_sha256", None)}
