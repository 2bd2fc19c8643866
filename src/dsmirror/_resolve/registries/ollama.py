"""Ollama registries (registry.ollama.ai and compatible): ``ollama://[host[:port]/][ns/]name[:tag]``.

Names and manifests are read by their one parser, ``dsmirror._formats.ollama``.

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
from collections.abc import Callable, Sequence
from pathlib import Path

from dsmirror._core.errors import BadResponse, NoSourceError, SourceError, UsageError
from dsmirror._core.settings import Settings
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import Catalog, Mirror
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest, NoPieceHashes, parse_manifest
from dsmirror._formats.ollama import (
    DEFAULT_HOST,
    MANIFEST_V2,
    OllamaBlob,
    OllamaName,
    parse_ollama_manifest,
    parse_ollama_name,
)
from dsmirror._install.ollama import ollama_after_install
from dsmirror._resolve.plan import PullOptions, PullPlan, select_mirrors, source_info
from dsmirror._resolve.registries.client import RepoURLs, describe, get_metadata
from dsmirror._resolve.registries.proof import FileFacts, Proofs, fetch_proofs, ollama_proof_path

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

#: An Ollama manifest lists a handful of blobs: a few KiB. Larger answers are refused.
MANIFEST_LIMIT = 4 << 20


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

    ``timeout`` bounds each mirror's exchange (redirects included), ``MANIFEST_LIMIT`` its size.
    ``skipped``, if given, receives ``"<mirror>: <why>"`` for each
    mirror asked before the one that served it.
    """
    problems: list[str] = [] if skipped is None else skipped
    for m in mirrors:
        url = f"{m.url.rstrip('/')}/v2/{name.namespace}/{name.name}/manifests/{name.tag}"
        try:
            doc = get_metadata(url, source=m.name, accept=MANIFEST_V2, timeout=timeout, limit=MANIFEST_LIMIT)
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


def _proofs(
    mirrors: Sequence[Mirror],
    served_by: str,
    manifest_sha256: str,
    blobs: Sequence[OllamaBlob],
    options: PullOptions,
) -> Proofs:
    """Piece hashes from the ``dsmirror serve`` boxes among ``mirrors`` that agree with the manifest's
    digests (``dsmirror._resolve.registries.proof``); those that failed to serve it are not asked."""
    names = [m.name for m in mirrors]
    before = names[: names.index(served_by)] if served_by in names else []
    path = ollama_proof_path(manifest_sha256)
    boxes, notes = fetch_proofs(mirrors, path, timeout=options.metadata_timeout, skip=before)
    proofs = Proofs(boxes[0].manifest.piece_size if boxes else DEFAULT_PIECE_SIZE, notes=notes)
    facts = {b.path: FileFacts(b.size, b.sha256) for b in blobs}
    for box in boxes:
        proofs.adopt(box, facts)
    return proofs


def _served_by(mirror: str, files: Sequence[FileEntry], proofs: Proofs) -> dict[str, bool] | None:
    """What a mirror may be asked for: not the blobs its proof contradicts (None: any)."""
    bad = proofs.contradicted.get(mirror)
    return None if not bad else {f.path: True for f in files if f.path not in bad}


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
    manifest_sha256 = hashlib.sha256(raw).hexdigest()
    proofs = _proofs(mirrors, served_by, manifest_sha256, blobs, options)
    ps = proofs.piece_size
    files = tuple(
        FileEntry(b.path, b.size, b.sha256, proofs.pieces.get(b.path) or NoPieceHashes(-(-b.size // ps)))
        for b in blobs
    )
    meta = {
        "source": "ollama",
        "model": f"{name.host}/{name.namespace}/{name.name}:{name.tag}",
        "manifest_sha256": manifest_sha256,
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
            files=_served_by(m.name, files, proofs),
        )
        for m in mirrors
    ]
    notes = [f"{name.short}: manifest sha256:{meta['manifest_sha256']} from {served_by}, {len(files)} blobs"]
    notes += [f"{why} (did not serve the manifest)" for why in skipped]
    notes += proofs.notes
    after = ollama_after_install(
        settings, dest, name.manifest_path, raw, ref_text, manifest, fmt=options.format
    )
    return PullPlan(manifest, sources, dest, after, notes)
