"""Ollama models as registry repositories: what ``/v2/<name>/...`` finds (``_oci_routes`` speaks the API).

A repository name maps onto the Ollama store's ``manifests/<host>/<namespace>/<name>/<tag>``::

    name              library/name, as Ollama and Docker clients read a one-part name
    ns/name           ns/name, filed under any registry host
    host/ns/name      ns/name filed under that host (registry.ollama.ai/library/tiny, hf.co/u/m)

Names and tags are checked by ``dsmirror._formats.ollama`` (the one rule). Blobs are scoped by
repository, as registries do: a blob is served under a name only if a manifest of that repository
names it. With a pull-through, a tag of a two-part name is what the upstream says it is (see
``_pullthrough``), else what the store has; listings (tags, the catalog) are what the store has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from dsmirror._core.errors import UsageError
from dsmirror._formats.ollama import DEFAULT_HOST, OllamaName
from dsmirror._serve._http import REGISTRY_API_VERSION, Reply, registry_error
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_index import OllamaModel
from dsmirror._serve._proof_routes import ProofRoutes
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._send import Content, Sender

__all__ = ["OllamaRepository", "OllamaRoutes", "is_digest", "name_unknown"]

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
#: A digest as the OCI image spec writes one (``algorithm:encoded``); the registered algorithms'
#: encodings are checked too. Only sha256 is ever stored: other valid digests are merely unknown.
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_REGISTERED = {"sha256": re.compile(r"[0-9a-f]{64}"), "sha512": re.compile(r"[0-9a-f]{128}")}


def name_unknown(name: str) -> Reply:
    return registry_error(404, "NAME_UNKNOWN", "repository name not known to registry", {"Name": name})


def is_digest(text: str) -> bool:
    if not _DIGEST.fullmatch(text):
        return False
    algorithm, encoded = text.split(":", 1)
    rule = _REGISTERED.get(algorithm)
    return rule is None or rule.fullmatch(encoded) is not None


@dataclass(frozen=True)
class OllamaRepository:
    """A repository name of the registry API, read as Ollama names a model (``host``: None for any)."""

    host: str | None
    namespace: str
    name: str

    @classmethod
    def parse(cls, parts: list[str]) -> OllamaRepository:
        """The repository the URL's name components name (404 NAME_UNKNOWN, 400 NAME_INVALID)."""
        if len(parts) == 1:
            repo = cls(None, "library", parts[0])
        elif len(parts) == 2:
            repo = cls(None, parts[0], parts[1])
        elif len(parts) == 3:
            repo = cls(parts[0], parts[1], parts[2])
        else:
            raise name_unknown("/".join(parts))
        if not repo.is_tag("latest"):
            raise registry_error(400, "NAME_INVALID", "invalid repository name", "/".join(parts))
        return repo

    def is_tag(self, tag: str) -> bool:
        """Whether ``<this repository>:tag`` is an Ollama model name."""
        try:
            OllamaName(self.host or DEFAULT_HOST, self.namespace, self.name, tag)
        except UsageError:
            return False
        return True

    def holds(self, model: OllamaModel) -> bool:
        same_name = (model.namespace, model.name) == (self.namespace, self.name)
        return same_name and self.host in (None, model.host)


class OllamaRoutes:
    def __init__(
        self,
        sender: Sender,
        pullthrough: PullThrough | None,
        blob_redirect_to: str | None,
        proof: ProofRoutes,
    ) -> None:
        self.sender = sender
        self.proof = proof
        self.pt = pullthrough
        self.blob_redirect_to = blob_redirect_to.rstrip("/") if blob_redirect_to else None

    @staticmethod
    def models(index: ModelIndex, repo: OllamaRepository) -> list[OllamaModel]:
        """Every tag of ``repo`` the store has."""
        return [m for m in index.ollama_models if repo.holds(m)]

    @staticmethod
    def repositories(index: ModelIndex) -> list[str]:
        """The repository names of the catalog: ``ns/name`` once each, sorted (the host form is an alias)."""
        return sorted({f"{m.namespace}/{m.name}" for m in index.ollama_models})

    async def model(self, index: ModelIndex, repo: OllamaRepository, reference: str) -> OllamaModel:
        """The model by tag or by manifest digest (404 MANIFEST_UNKNOWN, 400 DIGEST_INVALID)."""
        if ":" in reference and not is_digest(reference):
            raise registry_error(400, "DIGEST_INVALID", "invalid digest", {"Digest": reference})
        if self.pt is not None and repo.host is None and repo.is_tag(reference):
            remote = await self.pt.ollama.model(repo.namespace, repo.name, reference)
            if remote is not None:
                return remote
        model = index.find_ollama(repo.namespace, repo.name, reference)
        if model is None or not repo.holds(model):
            detail = {"Digest" if ":" in reference else "Tag": reference}
            raise registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown", detail)
        return model

    async def manifest(
        self, request: web.Request, index: ModelIndex, repo: OllamaRepository, reference: str
    ) -> web.Response:
        """The manifest bytes as stored, with their media type and digest (HEAD: the same headers)."""
        model = await self.model(index, repo, reference)
        return web.Response(
            body=model.manifest,
            headers={
                **REGISTRY_API_VERSION,
                "Content-Type": model.media_type,
                "Docker-Content-Digest": model.digest,
                "ETag": f'"{model.digest}"',
                **self.proof.ollama_headers(request, model),
            },
        )

    async def blob(
        self, request: web.Request, index: ModelIndex, repo: OllamaRepository, digest: str
    ) -> web.StreamResponse:
        """Blob bytes (HEAD, Range, conditional requests), or a 307 to ``blob_redirect_to``."""
        if not is_digest(digest):
            raise registry_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        headers = {**REGISTRY_API_VERSION, "Docker-Content-Digest": digest}
        found = self._stored_blob(index, repo, digest) if _SHA256.fullmatch(digest) else None
        if found is None and self.pt is not None and repo.host is None:
            pending = self.pt.ollama.blob(repo.namespace, repo.name, digest)
            if pending is not None:
                path, size = pending
                content = Content(digest, (digest,), path, size, digest, "application/octet-stream")
                if self.sender.servable(path):
                    return await self.sender.send(request, content, headers)
                pt, ns, name = self.pt, repo.namespace, repo.name
                return await self.sender.send_pulled(
                    request, content, headers, lambda: pt.ollama.job(ns, name, digest, path, size)
                )
        if found is None:
            raise registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"Digest": digest})
        source, size = found
        content = Content(digest, (digest,), source, size, digest, "application/octet-stream")
        if self.blob_redirect_to is not None and request.method == "GET":
            self.sender.raise_fault(content)
            # The real registry answers 307 to a presigned CDN URL; HEAD is answered here.
            location = self.blob_redirect_to + request.raw_path
            raise Reply(web.Response(status=307, headers={**REGISTRY_API_VERSION, "Location": location}))
        return await self.sender.send(request, content, headers)

    def _stored_blob(
        self, index: ModelIndex, repo: OllamaRepository, digest: str
    ) -> tuple[Path | bytes, int] | None:
        if repo.host is None:
            return index.find_ollama_blob(repo.namespace, repo.name, digest)
        for model in self.models(index, repo):
            if (size := model.blob_size(digest)) is not None:
                return model.blobs[digest], size
        return None
