"""Ollama registries (registry.ollama.ai and compatible): ``ollama://[host/]namespace/name:tag``.

Routes, relative to a mirror's URL::

    GET /v2/{namespace}/{name}/manifests/{tag}
        Accept: application/vnd.docker.distribution.manifest.v2+json
        -> {"schemaVersion": 2, "config": {"digest": "sha256:<hex>", "size": n, ...},
            "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": ..., "size": n}, ...]}
    GET /v2/{namespace}/{name}/blobs/sha256:{hex}     the blob; Range works; the official registry
                                                     answers 307 to a signed CDN URL (HttpSource
                                                     follows it and re-resolves it when it expires)

The manifest is taken from the first mirror that serves a valid one, official mirrors first (a
stale mirror must not decide what a tag means). Its bytes are kept exactly as received: they are
what ``manifests/<host>/<namespace>/<name>/<tag>`` must hold, and a ``Docker-Content-Digest`` header,
when sent, must be their SHA-256. The pull's files are the config blob and the layers, as
``blobs/sha256-<hex>`` with the digest as their SHA-256 (blobs are content-addressed, so every mirror
that has a blob has the same bytes, and the engine checks them); the registry publishes no piece
hashes, so the whole-blob digest is the check.

Installed ``--format ollama`` into ``$OLLAMA_MODELS``: verified blobs are renamed into ``blobs/`` by
the store (partial bytes live under ``.dsmirror/``, never in ``blobs/``, which Ollama prunes), and
the manifest file is written last, atomically, so Ollama never sees a model whose blobs are not all
there.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._catalog import Catalog, Mirror
from .._errors import BadResponse, NoSourceError, SourceError, UsageError
from .._install import ollama_after_install
from .._manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest, parse_manifest
from .._pull import PullOptions, PullPlan, select_mirrors, source_info
from .._settings import Settings
from .._sources import HttpSource, Source
from ._client import RepoURLs, describe, get_metadata

__all__ = [
    "DEFAULT_HOST",
    "MANIFEST_V2",
    "OllamaBlob",
    "OllamaName",
    "fetch_ollama_manifest",
    "parse_ollama_manifest",
    "parse_ollama_name",
    "plan_ollama",
]

DEFAULT_HOST = "registry.ollama.ai"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIMIT = 4 << 20
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
        if not _HOST.match(self.host):
            raise UsageError(f"not a registry host: {self.host!r}")
        for part in (self.namespace, self.name, self.tag):
            if not _PART.match(part):
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
        m = _DIGEST.match(digest) if isinstance(digest, str) else None
        if m is None:
            raise ValueError(f"bad digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"bad size {size!r} of {digest}")
        prior = blobs.get(m.group(1))
        if prior is not None and prior.size != size:
            raise ValueError(f"{digest} listed twice with different sizes")
        blobs.setdefault(m.group(1), OllamaBlob(str(entry.get("mediaType", "")), m.group(1), size))
    return tuple(blobs.values())


def _registry_mirrors(catalog: Catalog, name: OllamaName, options: PullOptions) -> list[Mirror]:
    """Mirrors that serve ``name``'s registry, official ones first."""
    mirrors = select_mirrors(catalog, ("ollama",), options)
    if name.host != DEFAULT_HOST:
        # A named registry: the catalog's mirrors of that very host, or the host itself.
        mirrors = [m for m in mirrors if _netloc(m.url) == name.host] or [
            Mirror(name.host, "ollama", f"https://{name.host}")
        ]
    return sorted(mirrors, key=lambda m: (not m.official, m.priority))


