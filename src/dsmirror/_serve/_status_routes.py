"""The routes that show what the box is doing: the status page, its JSON document, ``/metrics``.

::

    GET  /                              the status page (HTML; static: holds no data itself)
    GET  /dsmirror/static/{name}        its script, style sheet and icon (status.js, status.css,
                                        favicon.svg)
    GET  /dsmirror/status               the status document (JSON, ``_status``)
    GET  /metrics                       the same counters for Prometheus (``_metrics``)

The page is plain HTML, CSS and one small script shipped as package data (``static/``): no build
step, nothing fetched from elsewhere, so it works on a LAN without internet. Its script polls
``/dsmirror/status`` every 2 s and puts every string it shows in with ``textContent``; the page is
sent with a Content-Security-Policy that allows scripts, styles and requests only from the server
itself and no inline script. The page and its files are the same for everyone and hold no
data, so they are served without ``--token``; the script asks for the token when the status
answers 401 and sends it as ``Authorization: Bearer``. The status and ``/metrics`` need the token
like every other route.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources

from aiohttp import web

from dsmirror._serve._http import Reply, json_reply
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._metrics import CONTENT_TYPE, render_metrics
from dsmirror._serve._status import Status

__all__ = ["PUBLIC_PATHS", "StatusRoutes"]

#: The static files, by the name in their URL (nothing else under static/ is ever sent).
_ASSETS = {
    "status.html": "text/html; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Request targets answered without the token: the page and its files, which hold no data.
PUBLIC_PATHS = frozenset(["/", *(f"/dsmirror/static/{name}" for name in _ASSETS if name != "status.html")])

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _asset(name: str) -> bytes:
    return (importlib.resources.files("dsmirror._serve") / "static" / name).read_bytes()


class StatusRoutes:
    """Answers the routes above from one ``Status``."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def page(self) -> web.Response:
        return self.asset("status.html")

    def asset(self, name: str) -> web.Response:
        content_type = _ASSETS.get(name)
        if content_type is None:
            raise Reply(json_reply(404, {"error": "not found"}))
        return web.Response(body=_asset(name), headers={"Content-Type": content_type, **_PAGE_HEADERS})

    async def document(self, index: ModelIndex) -> dict[str, object]:
        models = await asyncio.get_running_loop().run_in_executor(None, self.status.models, index)
        return self.status.document(index, models)

    async def json(self, index: ModelIndex) -> web.Response:
        return json_reply(200, await self.document(index), {"Cache-Control": "no-store"})

    async def metrics(self, index: ModelIndex) -> web.Response:
        text = render_metrics(await self.document(index))
        return web.Response(
            body=text.encode(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        )
