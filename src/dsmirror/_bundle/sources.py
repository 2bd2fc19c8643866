"""What ``dsmirror export`` exports: a manifest and where each of its files is on disk.

A manifest file with the folder of its files; a folder dsmirror installed into (its manifest is
recorded there); a model of the Ollama store; a snapshot of the Hugging Face cache. A model that
dsmirror did not install is hashed into a manifest here, each file checked against the name its
store gives it (a blob's digest), so a damaged copy is never exported.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsmirror._bundle.format import OLLAMA_SIDECAR, ollama_manifest_in
from dsmirror._core.errors import ManifestError, StorageError, UsageError, VerifyFailed
from dsmirror._core.settings import Settings
from dsmirror._fetch.reuse import recorded_models
from dsmirror._formats.manifest import FileEntry, Manifest, parse_manifest
from dsmirror._verify.digest import hash_file_pieces

__all__ = ["ExportSource", "export_source"]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


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
        raw = ollama_manifest_in(folder, m)
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
