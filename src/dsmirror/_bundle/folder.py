"""Importing a folder: a plain copy of a model, or a copy of another machine's Ollama store or
Hugging Face cache, verified and installed file by file like a bundle.

The files of the manifest (given, or recorded in the folder by dsmirror) are found by path, in
an HF snapshot, or as content-addressed blobs; they are copied, never moved, and every one must
be there before anything is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from dsmirror._bundle.format import OLLAMA_SIDECAR, ollama_manifest_in
from dsmirror._bundle.ingest import Ingest, bundle_opened, pull_started
from dsmirror._bundle.target import import_target
from dsmirror._core.errors import ImportRejected, StorageError, UsageError
from dsmirror._core.events import Event
from dsmirror._core.settings import Settings
from dsmirror._fetch.reuse import blob_dirs, recorded_models, same_path_candidates
from dsmirror._formats.manifest import FileEntry, Manifest
from dsmirror._journal.store import Store

__all__ = ["folder_manifest", "import_folder"]


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
        raw = ollama_manifest_in(folder, manifest)
        if raw is not None:
            side[OLLAMA_SIDECAR] = raw
    target = import_target(manifest, side, fmt, dest, settings, origin)
    # (Importing a folder into itself just verifies it: the store adopts the files that match.)
    located = _locate_all(folder, manifest, files)
    yield bundle_opened(origin, manifest, pinned_by, known, target, fmt)
    with Store.open(target.dest, target.manifest) as store:
        before = store.verified_bytes
        yield pull_started(target, store, origin)
        ingest = Ingest(manifest, target, store, origin)
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


def _locate_all(folder: Path, manifest: Manifest, files: Mapping[str, Path] | None) -> list[Path | None]:
    """Where each file of ``manifest`` is (None: empty); ImportRejected if one is not there."""
    located: list[Path | None] = [
        (files[f.path] if files and f.path in files else _locate(folder, f)) if f.size else None
        for f in manifest.files
    ]
    missing = [f.path for f, p in zip(manifest.files, located, strict=True) if f.size and p is None]
    if missing:
        raise ImportRejected(
            f"{missing[0]} is missing or has the wrong size"
            + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else ""),
            origin=str(folder),
            path=missing[0],
            hint="copy the whole model folder, or give the manifest that matches it",
        )
    return located
