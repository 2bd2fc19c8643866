"""ModelScope-like routes over the same repos as the Hugging Face routes.

::

    GET  /api/v1/models/{org}/{name}/repo/files?Revision=&Recursive=   the listing
    HEAD|GET /api/v1/models/{org}/{name}/repo?Revision=&FilePath=      one file, Range

ModelScope's default branch is ``master``; a repo published as ``main`` answers to it too.
Errors are ModelScope's JSON (``{"Code", "Message", "Success": false}``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dsmirror._serve._hf_index import HfRepo, is_repo_id
from dsmirror._serve._hf_routes import repo_file_content, tree_entries
from dsmirror._serve._http import TRUE, Miss, Reply, checked_path, json_reply, repo_path
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._send import Sender

__all__ = ["ModelScopeRoutes"]


def ms_error(status: int, message: str) -> Reply:
    response = json_reply(status, {"Code": status, "Message": message, "Success": False})
    return Miss(response) if status == 404 else Reply(response)


class ModelScopeRoutes:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender

    def repo(self, request: web.Request, index: ModelIndex, org: str, name: str) -> HfRepo:
        repo_id = f"{org}/{name}"
        if not is_repo_id(repo_id) or not index.has_hf_repo(repo_id):
            raise ms_error(404, f"model {repo_id} not found")
        rev = request.query.get("Revision") or "master"
        repo = index.find_hf(repo_id, rev)
        if repo is None and rev in ("master", "main"):
            repo = index.default_hf(repo_id)
        if repo is None:
            raise ms_error(404, f"revision {rev} of {repo_id} not found")
        return repo

    def files(self, request: web.Request, repo: HfRepo) -> web.Response:
        recursive = request.query.get("Recursive", "").lower() in TRUE
        root = request.query.get("Root", "").strip("/")
        if root:
            root = repo_path([root], encoded_slash_ok=True)
        entries = tree_entries(repo, root, recursive=recursive)
        if entries is None:
            raise ms_error(404, f"{root} not found")
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
        return json_reply(200, {"Code": 200, "Success": True, "Data": {"Files": files}})

    async def file(self, request: web.Request, repo: HfRepo) -> web.StreamResponse:
        raw = request.query.get("FilePath")
        if not raw:
            raise ms_error(400, "FilePath is required")
        rel = checked_path(raw)
        f = repo.files.get(rel)
        if f is None:
            raise ms_error(404, f"file {rel} not found")
        return await self.sender.send(request, repo_file_content(repo, f), {})
