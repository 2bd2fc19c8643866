"""The Hugging Face Hub routes: model info, the tree listing and file downloads.

::

    GET  /api/models/{org}/{name}[/revision/{rev}][?blobs=true] model info (sha, siblings)
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]           tree, ?recursive=, paged by Link rel=next
    HEAD|GET /{org}/{name}/resolve/{rev}/{path}                 file bytes + X-Repo-Commit, etags, Range

Errors are answered as the Hub does (``X-Error-Code``: ``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), which ``huggingface_hub`` turns into its own exceptions. With a pull-through,
the repo at a revision is what the upstream lists (see ``_pullthrough``), else what the index has.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from dsmirror._serve._hf_index import HfRepo, ServedFile, is_repo_id
from dsmirror._serve._http import (
    TRUE,
    Miss,
    Reply,
    bad_request,
    content_type,
    json_reply,
    repo_path,
)
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._proof_routes import ProofRoutes
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._send import Content, Sender

__all__ = ["HfRoutes", "repo_file_content", "tree_entries"]


def hf_error(status: int, code: str | None, message: str, **headers: str) -> Reply:
    extra = {"X-Error-Message": message, **headers}
    if code:
        extra["X-Error-Code"] = code
    response = json_reply(status, {"error": message}, extra)
    return Miss(response) if status == 404 else Reply(response)


def repo_file_content(repo: HfRepo, f: ServedFile) -> Content:
    return Content(
        name=f"{repo.repo_id}/{f.path}",
        fault_keys=(f.path, f"{repo.repo_id}/{f.path}"),
        source=f.disk_path,
        size=f.size,
        etag=f.etag,
        content_type=content_type(f.path),
    )


class HfRoutes:
    def __init__(
        self, sender: Sender, pullthrough: PullThrough | None, tree_page_size: int, proof: ProofRoutes
    ) -> None:
        self.sender = sender
        self.pt = pullthrough
        self.tree_page_size = tree_page_size
        self.proof = proof

    async def repo(self, index: ModelIndex, org: str, name: str, rev: str | None) -> HfRepo:
        repo_id = f"{org}/{name}"
        if not is_repo_id(repo_id):
            raise bad_request("not an org/name repo id")
        if self.pt is not None:
            remote = await self.pt.hf.repo(repo_id, rev or "main")
            if remote is not None:
                return remote
        if not index.has_hf_repo(repo_id):
            raise hf_error(404, "RepoNotFound", f"Repository {repo_id} not found")
        repo = index.default_hf(repo_id) if rev is None else index.find_hf(repo_id, rev)
        if repo is None:
            raise hf_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo

    def info(self, request: web.Request, repo: HfRepo) -> web.Response:
        with_blobs = request.query.get("blobs", "").lower() in TRUE
        siblings: list[dict[str, Any]] = []
        for f in sorted(repo.files.values(), key=lambda f: f.path):
            sibling: dict[str, Any] = {"rfilename": f.path}
            if with_blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
            siblings.append(sibling)
        org = repo.repo_id.split("/")[0]
        return json_reply(
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
            self.proof.hf_headers(request, repo),
        )

    def tree(self, request: web.Request, repo: HfRepo, path: list[str]) -> web.Response:
        base = repo_path(path, encoded_slash_ok=True) if path and path != [""] else ""
        recursive = request.query.get("recursive", "").lower() in TRUE
        entries = tree_entries(repo, base, recursive=recursive)
        if entries is None:
            raise hf_error(404, "EntryNotFound", f"{base} does not exist on {repo.commit}")
        try:
            cursor = int(request.query.get("cursor", "0"))
        except ValueError:
            raise bad_request("bad cursor") from None
        if cursor < 0:
            raise bad_request("bad cursor")
        page = entries[cursor : cursor + self.tree_page_size]
        headers = self.proof.hf_headers(request, repo)
        if cursor + self.tree_page_size < len(entries):
            query = [(k, v) for k, v in request.query.items() if k != "cursor"]
            query.append(("cursor", str(cursor + self.tree_page_size)))
            target = request.raw_path.split("?", 1)[0]
            headers["Link"] = f'<{request.scheme}://{request.host}{target}?{urlencode(query)}>; rel="next"'
        return json_reply(200, page, headers)

    async def resolve(self, request: web.Request, repo: HfRepo, path: list[str]) -> web.StreamResponse:
        rel = repo_path(path)
        f = repo.files.get(rel)
        if f is None:
            raise hf_error(404, "EntryNotFound", f"{rel} does not exist", **{"X-Repo-Commit": repo.commit})
        headers = {"X-Repo-Commit": repo.commit, **self.proof.hf_headers(request, repo)}
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.etag}"'
            headers["X-Linked-Size"] = str(f.size)
        if self.pt is not None and not self.sender.servable(f.disk_path):
            pt = self.pt
            return await self.sender.send_pulled(
                request, repo_file_content(repo, f), headers, lambda: pt.hf.job(repo, f)
            )
        return await self.sender.send(request, repo_file_content(repo, f), headers)


def tree_entries(repo: HfRepo, base: str, *, recursive: bool) -> list[dict[str, Any]] | None:
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
