"""dsmirror's own routes for served manifest folders (``--folder``): a mirror of kind ``http``.

::

    GET  /dsmirror/manifests/{sha256}.json                      a served folder's dsmirror manifest
    HEAD|GET /dsmirror/files/{manifest name or sha256}/{path}   its files

A ``pull`` with this server as a mirror of kind ``http`` fetches ``files/<name>/<path>`` and checks
every piece against the manifest. With a pull-through that has plain mirrors, a file of the
manifest that the folder lacks is pulled from them, and its verified pieces stream as they land.
"""

from __future__ import annotations

import re

from aiohttp import web

from dsmirror._serve._folder_index import ManifestFolder
from dsmirror._serve._hf_index import ServedFile
from dsmirror._serve._http import Miss, Reply, bad_request, content_type, json_reply, repo_path
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._send import Content, Sender

__all__ = ["FolderRoutes"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _folder_content(folder: ManifestFolder, f: ServedFile) -> Content:
    return Content(
        name=f"{folder.name}/{f.path}",
        fault_keys=(f.path, f"{folder.name}/{f.path}"),
        source=f.disk_path,
        size=f.size,
        etag=f.etag,
        content_type=content_type(f.path),
    )


class FolderRoutes:
    def __init__(self, sender: Sender, pullthrough: PullThrough | None) -> None:
        self.sender = sender
        self.pt = pullthrough

    def manifest(self, index: ModelIndex, name: str) -> web.Response:
        sha = name.removesuffix(".json")
        if not _HEX64.fullmatch(sha):
            raise bad_request("manifests are named <sha256>.json")
        manifest = index.find_manifest(sha)
        if manifest is None:
            raise Miss(json_reply(404, {"error": f"no manifest {sha} is served here"}))
        return web.Response(
            body=manifest.canonical_bytes, content_type="application/json", headers={"ETag": f'"{sha}"'}
        )

    async def file(
        self, request: web.Request, index: ModelIndex, key: str, parts: list[str]
    ) -> web.StreamResponse:
        folder = index.find_folder(key)
        if folder is None:
            raise Miss(json_reply(404, {"error": f"no manifest called {key} is served here"}))
        rel = repo_path(parts)
        f = folder.files.get(rel)
        if f is not None:
            return await self.sender.send(request, _folder_content(folder, f), {})
        try:
            entry = folder.manifest.file(rel)
        except KeyError:
            raise Reply(json_reply(404, {"error": f"{rel} is not in {folder.name}"})) from None
        if self.pt is None or not self.pt.can_fill_folders():
            raise Miss(json_reply(404, {"error": f"{rel} of {folder.name} is not here (yet)"}))
        pt = self.pt
        served = ServedFile(rel, folder.root / rel, entry.size, entry.sha256, None, lfs=True)
        return await self.sender.send_pulled(
            request, _folder_content(folder, served), {}, lambda: pt.folder_job(folder, rel)
        )
