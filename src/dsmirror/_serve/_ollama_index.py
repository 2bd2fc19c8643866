"""What the server serves as Ollama models: ``OllamaModel`` and ``index_ollama_store``.

Names and manifests are ``dsmirror._formats.ollama``'s (the one parser of each, shared with
``dsmirror pull``), as is the store's layout::

    <models>/manifests/<host>/<namespace>/<name>/<tag>   manifest bytes as received
    <models>/blobs/sha256-<hex>                          one file per layer / config

A model is served with its manifest bytes exactly as stored (their SHA-256 is the digest clients
check) and only when every blob it names is there at its size.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dsmirror._core.errors import UsageError
from dsmirror._formats.ollama import (
    DEFAULT_HOST,
    MANIFEST_V2,
    OllamaName,
    manifest_media_type,
    parse_ollama_manifest,
    parse_ollama_name,
    store_blob,
    store_manifests,
)
from dsmirror._serve._digests import hash_file
from dsmirror._serve._hf_index import inside

__all__ = ["CONFIG_V1", "OllamaLayer", "OllamaModel", "index_ollama_store"]

logger = logging.getLogger(__name__)

#: The config blob's media type in the manifests ``OllamaModel.from_files`` builds.
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"


@dataclass(frozen=True)
class OllamaLayer:
    """A blob the manifest refers to (the config or one layer)."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int


@dataclass(frozen=True)
class OllamaModel:
    """One tagged Ollama model: its manifest bytes (served as stored) and its blobs.

    ``blobs`` maps "sha256:<hex>" to the file holding the blob, or to the bytes themselves
    for small blobs built in memory (a config passed as ``bytes`` to ``from_files``).
    """

    host: str
    namespace: str
    name: str
    tag: str
    manifest: bytes
    blobs: dict[str, Path | bytes]

    def __post_init__(self) -> None:
        try:
            OllamaName(self.host, self.namespace, self.name, self.tag)
        except UsageError as exc:
            raise ValueError(exc.message) from None
        for layer in self.layers:
            blob = self.blobs.get(layer.digest)
            if blob is None:
                raise ValueError(f"{self.reference}: no blob for {layer.digest}")
            if isinstance(blob, bytes) and len(blob) != layer.size:
                raise ValueError(f"{self.reference}: blob {layer.digest} is not {layer.size} bytes")

    @property
    def reference(self) -> str:
        return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"

    @cached_property
    def layers(self) -> tuple[OllamaLayer, ...]:
        """The config blob first, then the layers, as the manifest lists them (each once)."""
        try:
            blobs = parse_ollama_manifest(self.manifest)
        except ValueError as exc:
            raise ValueError(f"{self.reference}: {exc}") from exc
        return tuple(OllamaLayer(b.media_type, f"sha256:{b.sha256}", b.size) for b in blobs)

    @cached_property
    def media_type(self) -> str:
        """The ``Content-Type`` the manifest is served with."""
        return manifest_media_type(self.manifest)

    @cached_property
    def digest(self) -> str:
        """The manifest's own digest (``Docker-Content-Digest``)."""
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def blob_size(self, digest: str) -> int | None:
        for layer in self.layers:
            if layer.digest == digest:
                return layer.size
        return None

    @classmethod
    def from_files(
        cls,
        namespace: str,
        name: str,
        tag: str,
        layers: list[tuple[str, Path]],
        config: Path | bytes,
        *,
        host: str = DEFAULT_HOST,
    ) -> OllamaModel:
        """Build a schemaVersion 2 manifest over the given files (hashing each once)."""
        blobs: dict[str, Path | bytes] = {}

        def describe(media_type: str, source: Path | bytes) -> dict[str, Any]:
            if isinstance(source, bytes):
                size, digest = len(source), hashlib.sha256(source).hexdigest()
                blobs["sha256:" + digest] = source
            else:
                disk = Path(source).resolve()
                size, digest, _ = hash_file(disk, git=False)
                blobs["sha256:" + digest] = disk
            return {"mediaType": media_type, "digest": "sha256:" + digest, "size": size}

        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": describe(CONFIG_V1, config),
            "layers": [describe(media_type, path) for media_type, path in layers],
        }
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        return cls(host=host, namespace=namespace, name=name, tag=tag, manifest=raw, blobs=blobs)


def index_ollama_store(models_dir: Path) -> list[OllamaModel]:
    """Index the models of an Ollama store; models with a missing or short blob are skipped."""
    root = Path(models_dir).resolve()
    models: list[OllamaModel] = []
    for reference, manifest_file in store_manifests(root):
        real = manifest_file.resolve()
        if not inside(real, root) or not real.is_file():
            logger.warning("skipping %s: not a regular file inside %s", manifest_file, root)
            continue
        try:
            ref = parse_ollama_name(reference)
            raw = real.read_bytes()
            blobs: dict[str, Path | bytes] = {
                f"sha256:{b.sha256}": _blob_file(root, b.sha256, b.size) for b in parse_ollama_manifest(raw)
            }
            models.append(OllamaModel(ref.host, ref.namespace, ref.name, ref.tag, raw, blobs))
        except (OSError, ValueError, UsageError) as exc:
            logger.warning("skipping %s: %s", manifest_file, exc)
    return models


def _blob_file(root: Path, sha256: str, size: int) -> Path:
    """The blob's file in the store, checked: a regular file of ``size`` bytes right in its folder."""
    candidate = root / store_blob(root, sha256)
    if not candidate.exists():
        raise ValueError(f"blob sha256:{sha256} is missing")
    disk = candidate.resolve()
    blobs_dir = candidate.parent.resolve()
    if disk.parent != blobs_dir or not disk.is_file():
        raise ValueError(f"blob sha256:{sha256} is not a regular file in {blobs_dir}")
    if disk.stat().st_size != size:
        raise ValueError(f"blob sha256:{sha256} is not {size} bytes")
    return disk
