"""The bundle format: one plain tar with a manifest and the files it describes.

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

Documented in docs/formats.md#offline-bundles.
"""

from __future__ import annotations

import contextlib
import tarfile
from pathlib import Path

from dsmirror._core.errors import DsmirrorError
from dsmirror._formats.manifest import Manifest

__all__ = [
    "CHUNK",
    "FILES_PREFIX",
    "MANIFEST_MEMBER",
    "MAX_MANIFEST",
    "MAX_SIDECAR",
    "MAX_SIDECARS",
    "OLLAMA_SIDECAR",
    "SIDECAR_PREFIX",
    "ollama_manifest_in",
    "tar_member",
]

MANIFEST_MEMBER = "manifest.json"
FILES_PREFIX = "files/"
SIDECAR_PREFIX = "sidecar/"
OLLAMA_SIDECAR = "ollama-manifest"
MAX_MANIFEST = 1 << 30
MAX_SIDECAR = 16 << 20
MAX_SIDECARS = 16
CHUNK = 1 << 20  # bytes read and written at a time


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """The header of a member: a regular file, mode 0644, owner 0, mtime 0 (reproducible)."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def ollama_manifest_in(folder: Path, manifest: Manifest) -> bytes | None:
    """The Ollama manifest of an Ollama-sourced model, if ``folder`` is (a copy of) an Ollama store."""
    from dsmirror._formats.ollama import parse_ollama_name

    model = manifest.meta.get("model")
    if not isinstance(model, str):
        return None
    with contextlib.suppress(DsmirrorError, OSError):
        return (folder / parse_ollama_name(model).manifest_path).read_bytes()
    return None
