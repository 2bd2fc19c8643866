"""The HTTP side: Hugging Face Hub, Ollama registry and ModelScope-like routes over a ``ModelIndex``.

Routes (all read-only; anything but GET/HEAD is 405)::

    GET  /healthz                                               {"status": "ok", counts...}
    GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true] model info (sha, siblings)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]           tree, ?recursive=, paged by Link rel=next
    HEAD|GET /{org}/{name}/resolve/{rev}/{path}                 file bytes + X-Repo-Commit, etags, Range
    GET  /api/...  (anything else, e.g. /api/agent-harnesses)   404 JSON, at once
    GET  /v2/                                                   {}
    HEAD|GET /v2/{ns}/{name}/manifests/{tag|digest}             manifest bytes as stored
    HEAD|GET /v2/{ns}/{name}/blobs/sha256:{hex}                 blob bytes, Range (or 307 elsewhere)
    GET  /api/v1/models/{org}/{name}/repo/files?Revision=&Recursive=   ModelScope-style listing
    HEAD|GET /api/v1/models/{org}/{name}/repo?Revision=&FilePath=      ModelScope-style file, Range
    GET  /dsmirror/status                                       health: what is served, pulls running
    GET  /dsmirror/manifests/{sha256}.json                      a served folder's dsmirror manifest
    HEAD|GET /dsmirror/files/{manifest name or sha256}/{path}   its files: a mirror of kind http

What is served comes from an ``IndexSource``: a fixed ``ModelIndex``, or a ``Library`` that
rescans the disk; a lookup that misses (``_Miss``) may trigger one rescan and one retry. With a
``PullThrough``, metadata is asked from the upstream first and files the index lacks are pulled
(see ``_pullthrough``); the bytes of a file being pulled are sent by ``_send_pulled``, which
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

Why not ``web.FileResponse``: it serves a ``<file>.gz``/``<file>.br`` sibling when the client
accepts that encoding (a file that is not in the index, with a different size), derives the
ETag from mtime and size instead of the content digest clients pin, and reads ``If-Range``
only as a date. ``_send`` keeps its good part (``loop.sendfile`` on the transport, blocking
opens in the executor) and implements single-range Range/If-Range/If-None-Match/If-Match
against the content etag.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import mimetypes
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlencode

from aiohttp import web

from dsmirror._serve._index import (
    HfRepo,
    ManifestFolder,
    ModelIndex,
    OllamaModel,
    ServedFile,
    check_repo_path,
)
from dsmirror._serve._library import IndexSource, StaticIndex
from dsmirror._serve._pullthrough import PullJob, PullThrough, iter_pieces, pull_error_status

__all__ = [
    "STATS",
    "ByteRange",
    "RangeNotSatisfiable",
    "ServeFaults",
    "ServeStats",
    "make_app",
    "parse_range",
]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_READ_ONLY = ("GET", "HEAD")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TRUE = ("1", "true", "yes")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ServeFaults:
    """Deliberate misbehaviour, for tests of clients only.

    A key names a file by its repo-relative path (``"model.bin"``), by repo id and path
    (``"org/name/model.bin"``), or, for Ollama, by blob digest (``"sha256:<hex>"``).
    ``corrupt_paths``: one byte of the file's content, at offset ``size // 2``, is flipped in
    every response that covers it (a consistently bad copy: only ranges holding that byte
    are bad); those files go through a streaming response instead of sendfile.
    ``status_for_paths``: HEAD and GET of the file are answered with that status instead.
    """

    corrupt_paths: set[str] = field(default_factory=set)
    status_for_paths: dict[str, int] = field(default_factory=dict)
    retry_after: float | None = None


@dataclass
class ServeStats:
    """Counters a test can read while the server runs (``app[STATS]``).

    ``bytes_by_file`` is keyed like fault keys' long form: ``"org/name/path"`` for
    HF/ModelScope files, ``"sha256:<hex>"`` for Ollama blobs. ``requests`` keeps the last
    1000 ``(method, raw path, status)`` triples.
    """

    bytes_total: int = 0
    bytes_by_file: dict[str, int] = field(default_factory=dict)
    requests: collections.deque[tuple[str, str, int]] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )

    def count(self, name: str, sent: int) -> None:
        self.bytes_total += sent
        self.bytes_by_file[name] = self.bytes_by_file.get(name, 0) + sent


STATS = web.AppKey("stats", ServeStats)


# --- Range -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


class RangeNotSatisfiable(Exception):
    pass


_RANGE_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Interpret a ``Range`` header for a representation of ``size`` bytes (RFC 9110 §14).

    ``None`` means "send everything with 200": no header, another unit, or several ranges
    (allowed to be ignored; no client of ours sends them). A malformed or unsatisfiable single
    range raises ``RangeNotSatisfiable`` (416) rather than being ignored, so a buggy resumer
    never appends a whole file to its partial copy. An empty file satisfies no range.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeNotSatisfiable(header)
    first, last = match.group(1), match.group(2)
    if size == 0:
        raise RangeNotSatisfiable(header)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    stop = size if last == "" else int(last) + 1
    if start >= size or stop <= start:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(stop, size))


def _etag_list_matches(header: str, etag: str, *, weak: bool) -> bool:
    if header.strip() == "*":
        return True
    for item in header.split(","):
        item = item.strip()
        is_weak = item.startswith("W/")
        if is_weak and not weak:
            continue
        if item.removeprefix("W/") == f'"{etag}"':
            return True
    return False


# --- what a response sends -------------------------------------------------------------


@dataclass(frozen=True)
class _Content:
    """A servable byte sequence: an indexed file, or bytes held in the index."""

    name: str
    fault_keys: tuple[str, ...]
    source: Path | bytes
    size: int
    etag: str
    content_type: str


class _Reply(Exception):
    """Carries a finished error response out of nested handler code."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class _Miss(_Reply):
    """A 404 for something a rescan of the disk might find (a model installed since the last scan)."""


