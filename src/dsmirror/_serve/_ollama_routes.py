"""The Ollama registry routes (the OCI distribution API's read side).

::

    GET  /v2/                                                   {}
    HEAD|GET /v2/{ns}/{name}/manifests/{tag|digest}             manifest bytes as stored
    HEAD|GET /v2/{ns}/{name}/blobs/sha256:{hex}                 blob bytes, Range (or 307 elsewhere)

Blobs are scoped by repository, as registries do: a blob is served under ``ns/name`` only if a
manifest of that repository names it. Errors are the distribution API's
(``{"errors": [{"code", "message", "detail"}]}``). With a pull-through, a tag is what the
upstream says it is (see ``_pullthrough``), else what the store has.
"""

from __future__ import annotations

import re

from aiohttp import web

from dsmirror._core.errors import UsageError
from dsmirror._formats.ollama import DEFAULT_HOST, OllamaName
from dsmirror._serve._http import Miss, Reply, json_reply
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_index import OllamaModel
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._send import Content, Sender

__all__ = ["OllamaRoutes", "registry_error"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def registry_error(status: int, code: str, message: str, detail: object = None) -> Reply:
    error = {"code": code, "message": message, "detail": detail}
    response = json_reply(status, {"errors": [error]})
    return Miss(response) if status == 404 else Reply(response)


def _is_name(ns: str, name: str, tag: str = "latest") -> bool:
    """Whether ``ns/name:tag`` is an Ollama model name (the one rule, ``dsmirror._formats.ollama``)."""
    try:
        OllamaName(DEFAULT_HOST, ns, name, tag)
    except UsageError:
        return False
    return True


class OllamaRoutes:
    def __init__(self, sender: Sender, pullthrough: PullThrough | None, blob_redirect_to: str | None) -> None:
        self.sender = sender
        self.pt = pullthrough
        self.blob_redirect_to = blob_redirect_to.rstrip("/") if blob_redirect_to else None

    async def model(self, index: ModelIndex, ns: str, name: str, reference: str) -> OllamaModel:
        if not _is_name(ns, name):
            raise registry_error(400, "NAME_INVALID", "invalid repository name")
        if self.pt is not None and _is_name(ns, name, reference):
            remote = await self.pt.ollama.model(ns, name, reference)
            if remote is not None:
                return remote
        model = index.find_ollama(ns, name, reference)
        if model is None:
            raise registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag": reference})
        return model

    async def manifest(self, index: ModelIndex, ns: str, name: str, reference: str) -> web.Response:
        model = await self.model(index, ns, name, reference)
        return web.Response(
            body=model.manifest,
            headers={
                "Content-Type": model.media_type,
                "Docker-Content-Digest": model.digest,
                "ETag": f'"{model.digest}"',
            },
        )

    async def blob(
        self, request: web.Request, index: ModelIndex, ns: str, name: str, digest: str
    ) -> web.StreamResponse:
        if not _DIGEST.fullmatch(digest):
            raise registry_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        found = index.find_ollama_blob(ns, name, digest)
        if found is None and self.pt is not None:
            pending = self.pt.ollama.blob(ns, name, digest)
            if pending is not None:
                path, size = pending
                content = Content(digest, (digest,), path, size, digest, "application/octet-stream")
                headers = {"Docker-Content-Digest": digest}
                if self.sender.servable(path):
                    return await self.sender.send(request, content, headers)
                pt = self.pt
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
            raise Reply(web.Response(status=307, headers={"Location": location}))
        return await self.sender.send(request, content, {"Docker-Content-Digest": digest})
