"""The registry API under ``/v2/``: the pull side of the OCI distribution spec, read-only.

::

    GET       /v2/                                      {} (Docker-Distribution-API-Version: registry/2.0)
    GET       /v2/_catalog[?n=&last=]                   {"repositories": [...]}, Link rel="next"
    GET       /v2/<name>/tags/list[?n=&last=]           {"name", "tags"}, Link rel="next"
    HEAD|GET  /v2/<name>/manifests/<tag|digest>         manifest bytes as stored, its media type
    HEAD|GET  /v2/<name>/blobs/<digest>                 blob bytes, Range (or 307 elsewhere)
    GET       /v2/<name>/referrers/<digest>             404 UNSUPPORTED (clients fall back)
    anything but GET/HEAD                               405 UNSUPPORTED: a read-only mirror

``<name>`` is one to three components (``tiny``, ``library/tiny``, ``registry.ollama.ai/library/tiny``):
how they map onto the Ollama store is ``_ollama_routes``'s. Every answer carries
``Docker-Distribution-API-Version``; manifests and blobs carry ``Docker-Content-Digest`` and their
exact ``Content-Length`` (HEAD too). Errors are the spec's: ``{"errors": [{"code", "message",
"detail"}]}`` with ``NAME_UNKNOWN``/``MANIFEST_UNKNOWN``/``BLOB_UNKNOWN`` (404), ``NAME_INVALID``/
``DIGEST_INVALID`` (400), ``UNSUPPORTED`` (405, or 400 for a bad ``n``).

Listings are sorted by code point (Go's ``sort.Strings`` order, which the spec names) and paged as
the spec says: at most ``n`` entries after ``last`` (exclusive); when more remain, a
``Link: </v2/...?n=N&last=L>; rel="next"`` header. ``n=0`` is an empty page with no ``Link``. A page
holds at most ``MAX_PAGE`` entries whatever ``n`` asks (the spec lets a page with a ``Link`` be short).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from dsmirror._serve._http import REGISTRY_API_VERSION, json_reply, registry_error
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_routes import OllamaRepository, OllamaRoutes, name_unknown

__all__ = ["MAX_PAGE", "RegistryRoutes", "page", "write_refused"]

#: The most entries one page of a listing holds.
MAX_PAGE = 1000

_COUNT = re.compile(r"[0-9]+")


def write_refused() -> web.StreamResponse:
    """The answer to a push or delete: this registry is a read-only mirror."""
    reply = registry_error(
        405,
        "UNSUPPORTED",
        "read-only mirror: pushes and deletes are not supported",
        headers={"Allow": "GET, HEAD"},
    )
    return reply.response


def page(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """The entries of sorted ``items`` after ``last``, at most ``n`` and ``MAX_PAGE``; whether more remain."""
    if last is not None:
        items = [item for item in items if item > last]
    size = MAX_PAGE if n is None else min(n, MAX_PAGE)
    return items[:size], size > 0 and len(items) > size


def _page_request(request: web.Request) -> tuple[int | None, str | None]:
    """``n`` and ``last`` from the query (400 UNSUPPORTED for an ``n`` that is not a count)."""
    n_text, last = request.query.get("n"), request.query.get("last")
    if n_text is None or n_text == "":
        return None, last
    if not _COUNT.fullmatch(n_text):
        raise registry_error(400, "UNSUPPORTED", "n must be a non-negative integer", {"n": n_text[:100]})
    # More digits than any page needs: no int() of thousands of digits.
    return (int(n_text) if len(n_text) <= 9 else MAX_PAGE), last


def _listing(
    request: web.Request, path: str, key: str, entries: list[str], extra: dict[str, str]
) -> web.Response:
    """One page of ``entries`` as ``{**extra, key: [...]}``, with a ``Link`` to the next page of ``path``."""
    n, last = _page_request(request)
    shown, more = page(entries, n, last)
    headers = dict(REGISTRY_API_VERSION)
    if more:
        size = MAX_PAGE if n is None else min(n, MAX_PAGE)
        next_url = f"{path}?n={size}&last={quote(shown[-1], safe='')}"
        headers["Link"] = f'<{next_url}>; rel="next"'
    return json_reply(200, {**extra, key: shown}, headers)


class RegistryRoutes:
    """The ``/v2/`` route table over ``OllamaRoutes`` (what is served)."""

    def __init__(self, ollama: OllamaRoutes) -> None:
        self.ollama = ollama

    async def route(self, request: web.Request, index: ModelIndex, rest: list[str]) -> web.StreamResponse:
        """Answer ``/v2/<rest...>`` (``rest``: the decoded path segments after ``v2``)."""
        ollama = self.ollama
        match rest:
            case [] | [""]:
                return json_reply(200, {}, REGISTRY_API_VERSION)
            case ["_catalog"]:
                return _listing(request, "/v2/_catalog", "repositories", ollama.repositories(index), {})
            case [*name, "tags", "list"] if name:
                repo = OllamaRepository.parse(name)
                tags = sorted(m.tag for m in ollama.models(index, repo))
                if not tags:
                    raise name_unknown("/".join(name))
                path = "/v2/" + "/".join(quote(part, safe="") for part in name) + "/tags/list"
                return _listing(request, path, "tags", tags, {"name": "/".join(name)})
            case [*name, "manifests", reference] if name:
                return await ollama.manifest(request, index, OllamaRepository.parse(name), reference)
            case [*name, "blobs", digest] if name:
                return await ollama.blob(request, index, OllamaRepository.parse(name), digest)
            case [*name, "referrers", _digest] if name:
                raise registry_error(404, "UNSUPPORTED", "the referrers API is not supported")
            case _:
                raise name_unknown("/".join(rest))