def _json(status: int, payload: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def _hf_error(status: int, code: str | None, message: str, **headers: str) -> _Reply:
    extra = {"X-Error-Message": message, **headers}
    if code:
        extra["X-Error-Code"] = code
    response = _json(status, {"error": message}, extra)
    return _Miss(response) if status == 404 else _Reply(response)


def _registry_error(status: int, code: str, message: str, detail: object = None) -> _Reply:
    error = {"code": code, "message": message, "detail": detail}
    response = _json(status, {"errors": [error]})
    return _Miss(response) if status == 404 else _Reply(response)


def _ms_error(status: int, message: str) -> _Reply:
    response = _json(status, {"Code": status, "Message": message, "Success": False})
    return _Miss(response) if status == 404 else _Reply(response)


def _bad_request(message: str) -> _Reply:
    return _Reply(_json(400, {"error": message}))


def _split_target(raw_target: str) -> list[str]:
    """Decode the request target into path segments, refusing anything traversal-shaped."""
    path = raw_target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise _bad_request("request target must be an absolute path")
    segments: list[str] = []
    for raw in path[1:].split("/"):
        try:
            text = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise _bad_request("path is not UTF-8") from None
        if "\\" in text or any(ord(ch) < 0x20 or ch == "\x7f" for ch in text):
            raise _bad_request("control character or backslash in path")
        if any(part in (".", "..") for part in text.split("/")):
            raise _bad_request("dot segment in path")
        segments.append(text)
    return segments


def _repo_path(parts: list[str], *, encoded_slash_ok: bool = False) -> str:
    """Join decoded segments into a repo path, refusing anything unsafe with 400.

    Hub clients encode a slash only in the revision and in the tree path; anywhere else an
    encoded slash is refused rather than interpreted.
    """
    if not encoded_slash_ok and any("/" in part for part in parts):
        raise _bad_request("encoded slash in path")
    path = "/".join(parts)
    try:
        return check_repo_path(path)
    except ValueError as exc:
        raise _bad_request(str(exc)) from None


def _content_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def _file_content(repo: HfRepo, f: ServedFile) -> _Content:
    return _Content(
        name=f"{repo.repo_id}/{f.path}",
        fault_keys=(f.path, f"{repo.repo_id}/{f.path}"),
        source=f.disk_path,
        size=f.size,
        etag=f.etag,
        content_type=_content_type(f.path),
    )


# --- the service -----------------------------------------------------------------------


class _Service:
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
    ) -> None:
        self.source = source
        self.token = token
        self.faults = faults
        self.stats = stats
        self.tree_page_size = tree_page_size
        self.blob_redirect_to = blob_redirect_to.rstrip("/") if blob_redirect_to else None
        self.pt = pullthrough
        self.max_requests = max_requests
        self.max_requests_per_client = max_requests_per_client
        self.in_flight = 0
        self._by_client: dict[str, int] = {}
        self.started = time.time()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        client = request.remote or "?"
        if (
            self.in_flight >= self.max_requests
            or self._by_client.get(client, 0) >= self.max_requests_per_client
        ):
            return _json(503, {"error": "too many requests in flight"}, {"Retry-After": "1"})
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
                raise _Reply(_json(405, {"error": "read-only mirror"}, {"Allow": "GET, HEAD"}))
            segments = _split_target(request.raw_path)
            try:
                return await self._route(request, segments, self.source.index)
            except _Miss:
                if not await self.source.refresh_after_miss():
                    raise
            return await self._route(request, segments, self.source.index)
        except _Reply as reply:
            return reply.response

    def _servable(self, path: Path) -> bool:
        """Only indexed files and files a pull-through verified are ever opened."""
        return self.source.index.serves_path(path) or (self.pt is not None and self.pt.installed(path))

    def _authorize(self, request: web.Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return
        raise _Reply(
            _json(
                401, {"error": "a bearer token is required"}, {"WWW-Authenticate": 'Bearer realm="dsmirror"'}
            )
        )

    async def _route(self, request: web.Request, seg: list[str], index: ModelIndex) -> web.StreamResponse:
        match seg:
            case ["healthz"]:
                return _json(200, {"status": "ok", **index.counts()})
            # Hugging Face Hub
            case ["api", "models", org, name]:
                return self._hf_info(request, await self._hf_repo(index, org, name, None))
            case ["api", "models", org, name, "revision", rev]:
                return self._hf_info(request, await self._hf_repo(index, org, name, rev))
            case ["api", "models", org, name, "tree", rev, *path]:
                return self._hf_tree(request, await self._hf_repo(index, org, name, rev), path)
            # ModelScope-like
            case ["api", "v1", "models", org, name, "repo", "files"]:
                return self._ms_files(request, self._ms_repo(request, index, org, name))
            case ["api", "v1", "models", org, name, "repo"]:
                return await self._ms_file(request, self._ms_repo(request, index, org, name))
            case ["api", *_]:
                raise _Reply(_json(404, {"error": "no such API route on this mirror"}))
            # Ollama registry
            case ["v2"] | ["v2", ""]:
                return _json(200, {})
            case ["v2", ns, name, "manifests", reference]:
                return await self._ollama_manifest(index, ns, name, reference)
            case ["v2", ns, name, "blobs", digest]:
                return await self._ollama_blob(request, index, ns, name, digest)
            case ["v2", *_]:
                raise _Reply(
                    _json(404, {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]})
                )
            # dsmirror's own routes
            case ["dsmirror", "status"]:
                return self._status(index)
            case ["dsmirror", "manifests", name]:
                return self._manifest(index, name)
            case ["dsmirror", "files", key, *path] if path:
                return await self._folder_file(request, index, key, path)
            case ["dsmirror", *_]:
                raise _Reply(_json(404, {"error": "not found"}))
            # Hugging Face file download
            case [org, name, "resolve", rev, *path] if path:
                return await self._hf_resolve(request, await self._hf_repo(index, org, name, rev), path)
            case _:
                raise _Reply(_json(404, {"error": "not found"}))

    # --- dsmirror ----------------------------------------------------------------------

    def _status(self, index: ModelIndex) -> web.Response:
        folders = [
            {
                "name": f.name,
                "manifest_sha256": f.sha256,
                "files": len(f.files),
                "of_files": len(f.manifest.files),
                "hf_repo": f.repo_id,
            }
            for f in index.folders
        ]
        return _json(
            200,
            {
                "status": "ok",
                "uptime": round(time.time() - self.started, 1),
                **index.counts(),
                "folders": folders,
                "requests_in_flight": self.in_flight,
                "bytes_served": self.stats.bytes_total,
                "pull_through": self.pt.status() if self.pt is not None else None,
            },
        )

    def _manifest(self, index: ModelIndex, name: str) -> web.Response:
        sha = name.removesuffix(".json")
        if not _HEX64.fullmatch(sha):
            raise _bad_request("manifests are named <sha256>.json")
        manifest = index.find_manifest(sha)
        if manifest is None:
            raise _Miss(_json(404, {"error": f"no manifest {sha} is served here"}))
        return web.Response(
            body=manifest.canonical_bytes, content_type="application/json", headers={"ETag": f'"{sha}"'}
        )

    async def _folder_file(
        self, request: web.Request, index: ModelIndex, key: str, parts: list[str]
    ) -> web.StreamResponse:
        folder = index.find_folder(key)
        if folder is None:
            raise _Miss(_json(404, {"error": f"no manifest called {key} is served here"}))
        rel = _repo_path(parts)
        f = folder.files.get(rel)
        if f is not None:
            return await self._send(request, _folder_content(folder, f), {})
        try:
            entry = folder.manifest.file(rel)
        except KeyError:
            raise _Reply(_json(404, {"error": f"{rel} is not in {folder.name}"})) from None
        if self.pt is None or not self.pt.can_fill_folders():
            raise _Miss(_json(404, {"error": f"{rel} of {folder.name} is not here (yet)"}))
        pt = self.pt
        served = ServedFile(rel, folder.root / rel, entry.size, entry.sha256, None, lfs=True)
        return await self._send_pulled(
            request, _folder_content(folder, served), {}, lambda: pt.folder_job(folder, rel)
        )

    # --- Hugging Face ------------------------------------------------------------------

    async def _hf_repo(self, index: ModelIndex, org: str, name: str, rev: str | None) -> HfRepo:
        if not (_NAME_PART.fullmatch(org) and _NAME_PART.fullmatch(name)):
            raise _bad_request("not an org/name repo id")
        repo_id = f"{org}/{name}"
        if self.pt is not None:
            remote = await self.pt.hf_repo(repo_id, rev or "main")
            if remote is not None:
                return remote
        if not index.has_hf_repo(repo_id):
            raise _hf_error(404, "RepoNotFound", f"Repository {repo_id} not found")
        repo = index.default_hf(repo_id) if rev is None else index.find_hf(repo_id, rev)
        if repo is None:
            raise _hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    def _hf_info(self, request: web.Request, repo: HfRepo) -> web.Response:
        with_blobs = request.query.get("blobs", "").lower() in _TRUE
        siblings: list[dict[str, Any]] = []
        for f in sorted(repo.files.values(), key=lambda f: f.path):
            sibling: dict[str, Any] = {"rfilename": f.path}
            if with_blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        org = repo.repo_id.split("/")[0]
        return _json(
            200,
            {
                "_id": repo.commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": org,
                "sha": repo.commit,
                "private": False,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(f.size for f in repo.files.values()),
            },
        )

    def _hf_tree(self, request: web.Request, repo: HfRepo, path: list[str]) -> web.Response:
        base = _repo_path(path, encoded_slash_ok=True) if path and path != [""] else ""
        recursive = request.query.get("recursive", "").lower() in _TRUE
        entries = _tree_entries(repo, base, recursive=recursive)
        if entries is None:
            raise _hf_error(404, "EntryNotFound", f"{base} does not exist on {repo.commit}")
        try:
            cursor = int(request.query.get("cursor", "0"))
        except ValueError:
            raise _bad_request("bad cursor") from None
        if cursor < 0:
            raise _bad_request("bad cursor")
        page = entries[cursor : cursor + self.tree_page_size]
        headers: dict[str, str] = {}
        if cursor + self.tree_page_size < len(entries):
            query = [(k, v) for k, v in request.query.items() if k != "cursor"]
            query.append(("cursor", str(cursor + self.tree_page_size)))
            target = request.raw_path.split("?", 1)[0]
            headers["Link"] = f'<{request.scheme}://{request.host}{target}?{urlencode(query)}>; rel="next"'
        return _json(200, page, headers)

    async def _hf_resolve(self, request: web.Request, repo: HfRepo, path: list[str]) -> web.StreamResponse:
        rel = _repo_path(path)
        f = repo.files.get(rel)
        if f is None:
            raise _hf_error(404, "EntryNotFound", f"{rel} does not exist", **{"X-Repo-Commit": repo.commit})
        headers = {"X-Repo-Commit": repo.commit}
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.etag}"'
            headers["X-Linked-Size"] = str(f.size)
        if self.pt is not None and not self._servable(f.disk_path):
            pt = self.pt
            return await self._send_pulled(
                request, _file_content(repo, f), headers, lambda: pt.hf_job(repo, f)
            )
        return await self._send(request, _file_content(repo, f), headers)

    # --- ModelScope-like ---------------------------------------------------------------

    def _ms_repo(self, request: web.Request, index: ModelIndex, org: str, name: str) -> HfRepo:
        repo_id = f"{org}/{name}"
        if not (_NAME_PART.fullmatch(org) and _NAME_PART.fullmatch(name)) or not index.has_hf_repo(repo_id):
            raise _ms_error(404, f"model {repo_id} not found")
        # ModelScope's default branch is "master"; a repo published as "main" answers to it too.
        rev = request.query.get("Revision") or "master"
        repo = index.find_hf(repo_id, rev)
        if repo is None and rev in ("master", "main"):
            repo = index.default_hf(repo_id)
        if repo is None:
            raise _ms_error(404, f"revision {rev} of {repo_id} not found")
        return repo

    def _ms_files(self, request: web.Request, repo: HfRepo) -> web.Response:
        recursive = request.query.get("Recursive", "").lower() in _TRUE
        root = request.query.get("Root", "").strip("/")
        if root:
            root = _repo_path([root], encoded_slash_ok=True)
        entries = _tree_entries(repo, root, recursive=recursive)
        if entries is None:
            raise _ms_error(404, f"{root} not found")
        files: list[dict[str, Any]] = []
        for entry in entries:
            path = entry["path"]
            if entry["type"] == "directory":
                files.append(
                    {"Path": path, "Name": path.rsplit("/", 1)[-1], "Type": "tree", "Size": 0, "Sha256": None}
                )
                continue
            f = repo.files[path]
            files.append(
                {
                    "Path": f.path,
                    "Name": f.path.rsplit("/", 1)[-1],
                    "Size": f.size,
                    "Sha256": f.sha256,
                    "Type": "blob",
                    "Revision": repo.commit,
                    "IsLFS": f.lfs,
                }
            )
        return _json(200, {"Code": 200, "Success": True, "Data": {"Files": files}})

    async def _ms_file(self, request: web.Request, repo: HfRepo) -> web.StreamResponse:
        raw = request.query.get("FilePath")
        if not raw:
            raise _ms_error(400, "FilePath is required")
        try:
            rel = check_repo_path(raw)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        f = repo.files.get(rel)
        if f is None:
            raise _ms_error(404, f"file {rel} not found")
        return await self._send(request, _file_content(repo, f), {})

    # --- Ollama ------------------------------------------------------------------------

    async def _ollama_model(self, index: ModelIndex, ns: str, name: str, reference: str) -> OllamaModel:
        if not (_NAME_PART.fullmatch(ns) and _NAME_PART.fullmatch(name)):
            raise _registry_error(400, "NAME_INVALID", "invalid repository name")
        if self.pt is not None and _NAME_PART.fullmatch(reference):
            remote = await self.pt.ollama_model(ns, name, reference)
            if remote is not None:
                return remote
        model = index.find_ollama(ns, name, reference)
        if model is None:
            raise _registry_error(404, "MANIFEST_UNKNOWN", "manifest unknown", {"Tag": reference})
        return model

    async def _ollama_manifest(self, index: ModelIndex, ns: str, name: str, reference: str) -> web.Response:
        model = await self._ollama_model(index, ns, name, reference)
        return web.Response(
            body=model.manifest,
            headers={
                "Content-Type": model.media_type,
                "Docker-Content-Digest": model.digest,
                "ETag": f'"{model.digest}"',
            },
        )

    async def _ollama_blob(
        self, request: web.Request, index: ModelIndex, ns: str, name: str, digest: str
    ) -> web.StreamResponse:
        if not _DIGEST.fullmatch(digest):
            raise _registry_error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        found = index.find_ollama_blob(ns, name, digest)
        if found is None and self.pt is not None:
            pending = self.pt.ollama_blob(ns, name, digest)
            if pending is not None:
                path, size = pending
                content = _Content(digest, (digest,), path, size, digest, "application/octet-stream")
                headers = {"Docker-Content-Digest": digest}
                if self._servable(path):
                    return await self._send(request, content, headers)
                pt = self.pt
                return await self._send_pulled(
                    request, content, headers, lambda: pt.ollama_job(ns, name, digest, path, size)
                )
        if found is None:
            raise _registry_error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"Digest": digest})
        source, size = found
        content = _Content(digest, (digest,), source, size, digest, "application/octet-stream")
        if self.blob_redirect_to is not None and request.method == "GET":
            self._raise_fault(content)
            # The real registry answers 307 to a presigned CDN URL; HEAD is answered here.
            location = self.blob_redirect_to + request.raw_path
            raise _Reply(web.Response(status=307, headers={"Location": location}))
        return await self._send(request, content, {"Docker-Content-Digest": digest})

    # --- sending bytes -----------------------------------------------------------------

    def _raise_fault(self, content: _Content) -> None:
        for key in content.fault_keys:
            status = self.faults.status_for_paths.get(key)
            if status is not None:
                headers = {}
                if self.faults.retry_after is not None:
                    headers["Retry-After"] = f"{self.faults.retry_after:g}"
                raise _Reply(_json(status, {"error": f"injected fault for {key}"}, headers))

    def _corrupt_at(self, content: _Content) -> int | None:
        if content.size and any(k in self.faults.corrupt_paths for k in content.fault_keys):
            return content.size // 2
        return None

    def _plan(
        self, request: web.Request, content: _Content, headers: Mapping[str, str]
    ) -> tuple[web.StreamResponse, ByteRange]:
        """Check preconditions and Range; the response (not yet prepared) and the bytes it sends."""
        self._raise_fault(content)
        etag = f'"{content.etag}"'
        head = {**headers, "ETag": etag, "Accept-Ranges": "bytes", "Content-Type": content.content_type}

        # RFC 9110 §13.2.2: If-Match, then If-None-Match, then If-Range.
        if (if_match := request.headers.get("If-Match")) and not _etag_list_matches(
            if_match, content.etag, weak=False
        ):
            raise _Reply(web.Response(status=412, headers={"ETag": etag}))
        if (if_none := request.headers.get("If-None-Match")) and _etag_list_matches(
            if_none, content.etag, weak=True
        ):
            raise _Reply(
                web.Response(status=304, headers={k: v for k, v in head.items() if k != "Content-Type"})
            )
        range_header = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if if_range is not None and if_range.strip() != etag:
            # A weak tag or a date never matches: we keep no Last-Modified to compare with.
            range_header = None
        try:
            rng = parse_range(range_header, content.size)
        except RangeNotSatisfiable:
            raise _Reply(
                web.Response(status=416, headers={**head, "Content-Range": f"bytes */{content.size}"})
            ) from None

        span = rng or ByteRange(0, content.size)
        resp = web.StreamResponse(status=200 if rng is None else 206, headers=head)
        if rng is not None:
            resp.headers["Content-Range"] = rng.content_range(content.size)
        resp.content_length = span.stop - span.start
        return resp, span

    async def _send(
        self, request: web.Request, content: _Content, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        resp, span = self._plan(request, content, headers)
        if isinstance(content.source, bytes):
            await resp.prepare(request)
            if request.method == "GET" and span.stop > span.start:
                body = _flip(content.source[span.start : span.stop], span.start, self._corrupt_at(content))
                await resp.write(body)
                self.stats.count(content.name, len(body))
            await resp.write_eof()
            return resp

        loop = asyncio.get_running_loop()
        fobj = await loop.run_in_executor(None, self._open, content)
        try:
            await resp.prepare(request)
            if request.method == "GET" and span.stop > span.start:
                flip_at = self._corrupt_at(content)
                if flip_at is None:
                    sent = await _sendfile(request, resp, fobj, span)
                else:
                    sent = await _stream(resp, fobj, span, flip_at)
                self.stats.count(content.name, sent)
            await resp.write_eof()
        except ConnectionError:
            pass
        finally:
            fobj.close()
        return resp

    async def _send_pulled(
        self,
        request: web.Request,
        content: _Content,
        headers: Mapping[str, str],
        start_job: Callable[[], PullJob],
    ) -> web.StreamResponse:
        """Send a file the index lacks, pulling it through: only verified bytes, as they verify.

        HEAD is answered from the metadata alone. A GET joins (or starts) the file's one pull; if
        the pull has piece hashes, the response starts at once and each piece of the range is sent
        when verified, else the response waits for the whole file to verify (see _pullthrough).
        """
        resp, span = self._plan(request, content, headers)
        if request.method == "HEAD" or span.stop == span.start:
            await resp.prepare(request)
            await resp.write_eof()
            return resp
        job = start_job()
        if not job.finished and job.streams_pieces:
            return await self._stream_pulled(request, resp, content, span, job)
        try:
            await job.wait_done()
        except Exception as exc:
            status, extra = pull_error_status(exc)
            raise _Reply(_json(status, {"error": f"pulling {content.name} failed: {exc}"}, extra)) from None
        return await self._send(request, content, headers)

    async def _stream_pulled(
        self, request: web.Request, resp: web.StreamResponse, content: _Content, span: ByteRange, job: PullJob
    ) -> web.StreamResponse:
        manifest = job.manifest
        assert manifest is not None
        loop = asyncio.get_running_loop()
        pieces = list(iter_pieces(manifest, span.start, span.stop))
        try:
            await job.wait_piece(pieces[0])
        except Exception as exc:
            status, extra = pull_error_status(exc)
            raise _Reply(_json(status, {"error": f"pulling {content.name} failed: {exc}"}, extra)) from None
        fobj = await loop.run_in_executor(None, job.open_reader)
        sent = 0
        try:
            await resp.prepare(request)
            for piece in pieces:
                # After the headers, a failed pull can only be told by cutting the response short.
                await job.wait_piece(piece)
                lo, hi = max(span.start, piece.offset), min(span.stop, piece.offset + piece.length)
                sent += await _stream(resp, fobj, ByteRange(lo, hi), self._corrupt_at(content))
            await resp.write_eof()
        except ConnectionError:
            pass
        finally:
            fobj.close()
            self.stats.count(content.name, sent)
        return resp

    def _open(self, content: _Content) -> BinaryIO:
        """Open an indexed file, refusing anything that is no longer what was indexed.

        Runs in the executor. The path was resolved at index time; it must still resolve to
        itself (no symlink swapped in since), be one of the index's files, be a regular file
        and have the indexed size (else the advertised length and etag would be lies).
        """
        path = content.source
        assert isinstance(path, Path)

        def refuse(why: str) -> _Reply:
            logger.warning("not serving %s (%s): %s", content.name, path, why)
            return _Reply(_json(500, {"error": f"{content.name} {why}"}))

        if not self._servable(path) or os.path.realpath(path) != str(path):
            raise refuse("is no longer where it was indexed")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise refuse(f"cannot be read: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != content.size:
            os.close(fd)
            raise refuse("changed on disk since it was indexed")
        return os.fdopen(fd, "rb")


def _folder_content(folder: ManifestFolder, f: ServedFile) -> _Content:
    return _Content(
        name=f"{folder.name}/{f.path}",
        fault_keys=(f.path, f"{folder.name}/{f.path}"),
        source=f.disk_path,
        size=f.size,
        etag=f.etag,
        content_type=_content_type(f.path),
    )


def _flip(chunk: bytes, offset: int, flip_at: int | None) -> bytes:
    if flip_at is None or not offset <= flip_at < offset + len(chunk):
        return chunk
    out = bytearray(chunk)
    out[flip_at - offset] ^= 0xFF
    return bytes(out)


async def _sendfile(request: web.Request, resp: web.StreamResponse, fobj: BinaryIO, span: ByteRange) -> int:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    try:
        return await loop.sendfile(transport, fobj, span.start, span.stop - span.start)
    except NotImplementedError:
        return await _stream(resp, fobj, span, None)


async def _stream(resp: web.StreamResponse, fobj: BinaryIO, span: ByteRange, flip_at: int | None) -> int:
    loop = asyncio.get_running_loop()
    offset, sent = span.start, 0

    def read(at: int, n: int) -> bytes:
        fobj.seek(at)
        return fobj.read(n)

    while offset < span.stop:
        chunk = await loop.run_in_executor(None, read, offset, min(_CHUNK, span.stop - offset))
        if not chunk:
            break
        await resp.write(_flip(chunk, offset, flip_at))
        offset += len(chunk)
        sent += len(chunk)
    return sent


def _tree_entries(repo: HfRepo, base: str, *, recursive: bool) -> list[dict[str, Any]] | None:
    """The Hub's tree listing under ``base`` ("" = root), or None if ``base`` is no folder.

    Sorted by path, so a folder comes right before its content. A folder's oid is a SHA-1
    over its listing (stable, but not git's tree id: nothing checks it).
    """
    folders: dict[str, list[str]] = {"": []}
    for path in repo.files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            folders.setdefault(folder, [])
            folders["/".join(parts[: depth - 1])].append(folder)
        folders["/".join(parts[:-1])].append(path)
    if base not in folders:
        return None
    prefix = f"{base}/" if base else ""

    def wanted(path: str) -> bool:
        if not path.startswith(prefix):
            return False
        return recursive or "/" not in path[len(prefix) :]

    entries: list[dict[str, Any]] = []
    for folder in sorted(f for f in folders if f and wanted(f)):
        listing = "\n".join(sorted(set(folders[folder]))).encode()
        entries.append(
            {"type": "directory", "oid": hashlib.sha1(listing).hexdigest(), "size": 0, "path": folder}
        )
    for f in (repo.files[p] for p in sorted(repo.files) if wanted(p)):
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        entries.append(entry)
    entries.sort(key=lambda e: str(e["path"]))
    return entries


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
) -> web.Application:
    """The aiohttp application serving ``index`` (or what an ``IndexSource`` serves now) read-only.

    ``token``: when set, every route requires ``Authorization: Bearer <token>`` (else 401).
    ``tree_page_size``: entries per HF tree page (the Hub uses 1000).
    ``blob_redirect_to``: answer Ollama blob GETs with 307 to this base URL + the same path,
    as the real registry does to its CDN.
    ``pullthrough``: pull what is missing from upstream (started and closed with the app).
    ``max_requests`` / ``max_requests_per_client``: requests handled at once, in all and per
    client address; beyond them the answer is 503 with Retry-After.
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
    )
    app = web.Application(client_max_size=client_max_size)
    app[STATS] = stats
    app.router.add_route("*", "/{tail:.*}", service.dispatch)
    app.on_response_prepare.append(_recorder(stats))
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
        stats.requests.append((request.method, request.raw_path, response.status))

    return record