def _netloc(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower()


def fetch_ollama_manifest(
    mirrors: Sequence[Mirror],
    name: OllamaName,
    *,
    timeout: float = 30.0,
    skipped: list[str] | None = None,
) -> tuple[bytes, tuple[OllamaBlob, ...], str]:
    """(manifest bytes as received, its blobs, the mirror that served it).

    ``timeout`` bounds each request. ``skipped``, if given, receives ``"<mirror>: <why>"`` for each
    mirror asked before the one that served it.
    """
    problems: list[str] = [] if skipped is None else skipped
    for m in mirrors:
        url = f"{m.url.rstrip('/')}/v2/{name.namespace}/{name.name}/manifests/{name.tag}"
        try:
            doc = get_metadata(url, source=m.name, accept=MANIFEST_V2, timeout=timeout)
            if len(doc.body) > MANIFEST_LIMIT:
                raise BadResponse("manifest too large", source=m.name, url=url)
            claimed = doc.headers.get("docker-content-digest")
            actual = "sha256:" + hashlib.sha256(doc.body).hexdigest()
            if claimed and claimed.strip().lower() != actual:
                raise BadResponse(
                    f"manifest is {actual}, not the {claimed} it claims", source=m.name, url=url
                )
            try:
                blobs = parse_ollama_manifest(doc.body)
            except ValueError as exc:
                raise BadResponse(f"invalid manifest: {exc}", source=m.name, url=url) from exc
        except SourceError as exc:
            problems.append(f"{m.name}: {describe(exc)}")
            continue
        return doc.body, blobs, m.name
    raise NoSourceError(
        f"cannot get the manifest of {name.short}: " + "; ".join(problems or ["no ollama mirror"]),
        hint="check the model name and tag, and the ollama mirrors (--mirrors, --only)",
    )


def _blob_template(base: str, name: OllamaName) -> Callable[[str], str]:
    root = f"{base.rstrip('/')}/v2/{name.namespace}/{name.name}/blobs/sha256:"

    def url(path: str) -> str:
        return root + path.removeprefix("blobs/sha256-")

    return url


def plan_ollama(
    name: OllamaName,
    *,
    catalog: Catalog,
    settings: Settings,
    options: PullOptions,
    ref_text: str,
    display_name: str | None = None,
) -> PullPlan:
    """The pull of an Ollama model into the Ollama store (``--format ollama``) or a folder (``dir``).

    ``--format dir`` writes the same layout (``blobs/``, ``manifests/``) under ``--dest``: a folder
    that can serve as ``OLLAMA_MODELS`` or be copied into one.
    """

    if options.format == "hf":
        raise UsageError(f"{ref_text} is an Ollama model", hint="use --format ollama or --format dir")
    if options.include or options.exclude_files:
        raise UsageError(
            f"{ref_text} is an Ollama model: it is pulled whole",
            hint="--include/--exclude-file select the files of a Hugging Face or ModelScope repo",
        )
    mirrors = _registry_mirrors(catalog, name, options)
    skipped: list[str] = []
    raw, blobs, served_by = fetch_ollama_manifest(
        mirrors, name, timeout=options.metadata_timeout, skipped=skipped
    )
    ps = DEFAULT_PIECE_SIZE
    files = tuple(FileEntry(b.path, b.size, b.sha256, ("",) * -(-b.size // ps)) for b in blobs)
    meta = {
        "source": "ollama",
        "model": f"{name.host}/{name.namespace}/{name.name}:{name.tag}",
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
    }
    label = display_name or name.short
    manifest = parse_manifest(Manifest(label[:200], ps, files, None, meta).canonical_bytes, origin=label)
    if options.format == "ollama":
        dest = options.dest or settings.ollama_models
    else:
        dest = options.dest or Path.cwd() / f"{name.name}-{name.tag}"
    sources: list[Source] = [
        HttpSource(
            source_info(m, options),
            RepoURLs(m.name, _blob_template(m.url, name), {}),
            stall_timeout=options.stall_timeout,
        )
        for m in mirrors
    ]
    notes = [f"{name.short}: manifest sha256:{meta['manifest_sha256']} from {served_by}, {len(files)} blobs"]
    notes += [f"{why} (did not serve the manifest)" for why in skipped]
    after = ollama_after_install(
        settings, dest, name.manifest_path, raw, ref_text, manifest, fmt=options.format
    )
    return PullPlan(manifest, sources, dest, after, notes)
