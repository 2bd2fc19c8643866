"""The box's proof on the wire: the piece manifests of ``_proofs``, and the headers that point at them.

::

    GET  /dsmirror/proof/hf/{org}/{name}/{commit}.json      an HF repo at a commit (40 hex)
    GET  /dsmirror/proof/ollama/sha256:{hex}.json           an Ollama model by its manifest digest

Both answer the canonical bytes of a dsmirror manifest of what is proven so far (``ETag``: their
SHA-256), or 404 while nothing of the model is. The paths are spelled by the client's side,
``dsmirror._resolve.registries.proof``, which asks them of every non-official mirror.

Advertised with ``X-Dsmirror-Manifest: <absolute URL>`` on the model info, tree and resolve
answers of a repo (and the registry manifest of an Ollama model) once something of it is proven,
and ``X-Dsmirror-Signature: <resolve URL>`` when the repo holds a ``model.sig`` (a served folder
kept next to its files appears in its repo as one: ``_folder_index``). Unmodified clients ignore
both headers.
"""

from __future__ import annotations

import hashlib
import re

from aiohttp import web

from dsmirror._formats import hfcache
from dsmirror._formats.signature import SIGNATURE_NAME
from dsmirror._resolve.registries.proof import PROOF_HEADER, hf_proof_path, ollama_proof_path
from dsmirror._serve._hf_index import HfRepo
from dsmirror._serve._http import Miss, bad_request, json_reply
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_index import OllamaModel
from dsmirror._serve._proofs import ProofBook

__all__ = ["SIGNATURE_HEADER", "ProofRoutes"]

#: Where the repo's ``model.sig`` can be fetched (its resolve URL at the commit).
SIGNATURE_HEADER = "X-Dsmirror-Signature"
_OLLAMA = re.compile(r"sha256:([0-9a-f]{64})\.json")


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


class ProofRoutes:
    """Proof documents and headers over a ``ProofBook`` (with none: 404s and no headers)."""

    def __init__(self, book: ProofBook | None) -> None:
        self.book = book

    def hf_headers(self, request: web.Request, repo: HfRepo) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.book is not None and self.book.hf_manifest(repo) is not None:
            headers[PROOF_HEADER] = _base(request) + hf_proof_path(repo.repo_id, repo.commit)
        if SIGNATURE_NAME in repo.files:
            headers[SIGNATURE_HEADER] = (
                f"{_base(request)}/{repo.repo_id}/resolve/{repo.commit}/{SIGNATURE_NAME}"
            )
        return headers

    def ollama_headers(self, request: web.Request, model: OllamaModel) -> dict[str, str]:
        if self.book is None or self.book.ollama_manifest(model) is None:
            return {}
        return {PROOF_HEADER: _base(request) + ollama_proof_path(model.digest.removeprefix("sha256:"))}

    @staticmethod
    def _answer(body: bytes | None, what: str) -> web.Response:
        if body is None:
            raise Miss(json_reply(404, {"error": f"no piece manifest of {what} here (yet)"}))
        etag = hashlib.sha256(body).hexdigest()
        return web.Response(body=body, content_type="application/json", headers={"ETag": f'"{etag}"'})

    def hf(self, repo: HfRepo) -> web.Response:
        return self._answer(None if self.book is None else self.book.hf_manifest(repo), repo.repo_id)

    @staticmethod
    def hf_commit(name: str) -> str:
        commit = name.removesuffix(".json")
        if not name.endswith(".json") or not hfcache.is_commit(commit):
            raise bad_request("proofs of HF repos are named <commit>.json (40 hex)")
        return commit

    def ollama(self, index: ModelIndex, name: str) -> web.Response:
        match = _OLLAMA.fullmatch(name)
        if match is None:
            raise bad_request("proofs of Ollama models are named sha256:<manifest digest>.json")
        digest = f"sha256:{match.group(1)}"
        model = next((m for m in index.ollama_models if m.digest == digest), None)
        if model is None:
            raise Miss(json_reply(404, {"error": f"no Ollama model with manifest {digest} is served here"}))
        return self._answer(None if self.book is None else self.book.ollama_manifest(model), model.reference)
