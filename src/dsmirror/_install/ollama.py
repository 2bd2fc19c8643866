"""Installing a model into the Ollama store (``--format ollama``), or its layout into a folder (``dir``).

The layout is ``dsmirror._formats.ollama``'s. The store renames every verified blob into
``blobs/sha256-<hex>`` (its partial bytes live under ``.dsmirror/``, never in ``blobs/``, which
Ollama prunes); the manifest ``manifests/<host>/<namespace>/<name>/<tag>``, the registry's bytes
as sent, is written last and atomically: Ollama never sees a model whose blobs are not all there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from dsmirror._core.errors import StorageError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._core.settings import Settings
from dsmirror._formats.manifest import Manifest
from dsmirror._formats.paths import validate_relpath
from dsmirror._install.links import check_parents
from dsmirror._install.records import record_dir_install
from dsmirror._journal.store import Store

__all__ = ["ollama_after_install"]


def ollama_after_install(
    settings: Settings,
    dest: Path,
    manifest_rel: str,
    raw: bytes,
    ref: str,
    manifest: Manifest,
    *,
    fmt: str,
) -> Callable[[Store], None]:
    """Write the Ollama manifest (the registry's bytes) last, once every blob is in place."""

    def after(store: Store) -> None:
        for f in manifest.files:
            blob = dest / f.path
            if not blob.is_file() or blob.is_symlink() or blob.stat().st_size != f.size:
                raise StorageError(
                    f"{blob} is missing after the pull; not writing the manifest", path=str(blob)
                )
        validate_relpath(manifest_rel)
        atomic_write_bytes(check_parents(dest, manifest_rel), raw)
        if fmt == "dir":
            extra = [(manifest_rel, len(raw), hashlib.sha256(raw).hexdigest())]
            record_dir_install(settings, ref, fmt, manifest, dest, extra)

    return after
