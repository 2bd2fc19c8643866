"""The HTTP side: Hugging Face Hub, Ollama registry and ModelScope-like routes over a ``ModelIndex``.

Routes (all read-only; anything but GET/HEAD is 405)::

    GET  /healthz                                               {"status": "ok", counts...}
    GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true] model info (sha, siblings)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]           tree, ?recursive=, paged by Link rel=next
    HEAD|GET /{org}/{name}/resolve/{rev}/{path}                 file bytes + X-Repo-Commit, etags, Range
    GET  /api/...  (anything else, e.g. /api/agent-harnesses)   404 JSON, at once
    GET  /v2/, /v2/_catalog, /v2/{name}/tags/list               the registry API (OCI distribution,
    HEAD|GET /v2/{name}/manifests/{tag|digest}                  pull side; see _oci_routes)
    HEAD|GET /v2/{name}/blobs/{digest}                          blob bytes, Range (or 307 elsewhere)
    GET  /api/v1/models/{org}/{name}/repo/files?Revision=&Recursive=   ModelScope-style listing
    HEAD|GET /api/v1/models/{org}/{name}/repo?Revision=&FilePath=      ModelScope-style file, Range
    GET  /                                                      the status page (HTML, live)
    GET  /dsmirror/static/{status.js|status.css|favicon.svg}    its script, style sheet, icon
    GET  /dsmirror/status                                       the status document (JSON, _status)
    GET  /metrics                                               Prometheus text (_metrics)
    GET  /dsmirror/manifests/{sha256}.json                      a served folder's dsmirror manifest
    HEAD|GET /dsmirror/files/{manifest name or sha256}/{path}   its files: a mirror of kind http
    GET  /dsmirror/proof/hf/{org}/{name}/{commit}.json          piece manifest of a repo's proven files
    GET  /dsmirror/proof/ollama/sha256:{hex}.json               ... of an Ollama model (_proof_routes)

What is served comes from an ``IndexSource``: a fixed ``ModelIndex``, or a ``Library`` that
rescans the disk; a lookup that misses (``Miss``) may trigger one rescan and one retry. With a
``PullThrough``, metadata is asked from the upstream first and files the index lacks are pulled
(see ``_pullthrough``); the bytes of a file being pulled are sent by ``Sender.send_pulled``, which
never sends a byte before it is verified.

Why one dispatcher instead of aiohttp's router: the router matches on a path in which
``%2F`` may or may not have been decoded, which is exactly the ambiguity path-traversal
tricks live in. Here the raw request target is split on literal ``/`` first and each
segment is decoded on its own, so an encoded slash can only ever stay inside one segment
(HF clients legitimately send ``refs%2Fpr%2F1`` revisions and ``sub%2Fdir`` tree paths).
Any segment that is, or contains a component that is, ``.``/``..``, or that holds a control
character or backslash, is refused with 400 before routing; so is an encoded slash in a
file path of a download route. After routing, paths are only ever used as keys into the
index: no filesystem path is built from a URL.

What each route answers is in its module: ``_hf_routes``, ``_ms_routes``, ``_oci_routes``,
``_folder_routes``, ``_status_routes`` (the page, the status, metrics); how bytes are sent
(Range, conditional requests, sendfile) in ``_send`` and ``_ranges``.

Documented in docs/formats.md#dsmirror-serve-http-routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from dsmirror._serve._folder_routes import FolderRoutes
from dsmirror._serve._hf_routes import HfRoutes
from dsmirror._serve._http import Miss, Reply, bad_request, json_reply, registry_error
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._library import IndexSource, Library, StaticIndex
from dsmirror._serve._ms_routes import ModelScopeRoutes
from dsmirror._serve._oci_routes import RegistryRoutes, write_refused
from dsmirror._serve._ollama_routes import OllamaRoutes
from dsmirror._serve._proof_routes import ProofRoutes
from dsmirror._serve._proofs import ProofBook
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._send import ROUTE_KIND, Sender, ServeFaults, ServeStats, route_kind
from dsmirror._serve._status import Status
from dsmirror._serve._status_routes import PUBLIC_PATHS, StatusRoutes

__all__ = ["STATS", "STATUS", "make_app"]

_READ_ONLY = ("GET", "HEAD")

STATS = web.AppKey("stats", ServeStats)
#: What the status page shows; ``build_app`` feeds its ``seeding`` from the seeder.
STATUS = web.AppKey("status", Status)


def _split_target(raw_target: str) -> list[str]:
    """Decode the request target into path segments, refusing anything traversal-shaped."""
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise bad_request("request target must be an absolute path")
    segments: list[str] = []
    for raw in path[1:].split("/"):
        try:
            text = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise bad_request("path is not UTF-8") from None
        if "\\" in text or any(ord(ch) < 0x20 or ch == "\x7f" for ch in text):
            raise bad_request("control character or backslash in path")
        if any(part in (".", "..") for part in text.split("/")):
            raise bad_request("dot segment in path")
        segments.append(text)
    return segments


class _Service:
    """The dispatcher: limits, the token, read-only, one rescan after a miss, the route table."""

    def __init__(
        self,
        source: IndexSource,
        *,
        token: str | None,
        faults: ServeFaults,
        stats: ServeStats,
        tree_page_size: int,
        blob_redirect_to: str | None,
        pullthrough: PullThrough | None,
        max_requests: int,
        max_requests_per_client: int,
        proofs: ProofBook | None,
    ) -> None:
        self.source = source
        self.proofs = proofs
        self.token = token
        self.stats = stats
        self.pt = pullthrough
        self.max_requests = max_requests
        self.max_requests_per_client = max_requests_per_client
        self.in_flight = 0
        self._by_client: dict[str, int] = {}
        digests = source.digests if isinstance(source, Library) else None
        self.status = Status(
            stats,
            pullthrough=pullthrough,
            digests=digests,
            in_flight=lambda: self.in_flight,
            proofs=proofs,
        )
        self.status_routes = StatusRoutes(self.status)
        sender = Sender(self._servable, faults, stats)
        self.proof = ProofRoutes(proofs)
        self.hf = HfRoutes(sender, pullthrough, tree_page_size, self.proof)
        self.ms = ModelScopeRoutes(sender)
        self.registry = RegistryRoutes(OllamaRoutes(sender, pullthrough, blob_redirect_to, self.proof))
        self.folders = FolderRoutes(sender, pullthrough)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        client = request.remote or "?"
        if (
            self.in_flight >= self.max_requests
            or self._by_client.get(client, 0) >= self.max_requests_per_client
        ):
            return json_reply(503, {"error": "too many requests in flight"}, {"Retry-After": "1"})
        self.in_flight += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        try:
            return await self._dispatch(request)
        finally:
            self.in_flight -= 1
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authorize(request)
            if request.method not in _READ_ONLY:
                if request.raw_path.startswith("/v2/"):
                    raise Reply(write_refused())
                raise Reply(json_reply(405, {"error": "read-only mirror"}, {"Allow": "GET, HEAD"}))
            segments = _split_target(request.raw_path)
            request[ROUTE_KIND] = route_kind(segments)
            try:
                return await self._route(request, segments, self.source.index)
            except Miss:
                if not await self.source.refresh_after_miss():
                    raise
            return await self._route(request, segments, self.source.index)
        except Reply as reply:
            return reply.response

    def _servable(self, path: Path) -> bool:
        """Only indexed files and files a pull-through verified are ever opened."""
        return self.source.index.serves_path(path) or (self.pt is not None and self.pt.installed(path))

    def _authorize(self, request: web.Request) -> None:
        if self.token is None or request.raw_path.split("?", 1)[0] in PUBLIC_PATHS:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="dsmirror"'}
        if request.raw_path.startswith("/v2"):  # the registry API's error shape
            raise registry_error(401, "UNAUTHORIZED", "a bearer token is required", headers=challenge)
        raise Reply(json_reply(401, {"error": "a bearer token is required"}, challenge))

    async def _route(self, request: web.Request, seg: list[str], index: ModelIndex) -> web.StreamResponse:
        hf, ms, folders = self.hf, self.ms, self.folders
        if self.proofs is not None:
            self.proofs.watch(index)  # what a rescan brought is proven next
        match seg:
            case ["healthz"]:
                return json_reply(200, {"status": "ok", **index.counts()})
            # Hugging Face Hub
            case ["api", "models", org, name]:
                return hf.info(request, await hf.repo(index, org, name, None))
            case ["api", "models", org, name, "revision", rev]:
                return hf.info(request, await hf.repo(index, org, name, rev))
            case ["api", "models", org, name, "tree", rev, *path]:
                return hf.tree(request, await hf.repo(index, org, name, rev), path)
            # ModelScope-like
            case ["api", "v1", "models", org, name, "repo", "files"]:
                return ms.files(request, ms.repo(request, index, org, name))
            case ["api", "v1", "models", org, name, "repo"]:
                return await ms.file(request, ms.repo(request, index, org, name))
            case ["api", *_]:
                raise Reply(json_reply(404, {"error": "no such API route on this mirror"}))
            # the registry API (OCI distribution; Ollama models)
            case ["v2", *rest]:
                return await self.registry.route(request, index, rest)
            # what the box is doing
            case [""]:
                return self.status_routes.page()
            case ["dsmirror", "static", name]:
                return self.status_routes.asset(name)
            case ["dsmirror", "status"]:
                return await self.status_routes.json(index)
            case ["metrics"]:
                return await self.status_routes.metrics(index)
            # dsmirror's own routes
            case ["dsmirror", "manifests", name]:
                return folders.manifest(index, name)
            case ["dsmirror", "files", key, *path] if path:
                return await folders.file(request, index, key, path)
            case ["dsmirror", "proof", "hf", org, name, commit]:
                return self.proof.hf(await hf.repo(index, org, name, self.proof.hf_commit(commit)))
            case ["dsmirror", "proof", "ollama", digest]:
                return self.proof.ollama(index, digest)
            # Hugging Face file download (before the catch-all below: served folders are dsmirror/<name>)
            case [org, name, "resolve", rev, *path] if path:
                return await hf.resolve(request, await hf.repo(index, org, name, rev), path)
            case ["dsmirror", *_]:
                raise Reply(json_reply(404, {"error": "not found"}))
            case _:
                raise Reply(json_reply(404, {"error": "not found"}))


def make_app(
    index: ModelIndex | IndexSource,
    *,
    token: str | None = None,
    faults: ServeFaults | None = None,
    tree_page_size: int = 1000,
    blob_redirect_to: str | None = None,
    client_max_size: int = 64 * 1024,
    pullthrough: PullThrough | None = None,
    max_requests: int = 1024,
    max_requests_per_client: int = 128,
    proofs: ProofBook | None = None,
) -> web.Application:
    """The aiohttp application serving ``index`` (or what an ``IndexSource`` serves now) read-only.

    ``token``: when set, every route requires ``Authorization: Bearer <token>`` (else 401).
    ``tree_page_size``: entries per HF tree page (the Hub uses 1000).
    ``blob_redirect_to``: answer Ollama blob GETs with 307 to this base URL + the same path,
    as the real registry does to its CDN.
    ``pullthrough``: pull what is missing from upstream (started and closed with the app).
    ``max_requests`` / ``max_requests_per_client``: requests handled at once, in all and per
    client address; beyond them the answer is 503 with Retry-After.
    ``proofs``: publish piece manifests of what is served (its worker runs with the app; see
    ``_proofs``); None: no proof routes (404) and no proof headers.
    """
    if tree_page_size < 1:
        raise ValueError("tree_page_size must be positive")
    stats = ServeStats()
    service = _Service(
        StaticIndex(index) if isinstance(index, ModelIndex) else index,
        token=token,
        faults=faults or ServeFaults(),
        stats=stats,
        tree_page_size=tree_page_size,
        blob_redirect_to=blob_redirect_to,
        pullthrough=pullthrough,
        max_requests=max_requests,
        max_requests_per_client=max_requests_per_client,
        proofs=proofs,
    )
    app = web.Application(client_max_size=client_max_size)
    app[STATS] = stats
    app[STATUS] = service.status
    app.router.add_route("*", "/{tail:.*}", service.dispatch)
    app.on_response_prepare.append(_recorder(stats))
    app.cleanup_ctx.append(_status_ticker(service.status))
    if proofs is not None:
        book, served = proofs, service.source

        async def start_proving(_app: web.Application) -> None:
            book.start()
            book.watch(served.index)

        async def stop_proving(_app: web.Application) -> None:
            await asyncio.get_running_loop().run_in_executor(None, book.stop)

        app.on_startup.append(start_proving)
        app.on_cleanup.append(stop_proving)
    if pullthrough is not None:
        pt = pullthrough

        async def start(_app: web.Application) -> None:
            await pt.start()

        async def stop(_app: web.Application) -> None:
            await pt.close()

        app.on_startup.append(start)
        app.on_cleanup.append(stop)
    return app


def _recorder(stats: ServeStats) -> Callable[[web.Request, web.StreamResponse], Any]:
    async def record(request: web.Request, response: web.StreamResponse) -> None:
        stats.answered(request.method, request.raw_path, request.get(ROUTE_KIND, "other"), response.status)

    return record


def _status_ticker(status: Status) -> Callable[[web.Application], AsyncIterator[None]]:
    """While the app runs: recent errors are collected, the history sampled, pulls logged."""

    async def ticker(_app: web.Application) -> AsyncIterator[None]:
        async def tick_forever() -> None:
            while True:
                status.tick()
                await asyncio.sleep(status.history.interval)

        status.errors.install()
        task = asyncio.ensure_future(tick_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            status.errors.uninstall()

    return ticker
