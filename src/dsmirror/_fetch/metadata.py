"""Small documents from servers — manifests, file listings, model info, registry manifests — bounded.

Every metadata reader of dsmirror (a manifest URL, the Hugging Face, ModelScope and Ollama
resolvers) asks through a ``MetadataSession``: one server, one deadline, any number of GETs.

Bounded in bytes
    A body is counted while it streams, before it is kept: past ``limit`` bytes the request ends
    (``TooLarge``), whatever the server declared. The session asks for ``gzip`` or ``deflate``
    and decodes them itself, bounding the output of every step of the decoder (httpx's own
    decoder inflates a whole network read at once: half a MiB of a gzip bomb is half a GiB), so a
    compressed body costs at most ``limit`` decoded bytes too; another encoding is refused. Of an
    error page (any status but 2xx) the first ``ERROR_PAGE_LIMIT`` bytes are kept, for the
    message, and the rest is not read. Redirects are followed here, without reading their bodies
    (httpx reads a redirect's body whole before it follows it).
Bounded in time
    Every request of a session ends by the session's deadline, ``timeout`` seconds after it was
    opened by the injected clock: each socket operation, the response head included, waits at
    most what is left (``dsmirror._fetch.transport``). So a server that drips its answer costs
    ``timeout`` and no more, and a listing of many pages gets ``timeout`` for all of them.

Every failure is a ``SourceError`` of the session's source, raised from the original error
(whatever httpx, h11, idna or ssl raised): ``Stalled`` when the deadline passed ("no answer" if
not one byte came, "the answer did not end" if some did), ``SourceUnavailable`` for a connection
that failed or broke, ``TooLarge`` past the limit, ``BadResponse`` for undecodable or unusable
answers.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from dsmirror._core.clock import Clock, SystemClock
from dsmirror._core.errors import BadResponse, SourceError, SourceUnavailable, Stalled, TooLarge
from dsmirror._fetch.http import USER_AGENT, redact, shared_ssl_context
from dsmirror._fetch.transport import Deadline, Sockets, bounded

if TYPE_CHECKING:
    # Imported when a session is opened: importing this module (every resolver does, a pull of a
    # manifest file too) must not cost httpx's ~40 ms when no document is fetched.
    import httpx

__all__ = ["ERROR_PAGE_LIMIT", "METADATA_LIMIT", "Metadata", "MetadataSession"]

#: Metadata documents (listings, manifests) larger than this are refused as implausible.
METADATA_LIMIT = 64 << 20
#: What is kept of an error page: enough for a message.
ERROR_PAGE_LIMIT = 64 << 10
_MAX_REDIRECTS = 10


@dataclass(frozen=True)
class Metadata:
    """An answer as received: the URL after redirects, its status, headers and (decoded) body."""

    url: str
    status: int
    headers: httpx.Headers
    body: bytes  # whole for a 2xx answer; at most ERROR_PAGE_LIMIT bytes of any other


class _Inflate:
    """gzip or zlib-wrapped deflate, decoded a bounded step at a time into the caller's buffer."""

    STEP = 1 << 20  # the most one decompress call may produce

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zlib.MAX_WBITS | 32)  # either header, detected

    def feed(self, data: bytes, out: bytearray, limit: int) -> None:
        """Decode ``data`` into ``out``; stops once ``out`` is past ``limit`` (then refused)."""
        while data and len(out) <= limit and not self._z.eof:
            got = self._z.decompress(data, min(self.STEP, limit - len(out) + 1))
            if not got and self._z.unconsumed_tail == data:
                break  # defensive: no progress (zlib always makes some while it has room)
            out += got
            data = self._z.unconsumed_tail


class _Identity:
    def feed(self, data: bytes, out: bytearray, limit: int) -> None:
        out += data


class MetadataSession:
    """GETs of small documents from one server (``source``), bounded in bytes and in time.

    ``timeout`` bounds the whole session: see the module docstring. ``headers`` go with every
    request (a token among them goes only to the URL's origin: redirects elsewhere drop it, as
    httpx does). ``transport`` is for tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        *,
        source: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        self.source = source
        self.timeout = timeout
        self.deadline = Deadline(timeout, clock or SystemClock())
        base = httpx.Headers({"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"})
        base.update(headers or {})  # by name, in any case: one User-Agent
        self._sockets = Sockets()
        self._client = self._sockets.arm(
            httpx.Client(
                timeout=timeout,
                follow_redirects=False,  # followed in get(): see the module docstring
                trust_env=True,
                transport=transport,
                headers=base,
                verify=shared_ssl_context() if transport is None else True,
            )
        )

    def __enter__(self) -> MetadataSession:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sockets.abort()
        self._client.close()

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = METADATA_LIMIT,
    ) -> Metadata:
        """GET ``url``, following redirects; the answer whatever its status (see ``Metadata``)."""
        import httpx

        where = redact(url)
        try:
            with bounded(self.deadline):
                self._check_time(where)
                request = self._client.build_request("GET", url, params=params, headers=headers)
                for _ in range(_MAX_REDIRECTS + 1):
                    resp = self._client.send(request, stream=True)
                    try:
                        if resp.next_request is None:
                            where = redact(str(resp.url))
                            room = limit if resp.is_success else ERROR_PAGE_LIMIT
                            body = self._read(resp, room, strict=resp.is_success, where=where)
                            return Metadata(str(resp.url), resp.status_code, resp.headers, body)
                        request = resp.next_request
                        where = redact(str(request.url))
                    finally:
                        resp.close()
                raise BadResponse("too many redirects", source=self.source, url=where)
        except SourceError:
            raise
        except httpx.TimeoutException as exc:
            raise self._late(where) from exc
        except httpx.ConnectError as exc:
            raise SourceUnavailable(f"cannot connect: {exc}", source=self.source, url=where) from exc
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise BadResponse(f"unusable URL: {exc}", source=self.source, url=where) from exc
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"connection broke: {exc}", source=self.source, url=where) from exc
        except Exception as exc:  # idna, ssl, h11, ...: whatever the server made a library raise
            raise BadResponse(f"{type(exc).__name__}: {exc}", source=self.source, url=where) from exc

    def _read(self, resp: httpx.Response, limit: int, *, strict: bool, where: str) -> bytes:
        """The decoded body; past ``limit`` bytes: TooLarge if ``strict``, else cut there."""
        encoding = resp.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            decoder: _Inflate | _Identity = _Inflate()
        elif encoding == "identity":
            decoder = _Identity()
        else:
            raise BadResponse(
                f"sent Content-Encoding {encoding!r}, not asked for", source=self.source, url=where
            )
        body = bytearray()
        wire = 0
        for raw in resp.iter_raw():
            wire += len(raw)
            try:
                decoder.feed(raw, body, limit)
            except zlib.error as exc:
                raise BadResponse(
                    f"the {encoding} body is corrupt: {exc}", source=self.source, url=where
                ) from exc
            if len(body) > limit or wire > limit:
                if not strict:
                    return bytes(body[:limit])
                raise TooLarge(limit, source=self.source, url=where)
            self._check_time(where)
        return bytes(body)

    def _check_time(self, where: str) -> None:
        if self.deadline.left() <= 0:
            raise self._late(where)

    def _late(self, where: str) -> Stalled:
        what = "no answer" if not self.deadline.received else "the answer did not end"
        return Stalled(f"{what} within {self.timeout:g} s", source=self.source, url=where)
