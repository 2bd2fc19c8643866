"""Sending the bytes of a file (or of bytes held in the index) in answer to HEAD and GET.

Why not ``web.FileResponse``: it serves a ``<file>.gz``/``<file>.br`` sibling when the client
accepts that encoding (a file that is not in the index, with a different size), derives the
ETag from mtime and size instead of the content digest clients pin, and reads ``If-Range``
only as a date. ``Sender.send`` keeps its good part (``loop.sendfile`` on the transport, blocking
opens in the executor) and implements single-range Range/If-Range/If-None-Match/If-Match
against the content etag (``_ranges``).

Only files that are indexed, or that a pull-through verified and put in place, are ever opened
(``servable``); ``Sender.send_pulled`` sends a file still being pulled, and never sends a byte
before it is verified.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from dsmirror._serve._http import Reply, json_reply
from dsmirror._serve._pulljob import PullJob, iter_pieces, pull_error_status
from dsmirror._serve._ranges import ByteRange, plan_response

__all__ = ["ROUTE_KIND", "ROUTE_KINDS", "Content", "Sender", "ServeFaults", "ServeStats", "route_kind"]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024

#: What a request is, for the counters: set on each request by the dispatcher.
ROUTE_KIND = web.RequestKey("dsmirror_route_kind", str)
#: The kinds of routes that send model bytes, and "status" (the page, status, metrics), "other".
ROUTE_KINDS = ("hf", "modelscope", "ollama", "folder", "status", "other")


def route_kind(segments: list[str]) -> str:
    """Which protocol a request's decoded path segments speak (one of ``ROUTE_KINDS``)."""
    match segments:
        case ["api", "v1", *_]:
            return "modelscope"
        case ["api", *_] | [_, _, "resolve", *_]:
            return "hf"
        case ["v2", *_]:
            return "ollama"
        case ["dsmirror", "files" | "manifests", *_]:
            return "folder"
        case [""] | ["metrics"] | ["healthz"] | ["dsmirror", *_]:
            return "status"
    return "other"


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
    """Counters a test (and the status page) can read while the server runs (``app[STATS]``).

    ``bytes_by_file`` is keyed like fault keys' long form: ``"org/name/path"`` for
    HF/ModelScope files, ``"sha256:<hex>"`` for Ollama blobs; ``bytes_by_kind`` by route kind
    (``ROUTE_KINDS``). ``requests`` keeps the last 1000 ``(method, raw path, status)`` triples;
    ``responses`` counts every response by ``(route kind, status)``.
    """

    bytes_total: int = 0
    bytes_by_file: dict[str, int] = field(default_factory=dict)
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    requests: collections.deque[tuple[str, str, int]] = field(
        default_factory=lambda: collections.deque(maxlen=1000)
    )
    responses: dict[tuple[str, int], int] = field(default_factory=dict)

    def count(self, name: str, sent: int, kind: str = "other") -> None:
        self.bytes_total += sent
        self.bytes_by_file[name] = self.bytes_by_file.get(name, 0) + sent
        self.bytes_by_kind[kind] = self.bytes_by_kind.get(kind, 0) + sent

    def answered(self, method: str, raw_path: str, kind: str, status: int) -> None:
        self.requests.append((method, raw_path, status))
        self.responses[kind, status] = self.responses.get((kind, status), 0) + 1


@dataclass(frozen=True)
class Content:
    """A servable byte sequence: an indexed file, or bytes held in the index."""

    name: str
    fault_keys: tuple[str, ...]
    source: Path | bytes
    size: int
    etag: str
    content_type: str


class Sender:
    """Sends ``Content``: faults and stats applied, only servable files opened."""

    def __init__(self, servable: Callable[[Path], bool], faults: ServeFaults, stats: ServeStats) -> None:
        #: Whether a disk path may be opened: an indexed file, or one a pull-through verified.
        self.servable = servable
        self.faults = faults
        self.stats = stats

    def raise_fault(self, content: Content) -> None:
        for key in content.fault_keys:
            status = self.faults.status_for_paths.get(key)
            if status is not None:
                headers = {}
                if self.faults.retry_after is not None:
                    headers["Retry-After"] = f"{self.faults.retry_after:g}"
                raise Reply(json_reply(status, {"error": f"injected fault for {key}"}, headers))

    def _corrupt_at(self, content: Content) -> int | None:
        if content.size and any(k in self.faults.corrupt_paths for k in content.fault_keys):
            return content.size // 2
        return None

    def _plan(
        self, request: web.Request, content: Content, headers: Mapping[str, str]
    ) -> tuple[web.StreamResponse, ByteRange]:
        self.raise_fault(content)
        return plan_response(
            request, size=content.size, etag=content.etag, content_type=content.content_type, headers=headers
        )

    async def send(
        self, request: web.Request, content: Content, headers: Mapping[str, str]
    ) -> web.StreamResponse:
        resp, span = self._plan(request, content, headers)
        if isinstance(content.source, bytes):
            await resp.prepare(request)
            if request.method == "GET" and span.stop > span.start:
                body = _flip(content.source[span.start : span.stop], span.start, self._corrupt_at(content))
                await resp.write(body)
                self.stats.count(content.name, len(body), request.get(ROUTE_KIND, "other"))
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
                self.stats.count(content.name, sent, request.get(ROUTE_KIND, "other"))
            await resp.write_eof()
        except ConnectionError:
            pass
        finally:
            fobj.close()
        return resp

    async def send_pulled(
        self,
        request: web.Request,
        content: Content,
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
            raise _pull_failed(content, exc) from None
        return await self.send(request, content, headers)

    async def _stream_pulled(
        self, request: web.Request, resp: web.StreamResponse, content: Content, span: ByteRange, job: PullJob
    ) -> web.StreamResponse:
        manifest = job.manifest
        assert manifest is not None
        loop = asyncio.get_running_loop()
        pieces = list(iter_pieces(manifest, span.start, span.stop))
        try:
            await job.wait_piece(pieces[0])
        except Exception as exc:
            raise _pull_failed(content, exc) from None
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
            self.stats.count(content.name, sent, request.get(ROUTE_KIND, "other"))
        return resp

    def _open(self, content: Content) -> BinaryIO:
        """Open an indexed file, refusing anything that is no longer what was indexed.

        Runs in the executor. The path was resolved at index time; it must still resolve to
        itself (no symlink swapped in since), be one of the index's files, be a regular file
        and have the indexed size (else the advertised length and etag would be lies).
        """
        path = content.source
        assert isinstance(path, Path)

        def refuse(why: str) -> Reply:
            logger.warning("not serving %s (%s): %s", content.name, path, why)
            return Reply(json_reply(500, {"error": f"{content.name} {why}"}))

        if not self.servable(path) or os.path.realpath(path) != str(path):
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


def _pull_failed(content: Content, exc: Exception) -> Reply:
    status, extra = pull_error_status(exc)
    return Reply(json_reply(status, {"error": f"pulling {content.name} failed: {exc}"}, extra))


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
