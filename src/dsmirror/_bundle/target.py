"""Where an imported model goes: the store manifest and folder for ``--format dir|hf|ollama``.

``dir`` keeps the bundle's manifest and installs into a folder; ``ollama`` installs the blobs into
an Ollama store and writes the bundle's Ollama manifest (a sidecar, checked against the pin the
manifest holds) under the model's name; ``hf`` re-paths the files as blobs of a Hugging Face cache
repo (one blob per distinct content) and links the snapshot's file names to them afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dsmirror._bundle.format import OLLAMA_SIDECAR, SIDECAR_PREFIX
from dsmirror._core.errors import ImportRejected, UsageError
from dsmirror._core.settings import Settings
from dsmirror._formats.manifest import FileEntry, Manifest, parse_manifest
from dsmirror._journal.store import Store

__all__ = ["Target", "import_target"]


@dataclass
class Target:
    """The store manifest (the bundle's, or re-pathed for a layout) and where each bundle file goes."""

    manifest: Manifest
    dest: Path
    file_map: list[int | None]  # bundle file index -> store file index (None: a duplicate blob)
    after: Callable[[Store], None] | None = None


def import_target(
    manifest: Manifest,
    sidecars: Mapping[str, bytes],
    fmt: str,
    dest: Path | None,
    settings: Settings | None,
    origin: str,
) -> Target:
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
        return Target(manifest, d, identity, after)
    if fmt == "ollama":
        if raw is None:
            raise UsageError(
                f"{origin} does not hold an Ollama model (no Ollama manifest in it)",
                hint="import it with --format dir",
            )
        store = dest or (settings.ollama_models if settings else None)
        if store is None:
            raise UsageError("give the Ollama store with --dest DIR")
        return Target(
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


def _hf_target(manifest: Manifest, dest: Path | None, settings: Settings | None, origin: str) -> Target:
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
    return Target(store_manifest, repo_dir, file_map, after)
