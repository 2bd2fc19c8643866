"""Ollama model names and registry manifests: the one parser of each (everyone else calls these).

Names, as ``ollama pull`` and the catalog's ``ollama:`` values write them (``ollama://`` may
prefix any form)::

    name                      library/name:latest on registry.ollama.ai
    name:tag                  library/name:tag
    ns/name:tag               ns/name:tag
    host/ns/name:tag          on the registry at host
    host:port/ns/name:tag     on the registry at host:port

An image manifest (OCI / Docker schema 2, media type ``MANIFEST_V2``)::

    {"schemaVersion": 2, "mediaType": MANIFEST_V2,
     "config": {"mediaType": ..., "digest": "sha256:<hex>", "size": n},
     "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": ..., "size": n}, ...]}

The Ollama store (``$OLLAMA_MODELS``)::

    blobs/sha256-<hex>                          every blob, the config included (older Ollama
                                                versions named them ``sha256:<hex>``)
    manifests/<host>/<namespace>/<name>/<tag>   the manifest bytes as the registry sent them
    .dsmirror/                                  dsmirror's private area (``dsmirror._formats.private``)

Documented in docs/formats.md#the-ollama-store-and-image-manifests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmirror._core.errors import UsageError

__all__ = [
    "DEFAULT_HOST",
    "MANIFEST_V2",
    "OllamaBlob",
    "OllamaName",
    "manifest_media_type",
    "parse_ollama_manifest",
    "parse_ollama_name",
    "store_blob",
    "store_manifests",
]

DEFAULT_HOST = "registry.ollama.ai"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]{1,5})?$")
_NAME = re.compile(
    r"^(?:(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]{1,5})?)/(?=[^/]+/[^/]+$))?"
    r"(?:(?P<ns>[A-Za-z0-9][A-Za-z0-9._-]*)/)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]*))?$"
)
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass(frozen=True)
class OllamaName:
    """A model in a registry; ``host`` names where its manifest is filed in the store."""

    host: str
    namespace: str
    name: str
    tag: str

    def __post_init__(self) -> None:
        if not _HOST.fullmatch(self.host):
            raise UsageError(f"not a registry host: {self.host!r}")
        for part in (self.namespace, self.name, self.tag):
            if not _PART.fullmatch(part):
                raise UsageError(f"not an Ollama name part: {part!r}")

    @property
    def short(self) -> str:
        """How ``ollama list`` shows it: ``name:tag`` for the official library."""
        if self.host == DEFAULT_HOST:
            base = self.name if self.namespace == "library" else f"{self.namespace}/{self.name}"
        else:
            base = f"{self.host}/{self.namespace}/{self.name}"
        return f"{base}:{self.tag}"

    @property
    def manifest_path(self) -> str:
        """Where the manifest goes, relative to the store: ``manifests/<host>/<ns>/<name>/<tag>``."""
        return f"manifests/{self.host}/{self.namespace}/{self.name}/{self.tag}"


def parse_ollama_name(text: str, *, host: str | None = None) -> OllamaName:
    """``[host/][namespace/]name[:tag]`` (a catalog ``ollama:`` value or the part after ``ollama://``)."""
    m = _NAME.match(text.removeprefix("ollama://"))
    if not m:
        raise UsageError(f"not an Ollama model name: {text!r}", hint="write it like library/deepseek-r1:7b")
    return OllamaName(
        host or m.group("host") or DEFAULT_HOST,
        m.group("ns") or "library",
        m.group("name"),
        m.group("tag") or "latest",
    )


@dataclass(frozen=True)
class OllamaBlob:
    media_type: str
    sha256: str
    size: int

    @property
    def path(self) -> str:
        return f"blobs/sha256-{self.sha256}"


def parse_ollama_manifest(raw: bytes) -> tuple[OllamaBlob, ...]:
    """The config blob and the layers of a schemaVersion 2 manifest, each once (raises ValueError)."""
    doc: Any = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ValueError("not a schemaVersion 2 manifest")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ValueError("no layers")
    blobs: dict[str, OllamaBlob] = {}
    for entry in [doc.get("config"), *layers]:
        if not isinstance(entry, dict):
            raise ValueError("malformed config or layer")
        digest, size = entry.get("digest"), entry.get("size")
        m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if m is None:
            raise ValueError(f"bad digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"bad size {size!r} of {digest}")
        prior = blobs.get(m.group(1))
        if prior is not None and prior.size != size:
            raise ValueError(f"{digest} listed twice with different sizes")
        blobs.setdefault(m.group(1), OllamaBlob(str(entry.get("mediaType", "")), m.group(1), size))
    return tuple(blobs.values())


def manifest_media_type(raw: bytes) -> str:
    """The ``mediaType`` a manifest names for itself (``MANIFEST_V2`` if none): its ``Content-Type``."""
    doc: Any = json.loads(raw)
    media_type = doc.get("mediaType") if isinstance(doc, dict) else None
    return media_type if isinstance(media_type, str) else MANIFEST_V2


def store_manifests(models: Path) -> Iterator[tuple[str, Path]]:
    """(``host/ns/name:tag``, manifest file) of every model of an Ollama store; real files only."""
    root = models / "manifests"
    for path in sorted(root.glob("*/*/*/*")):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            host, ns, name, tag = path.relative_to(root).parts
            yield f"{host}/{ns}/{name}:{tag}", path


def store_blob(models: Path, sha256: str) -> str:
    """Where a blob is in the store, relative to it: ``blobs/sha256-<hex>``, or the older
    ``blobs/sha256:<hex>`` when only that one exists."""
    rel = f"blobs/sha256-{sha256}"
    old = f"blobs/sha256:{sha256}"
    if not (models / rel).exists() and (models / old).exists():
        return old
    return rel
