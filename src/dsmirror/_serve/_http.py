"""What every route shares: error answers carried as exceptions, JSON bodies, repo paths from URLs.

A handler that must answer with an error raises ``Reply`` (or ``Miss``, a 404 a rescan of the disk
might turn into a hit) from however deep it is; the dispatcher (``_app``) sends the response it
carries. Repo paths come from URL segments the dispatcher has already decoded one by one; here
they are joined and checked against the one rule set (``dsmirror._formats.paths``).
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Mapping

from aiohttp import web

from dsmirror._formats.paths import check_repo_path

__all__ = [
    "REGISTRY_API_VERSION",
    "TRUE",
    "Miss",
    "Reply",
    "bad_request",
    "checked_path",
    "content_type",
    "json_reply",
    "registry_error",
    "repo_path",
]

#: Query values that switch a flag on (``?recursive=true``).
TRUE = ("1", "true", "yes")


class Reply(Exception):
    """Carries a finished error response out of nested handler code."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


class Miss(Reply):
    """A 404 for something a rescan of the disk might find (a model installed since the last scan)."""


def json_reply(status: int, payload: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=dict(headers or {}),
    )


def bad_request(message: str) -> Reply:
    return Reply(json_reply(400, {"error": message}))


#: Sent with every answer of the registry routes (``/v2/``): Docker-era clients look for it.
REGISTRY_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}

#: The registry error codes a rescan of the disk might turn into a hit.
_RESCAN_MIGHT_FIND = ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN")


def registry_error(
    status: int, code: str, message: str, detail: object = None, headers: Mapping[str, str] | None = None
) -> Reply:
    """An error of the registry API (OCI distribution spec): ``{"errors": [{code, message, detail}]}``.

    ``code`` is one of the spec's (``NAME_UNKNOWN``, ``MANIFEST_UNKNOWN``, ``BLOB_UNKNOWN``,
    ``NAME_INVALID``, ``DIGEST_INVALID``, ``UNSUPPORTED``, ...). An unknown name, manifest or blob is
    a ``Miss``: a model installed since the last scan may be found by a rescan.
    """
    error = {"code": code, "message": message, "detail": detail}
    response = json_reply(status, {"errors": [error]}, {**REGISTRY_API_VERSION, **(headers or {})})
    return Miss(response) if status == 404 and code in _RESCAN_MIGHT_FIND else Reply(response)


def repo_path(parts: list[str], *, encoded_slash_ok: bool = False) -> str:
    """Join decoded segments into a repo path, refusing anything unsafe with 400.

    Hub clients encode a slash only in the revision and in the tree path; anywhere else an
    encoded slash is refused rather than interpreted.
    """
    if not encoded_slash_ok and any("/" in part for part in parts):
        raise bad_request("encoded slash in path")
    return checked_path("/".join(parts))


def checked_path(path: str) -> str:
    """``path`` if it is a safe repo path (``dsmirror._formats.paths``), else a 400."""
    try:
        return check_repo_path(path)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def content_type(path: str) -> str:
    return mimetypes.guess_type(path)[0] or "application/octet-stream"
