"""An installed model read back as the files it consists of and where their bytes are.

For ``dsmirror seed``, which shares them without copying: an Ollama model is its manifest file and
its blobs, with the store's own relative paths (so a copy of them is an Ollama store again); a
Hugging Face snapshot is its repo paths, each read from the blob its snapshot link points at.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.errors import UsageError
from dsmirror._core.settings import Settings
from dsmirror._formats import hfcache
from dsmirror._formats.ollama import parse_ollama_manifest, parse_ollama_name, store_blob
from dsmirror._formats.paths import validate_relpath
from dsmirror._install.links import real_dir
from dsmirror._install.records import store_records, vouched

__all__ = ["StoreFile", "StoreModel", "find_store_model"]


@dataclass(frozen=True)
class StoreFile:
    """One file of an installed model: ``path`` as the model names it, its bytes at ``root/<disk>``."""

    path: str
    disk: str  # relative to StoreModel.root
    size: int
    #: The content digest the store's name for it gives: SHA-256 (64 hex), git blob SHA-1 (40 hex),
    #: or "" when the store names none (a real file in a snapshot folder).
    digest: str
    #: dsmirror verified it when it installed it, and its size, mtime and inode have not changed since.
    vouched: bool


@dataclass(frozen=True)
class StoreModel:
    kind: str  # hf | ollama
    ref: str  # canonical: hf://org/name@<commit>, ollama://host/ns/name:tag
    name: str  # what the model is called (the torrent's name)
    root: Path
    files: tuple[StoreFile, ...]


def _store_file(root: Path, path: str, disk: str, digest: str, records: Mapping[str, list[int]]) -> StoreFile:
    p = root / disk
    try:
        st = p.stat()  # follows a snapshot link to its blob
    except OSError:
        raise UsageError(
            f"{p} is missing: the model is incomplete", hint="pull it again, or see `dsmirror ls`"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{p} is not a regular file")
    return StoreFile(path, disk, st.st_size, digest, vouched(records, disk, st))


def _hf_store_model(settings: Settings, target: str) -> StoreModel:
    repo, _, rev = target.removeprefix("hf://").partition("@")
    if repo.count("/") != 1:
        raise UsageError(f"not a repo: {target!r}", hint="write it like hf://org/name[@revision]")
    rev = rev or "main"
    repo_dir = hfcache.repo_folder(settings.hf_cache, repo)
    if not repo_dir.is_dir():
        raise UsageError(f"{repo} is not in the Hugging Face cache ({settings.hf_cache})")
    real_dir(repo_dir)
    commit = hfcache.resolve_revision(repo_dir, rev)
    snap = hfcache.snapshot_dir(repo_dir, commit or "")
    if commit is None or not snap.is_dir() or snap.is_symlink():
        raise UsageError(f"{repo} has no snapshot for {rev!r} in the cache", hint="see `dsmirror ls`")
    records = store_records(repo_dir)
    files = []
    for rel, blob in hfcache.snapshot_links(repo_dir, snap):
        if blob == "":
            raise UsageError(f"{snap / rel} links outside the repo's blobs/; not seeding it")
        validate_relpath(rel)
        if blob is None:  # a real file in the snapshot (a copied cache): its bytes are where it is
            files.append(_store_file(repo_dir, rel, f"snapshots/{commit}/{rel}", "", {}))
        else:
            name = blob.removeprefix("blobs/")
            files.append(_store_file(repo_dir, rel, blob, name if hfcache.is_etag(name) else "", records))
    if not files:
        raise UsageError(f"the snapshot {snap} holds no file")
    return StoreModel("hf", f"hf://{repo}@{commit}", repo, repo_dir, tuple(files))


def _ollama_store_model(settings: Settings, target: str) -> StoreModel:
    name = parse_ollama_name(target)
    models = settings.ollama_models
    manifest = models / name.manifest_path
    if not manifest.is_file() or manifest.is_symlink():
        raise UsageError(f"{name.short} is not in the Ollama store ({models})", hint="see `dsmirror ls`")
    raw = manifest.read_bytes()
    try:
        blobs = parse_ollama_manifest(raw)
    except ValueError as exc:
        raise UsageError(f"{manifest}: not an Ollama manifest ({exc})") from exc
    records = store_records(models)
    # The manifest's bytes were just read and are hashed here: as good as vouched for.
    digest = hashlib.sha256(raw).hexdigest()
    files = [StoreFile(name.manifest_path, name.manifest_path, len(raw), digest, vouched=True)]
    for b in blobs:
        disk = store_blob(models, b.sha256)
        f = _store_file(models, b.path, disk, b.sha256, records)
        if f.size != b.size:
            raise UsageError(f"{models / disk} is {f.size} bytes, the manifest says {b.size}: not seeding it")
        files.append(f)
    ref = f"ollama://{name.host}/{name.namespace}/{name.name}:{name.tag}"
    return StoreModel("ollama", ref, name.short, models, tuple(files))


def find_store_model(settings: Settings, target: str) -> StoreModel:
    """The installed model ``target`` names, read back as files (see the module docstring).

    ``hf://org/name[@revision]`` (default ``main``) is a snapshot of the Hugging Face cache;
    ``ollama://[host/][namespace/]name[:tag]`` or a bare ``name:tag`` an Ollama model.
    Raises UsageError when the model is not installed (or not complete).
    """
    if target.startswith("hf://"):
        return _hf_store_model(settings, target)
    return _ollama_store_model(settings, target)
