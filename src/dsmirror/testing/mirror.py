"""A real HTTP mirror on loopback, with a bandwidth cap, latency, outages and faults.

:class:`MirrorServer` serves the files under a directory over HTTP/1.1 (keep-alive, ``GET`` and
``HEAD``, single byte ranges) the way a download mirror or CDN does, so the downloader can be
tested and benchmarked against real sockets instead of mocks. Everything a flaky mirror does can
be set when the server is built and changed from the test thread while responses are streaming::

    with MirrorServer(root, host="127.0.0.2", rate=4_000_000, latency=0.02) as mirror:
        download(mirror.url + "model.bin")          # ~4 MB/s over all connections together
        mirror.set_faults(Faults(corrupt=True, count=1, paths={"model.bin"}))
        mirror.set_down(True)                        # refuses connections, aborts responses
        mirror.set_down(False)                       # back on the same host:port
        assert mirror.bytes_served_by_path["model.bin"] >= size

Unthrottled, fault-free bodies go out with ``sendfile(2)`` in large slices (about 2 GB/s on
loopback), so the server is not the bottleneck of a benchmark.

Bandwidth: one token bucket is shared by every connection of a server, which is how a mirror's
uplink behaves: three parallel range requests to a 4 MB/s mirror get about 4/3 MB/s each, not
4 MB/s each. A sender waits until the bucket holds the bytes of its next chunk (about 50 ms of
data, at most 64 KiB), then takes them; the bucket holds at most one chunk, so an idle server
bursts by one chunk only and the long-run rate is exact. Senders take their turns in the order
they asked (a queue): with whoever woke first taking the tokens, one connection of eight got no
byte for over a second on a loaded machine while the others streamed, which no real uplink's
TCP sharing does (a stuck flow is the ``crawl`` fault's job). Waiters re-check every 50 ms and are
woken by :meth:`MirrorServer.set_rate`, so a new rate applies to responses already streaming
within that time.

Faults (:class:`Faults`) decide per request, in this order: ``status``, ``redirect_to``,
``html_instead`` replace the whole response; ``ignore_range`` and ``wrong_content_range`` change
how a ``Range`` header is answered; ``corrupt``, ``reset_after``, ``stall_after`` and
``short_body`` damage the body of a ``GET``. Signed redirects model a CDN: the origin answers
``302`` to ``redirect_to + path?expires=...&sig=...`` (HMAC-SHA256 with a key both servers
share) and a server built with ``require_signature=True`` answers ``403`` once that URL expired,
so the client has to go back to the origin.

The server logs through :mod:`logging` at ``DEBUG`` only, so it prints nothing by default.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import email.utils
import hashlib
import hmac
import logging
import os
import random
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

__all__ = ["Faults", "MirrorServer", "write_random_tree"]

_log = logging.getLogger(__name__)

#: Largest chunk sent per token-bucket grant when throttled.
_THROTTLED_CHUNK = 64 * 1024
#: Slice of one ``sendfile`` call when unthrottled; small enough to notice set_rate/set_down soon.
_UNTHROTTLED_CHUNK = 8 * 1024 * 1024
#: Longest a throttled sender sleeps before it looks at the rate and its abort flag again.
_MAX_WAIT = 0.05
_BURST_SECONDS = 0.05
#: How long stopping waits for one aborted handler thread; they end within milliseconds.
_JOIN_TIMEOUT = 5.0
#: Default shared HMAC key of signed redirects (tests only; not a secret).
_DEFAULT_SIGNING_KEY = b"dsmirror-testing"
_RANGE_RE = re.compile(r"bytes=(?:(\d+)-(\d*)|-(\d+))")
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head>\n"
    b"<body><h1>Checking your browser before accessing this site</h1>\n"
    b"<p>Please enable JavaScript and cookies to continue.</p></body></html>\n"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Faults:
    """What a misbehaving mirror does to the requests it picks; every field may be combined.

    A request is *affected* when its path is in ``paths`` (any path if ``None``), fewer than
    ``count`` requests were affected so far (no limit if ``None``), a draw from
    ``random.Random(seed)`` falls below ``probability``, and at least one fault applies to it:
    body faults apply to ``GET`` only, range faults to requests with a ``Range`` header, the others
    to every request. So a ``HEAD`` probe does not use up ``count`` of a ``corrupt`` fault.
    Paths are relative to the server's root and prefix, e.g. ``"sub/model.bin"``.

    Body faults count body bytes, i.e. from the start of the (range) body:

    - ``corrupt``: flip (XOR 0xFF) the byte in the middle of the body;
    - ``corrupt_region``: a damaged copy: flip the byte at every ``corrupt_stride``-th file offset
      of ``[start, end)`` that the body carries, the same bytes in every response (a lying mirror
      whose copy has a bad region; :attr:`MirrorServer.corrupted_bytes` counts the bytes sent);
    - ``reset_after``: after that many bytes, close the connection with a TCP RST (bytes still in
      the server's send buffer may be dropped by the reset, as on a real network);
    - ``stall_after``: after that many bytes send nothing for ``stall_seconds``, then close;
    - ``short_body``: send half of the body, then close, leaving ``Content-Length`` unmet;
    - ``crawl``: send the body at most at this many bytes/s (a stuck TCP flow on a sick path,
      while the mirror's other connections are fine).

    When several of ``reset_after``, ``stall_after`` and ``short_body`` are set, the one that
    cuts the body first wins.
    """

    corrupt: bool = False
    corrupt_region: tuple[int, int] | None = None
    corrupt_stride: int = 16 * 1024
    reset_after: int | None = None
    stall_after: int | None = None
    stall_seconds: float = 30.0
    short_body: bool = False
    crawl: float | None = None
    #: Answer 200 with a small ``text/html`` captcha page instead of the file.
    html_instead: bool = False
    #: Answer a ``Range`` request with 200 and the whole file.
    ignore_range: bool = False
    #: Answer a ``Range`` request with 206 for a neighbouring range (shifted by one byte); the
    #: body matches the ``Content-Range`` sent, not the range requested.
    wrong_content_range: bool = False
    #: Answer a ``Range`` request with 206 and this ``Content-Range`` header value, whatever it
    #: says (the body is the range requested): a server that sends garbage or markup there.
    content_range: str | None = None
    #: Answer with this status (e.g. 503, 429) and a short text body.
    status: int | None = None
    #: ``Retry-After`` seconds sent with ``status``.
    retry_after: int | None = None
    #: Answer 302 to ``redirect_to + path`` plus a signed ``?expires=...&sig=...`` query;
    #: ``redirect_to`` is a base URL ending in "/", e.g. another server's :attr:`MirrorServer.url`.
    redirect_to: str | None = None
    paths: AbstractSet[str] | None = None
    #: Only requests for a body that starts at this byte (``Range: bytes=N-...``; no Range: 0),
    #: e.g. 0 for the connection that fetches a file's first piece.
    range_start: int | None = None
    count: int | None = None
    probability: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {self.probability}")
        if self.corrupt_stride < 1:
            raise ValueError(f"corrupt_stride must be >= 1, got {self.corrupt_stride}")
        for name in ("reset_after", "stall_after", "count"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def _applies(self, *, is_get: bool, has_range: bool) -> bool:
        whole = self.status is not None or self.redirect_to is not None or self.html_instead
        ranged = has_range and (
            self.ignore_range or self.wrong_content_range or self.content_range is not None
        )
        body = is_get and (
            self.corrupt
            or self.corrupt_region is not None
            or self.reset_after is not None
            or self.stall_after is not None
            or self.short_body
            or self.crawl is not None
        )
        return whole or ranged or body

    def _cut(self, length: int) -> tuple[int, str] | None:
        """Where the body stops early and how (``"reset"``, ``"stall"``, ``"short"``), if it does."""
        cuts = []
        if self.reset_after is not None:
            cuts.append((self.reset_after, "reset"))
        if self.stall_after is not None:
            cuts.append((self.stall_after, "stall"))
        if self.short_body:
            cuts.append((length // 2, "short"))
        cut = min(cuts, default=None)
        return cut if cut is not None and cut[0] < length else None


class _FaultDraw:
    """The runtime state of one :class:`Faults` value: its random stream and remaining count."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)
        self._remaining = faults.count

    def draw(self, path: str, *, is_get: bool, has_range: bool, start: int = 0) -> bool:
        """Whether this request is affected; call with the server's lock held."""
        faults = self.faults
        if self._remaining == 0 or (faults.paths is not None and path not in faults.paths):
            return False
        if faults.range_start is not None and start != faults.range_start:
            return False
        if not faults._applies(is_get=is_get, has_range=has_range):
            return False
        if faults.probability < 1.0 and self._rng.random() >= faults.probability:
            return False
        if self._remaining is not None:
            self._remaining -= 1
        return True


class _TokenBucket:
    """The bandwidth budget shared by all connections of one server (see module docstring)."""

    def __init__(self, rate: float | None) -> None:
        self._cond = threading.Condition()
        self._rate = _check_rate(rate)
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._queue: collections.deque[object] = collections.deque()  # waiting senders, in order

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        rate = _check_rate(rate)
        with self._cond:
            self._refill()
            self._rate = rate
            self._tokens = min(self._tokens, self.chunk_size())
            self._cond.notify_all()

    def chunk_size(self) -> int:
        rate = self._rate
        if rate is None:
            return _UNTHROTTLED_CHUNK
        return max(1, int(min(_THROTTLED_CHUNK, rate * _MAX_WAIT)))

    def take(self, n: int, aborted: threading.Event) -> int:
        """Wait until up to ``n`` bytes may be sent; how many, or 0 if ``aborted`` was set first.

        Fewer than ``n`` are granted when ``n`` was sized for an older, higher rate.
        """
        with self._cond:
            if self._rate is None:
                return n
            me = object()
            self._queue.append(me)
            try:
                while not aborted.is_set():
                    if self._rate is None:
                        return n
                    self._refill()
                    grant = min(n, self.chunk_size())
                    first = self._queue[0] is me
                    if first and self._tokens >= grant:
                        self._tokens -= grant
                        return grant
                    wait = (grant - self._tokens) / self._rate if first and self._rate > 0 else _MAX_WAIT
                    self._cond.wait(min(wait, _MAX_WAIT))
                return 0
            finally:
                self._queue.remove(me)
                self._cond.notify_all()  # the next in line takes its turn

    def _refill(self) -> None:
        now = time.monotonic()
        if self._rate is not None:
            # The budget may build up to 50 ms of the rate (and at least one chunk): a sender thread
            # that wakes late on a busy machine catches up instead of losing that bandwidth.
            cap = max(float(self.chunk_size()), self._rate * _BURST_SECONDS)
            self._tokens = min(self._tokens + self._rate * (now - self._stamp), cap)
        self._stamp = now


def _range_start(header: str | None) -> int:
    """The first byte a ``Range`` header asks for (0 without one, -1 if it names none)."""
    if header is None:
        return 0
    match = _RANGE_RE.fullmatch(header.strip())  # the syntax _parse_range serves
    return int(match.group(1)) if match is not None and match.group(1) is not None else -1


def _check_rate(rate: float | None) -> float | None:
    if rate is not None and rate < 0:
        raise ValueError(f"rate must be >= 0 bytes/s or None, got {rate}")
    return rate


class _Unsatisfiable(Exception):
    """The Range header asks for bytes the file does not have (416)."""


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range one ``Range`` header asks for, or None to ignore the header.

    Multiple ranges and malformed or inverted ranges are ignored, as RFC 9110 allows.
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - int(suffix)), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(end, size - 1)


def _shifted(start: int, end: int, size: int) -> tuple[int, int]:
    """A range next to ``start-end`` that a confused server might send instead."""
    if end + 1 < size:
        return start + 1, end + 1
    if start > 0:
        return start - 1, end - 1
    return start + 1, end  # the whole file was asked for: drop its first byte


def _region_flips(region: tuple[int, int], stride: int, start: int, length: int) -> range:
    """Body positions of a response of ``length`` bytes from file offset ``start`` whose bytes a
    ``corrupt_region`` fault flips: file offsets ``region[0] + k * stride`` inside the region."""
    lo, hi = max(region[0], start), min(region[1], start + length)
    if lo >= hi:
        return range(0)
    first = region[0] + -(-(lo - region[0]) // stride) * stride
    return range(first - start, hi - start, stride)


def _signature(key: bytes, path: str, expires: str) -> str:
    return hmac.new(key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128

    def __init__(self, mirror: MirrorServer) -> None:
        self.mirror = mirror
        self._handler_threads: list[threading.Thread] = []
        super().__init__((mirror.host, mirror.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn joins only non-daemon threads, which would hang interpreter exit when a
        # test forgets stop(); so keep daemon threads and join them in server_close() ourselves.
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
        self._handler_threads.append(thread)
        thread.start()

    def server_close(self) -> None:
        """Close the socket and wait for the handlers, which MirrorServer has aborted."""
        super().server_close()
        for thread in self._handler_threads:
            thread.join(_JOIN_TIMEOUT)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on a reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("mirror %s: error serving %s", self.mirror.url, client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; Nagle would hold small bodies back ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._aborted = threading.Event()
        self._reset = False
        if not self.server.mirror._register(self):
            self.abort()

    def finish(self) -> None:
        self.server.mirror._unregister(self)
        super().finish()
        if self._reset:
            # Closing here, before socketserver's shutdown(SHUT_WR), sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def abort(self) -> None:
        """Stop this connection from another thread: wakes any read, write or wait in progress."""
        self._aborted.set()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("mirror %s: " + format, self.server.mirror.url, *args)

    def do_GET(self) -> None:
        self._respond()

    def do_HEAD(self) -> None:
        self._respond()

    def _respond(self) -> None:
        mirror = self.server.mirror
        mirror._count_request()
        try:
            self._serve(mirror)
        except OSError:  # the client went away, or abort() / a fault ended the connection
            self.close_connection = True

    def _serve(self, mirror: MirrorServer) -> None:
        latency = mirror.latency
        if latency > 0 and self._aborted.wait(latency):
            raise ConnectionAbortedError
        url = urlsplit(self.path)
        found = mirror._locate(url.path)
        if found is None:
            self._send_small(404, b"not found\n")
            return
        path, file = found
        if mirror._require_signature and not mirror._signature_ok(path, url.query):
            self._send_small(403, b"missing, invalid or expired signature\n")
            return
        range_header = self.headers.get("Range")
        faults = mirror._draw_faults(
            path,
            is_get=self.command == "GET",
            has_range=range_header is not None,
            start=_range_start(range_header),
        )
        if faults.status is not None:
            reason = self.responses.get(faults.status, ("", ""))[0]
            retry = {} if faults.retry_after is None else {"Retry-After": str(faults.retry_after)}
            self._send_small(faults.status, f"{faults.status} {reason}\n".encode(), retry)
        elif faults.redirect_to is not None:
            self._send_small(302, b"", {"Location": mirror._signed_url(faults.redirect_to, path)})
        elif faults.html_instead:
            self._send_small(200, _HTML_PAGE, content_type="text/html; charset=utf-8")
        else:
            with open(file, "rb") as f:
                self._send_file(
                    mirror, path, f.fileno(), None if faults.ignore_range else range_header, faults
                )

    def _send_small(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(
        self, mirror: MirrorServer, path: str, fd: int, range_header: str | None, faults: Faults
    ) -> None:
        stat = os.fstat(fd)
        size = stat.st_size
        try:
            byte_range = None if range_header is None else _parse_range(range_header, size)
        except _Unsatisfiable:
            self._send_small(416, b"", {"Content-Range": f"bytes */{size}"})
            return
        if byte_range is None:
            status, start, end = 200, 0, size - 1
        else:
            status, (start, end) = 206, byte_range
            if faults.wrong_content_range:
                start, end = _shifted(start, end, size)
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", faults.content_range or f"bytes {start}-{end}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{size:x}-{stat.st_mtime_ns:x}"')
        self.send_header("Last-Modified", email.utils.formatdate(stat.st_mtime, usegmt=True))
        self.end_headers()
        if self.command == "HEAD":
            return
        cut = faults._cut(length)
        stop = length if cut is None else cut[0]
        flips = [length // 2] if faults.corrupt else []
        if faults.corrupt_region is not None:
            region = _region_flips(faults.corrupt_region, faults.corrupt_stride, start, length)
            flips = sorted({*flips, *region})
        self._send_body(mirror, path, fd, start, stop, flips, faults.crawl)
        if cut is not None:
            kind = cut[1]
            if kind == "stall" and self._aborted.wait(faults.stall_seconds):
                raise ConnectionAbortedError
            self._reset = kind == "reset"
            self.close_connection = True

    def _send_body(
        self,
        mirror: MirrorServer,
        path: str,
        fd: int,
        start: int,
        stop: int,
        flips: list[int],
        crawl: float | None = None,
    ) -> None:
        """Send body bytes ``[0, stop)`` (file bytes from ``start``) through the token bucket
        (and at most ``crawl`` bytes/s), the bytes at body positions ``flips`` (sorted) flipped."""
        pending = iter(flips)
        flip_at = next(pending, -1)
        sent = 0
        while sent < stop:
            n = min(mirror._bucket.chunk_size(), stop - sent)
            if crawl is not None:
                n = max(1, min(n, int(crawl / 10)))
                if self._aborted.wait(n / crawl):
                    raise ConnectionAbortedError
            if sent < flip_at < sent + n:
                n = flip_at - sent  # send the clean bytes before the flipped one on their own
            elif sent == flip_at:
                n = 1
            n = mirror._bucket.take(n, self._aborted)
            if n == 0:
                raise ConnectionAbortedError
            if sent == flip_at:
                flipped = bytes([os.pread(fd, 1, start + sent)[0] ^ 0xFF])
                mirror._count_bytes(path, 1)
                try:
                    self.connection.sendall(flipped)
                except OSError:
                    mirror._count_bytes(path, -1)
                    raise
                mirror._count_corrupted()
                flip_at = next(pending, -1)
            else:
                self._sendfile(mirror, path, fd, start + sent, n)
            sent += n

    def _sendfile(self, mirror: MirrorServer, path: str, fd: int, offset: int, count: int) -> None:
        # Counted before sending, so a client never sees bytes the counters miss; a failed call
        # sent nothing, so what is left is taken back.
        out = self.connection.fileno()
        mirror._count_bytes(path, count)
        try:
            while count > 0:
                n = os.sendfile(out, fd, offset, count)
                if n == 0:
                    raise ConnectionAbortedError("the file shrank while it was being served")
                offset += n
                count -= n
        finally:
            if count:
                mirror._count_bytes(path, -count)


class MirrorServer:
    """An HTTP mirror of the files under ``root``, served from a background thread.

    ``rate`` caps the bytes/s of all connections together (``None``: unthrottled, ``0``: paused),
    ``latency`` is added before the response headers of every request, ``faults`` picks requests
    to misbehave on, ``prefix`` is the URL path the tree is served under. ``require_signature``
    makes the server answer 403 unless the query carries an unexpired signature made with
    ``signing_key``; ``signature_ttl`` is how long the URLs this server's ``redirect_to`` fault
    signs stay valid. Every setter is thread-safe and applies to responses already streaming.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate: float | None = None,
        latency: float = 0.0,
        faults: Faults | None = None,
        prefix: str = "",
        require_signature: bool = False,
        signature_ttl: float = 60.0,
        signing_key: bytes = _DEFAULT_SIGNING_KEY,
    ) -> None:
        self._root = Path(root).resolve()
        self._host = host
        self._port = port
        self._prefix = prefix.strip("/")
        self._require_signature = require_signature
        self._signature_ttl = signature_ttl
        self._signing_key = signing_key
        self._bucket = _TokenBucket(rate)
        # _control serialises start/stop/set_down; _lock guards the state handler threads share.
        self._control = threading.Lock()
        self._lock = threading.Lock()
        self._latency = 0.0
        self.set_latency(latency)
        self._faults = _FaultDraw(faults or Faults())
        self._connections: set[_Handler] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._down = False
        self._bytes_served = 0
        self._bytes_by_path: dict[str, int] = {}
        self._requests = 0
        self._faults_applied = 0
        self._corrupted = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> MirrorServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Bind and start serving; the port chosen for ``port=0`` is kept across outages."""
        with self._control:
            if self._started:
                raise RuntimeError(f"mirror {self.url} is already started")
            self._down = False
            self._listen()
            self._started = True

    def stop(self) -> None:
        """Abort every connection, close the socket and wait for the handler threads to end."""
        with self._control:
            if self._started and not self._down:
                self._go_down()
            self._started = False

    def set_down(self, down: bool) -> None:
        """Take the mirror off the network (connections refused, responses aborted) or back."""
        with self._control:
            if not self._started:
                raise RuntimeError("set_down() needs a started mirror")
            if down and not self._down:
                self._go_down()
            elif not down and self._down:
                with self._lock:
                    self._down = False
                try:
                    self._listen()
                except OSError:  # someone else took the port meanwhile
                    with self._lock:
                        self._down = True
                    raise

    def _listen(self) -> None:
        httpd = _HTTPServer(self)
        self._port = httpd.server_port
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"mirror {self._host}:{self._port}",
            daemon=True,
        )
        self._thread.start()

    def _go_down(self) -> None:
        with self._lock:
            self._down = True
            connections = list(self._connections)
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        for handler in connections:
            handler.abort()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = self._thread = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the ``port`` argument before that)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL of the tree, ending in "/": ``http://host:port/prefix/``."""
        prefix = f"{self._prefix}/" if self._prefix else ""
        return f"http://{self._host}:{self._port}/{prefix}"

    # -- runtime knobs -----------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        return self._bucket.rate

    def set_rate(self, rate: float | None) -> None:
        self._bucket.set_rate(rate)

    @property
    def latency(self) -> float:
        return self._latency

    def set_latency(self, latency: float) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0 s, got {latency}")
        self._latency = latency

    @property
    def faults(self) -> Faults:
        return self._faults.faults

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the faults (``None`` clears them); ``count`` and ``seed`` start afresh."""
        with self._lock:
            self._faults = _FaultDraw(faults or Faults())

    # -- counters ----------------------------------------------------------------------------

    @property
    def bytes_served(self) -> int:
        """File bytes written to sockets (not headers, error or HTML pages).

        Bytes are counted as they are handed to the socket, so the count is complete as soon as a
        client has received them.
        """
        with self._lock:
            return self._bytes_served

    @property
    def bytes_served_by_path(self) -> dict[str, int]:
        """A copy of :attr:`bytes_served` per path relative to the root."""
        with self._lock:
            return dict(self._bytes_by_path)

    @property
    def requests(self) -> int:
        """HTTP requests received (GET and HEAD, whatever the answer)."""
        with self._lock:
            return self._requests

    @property
    def faults_applied(self) -> int:
        """Requests the faults affected."""
        with self._lock:
            return self._faults_applied

    @property
    def corrupted_bytes(self) -> int:
        """Flipped bytes sent (``corrupt`` and ``corrupt_region`` faults)."""
        with self._lock:
            return self._corrupted

    def reset_counters(self) -> None:
        with self._lock:
            self._bytes_served = self._requests = self._faults_applied = self._corrupted = 0
            self._bytes_by_path.clear()

    # -- called by handler threads -----------------------------------------------------------

    def _register(self, handler: _Handler) -> bool:
        with self._lock:
            if self._down:
                return False
            self._connections.add(handler)
            return True

    def _unregister(self, handler: _Handler) -> None:
        with self._lock:
            self._connections.discard(handler)

    def _count_corrupted(self) -> None:
        with self._lock:
            self._corrupted += 1

    def _count_request(self) -> None:
        with self._lock:
            self._requests += 1

    def _count_bytes(self, path: str, n: int) -> None:
        with self._lock:
            self._bytes_served += n
            self._bytes_by_path[path] = self._bytes_by_path.get(path, 0) + n

    def _draw_faults(self, path: str, *, is_get: bool, has_range: bool, start: int = 0) -> Faults:
        """The faults to apply to this request: the configured ones, or none."""
        with self._lock:
            if not self._faults.draw(path, is_get=is_get, has_range=has_range, start=start):
                return Faults()
            self._faults_applied += 1
            return self._faults.faults

    def _locate(self, url_path: str) -> tuple[str, Path] | None:
        """The root-relative path and file a URL path names, or None (404)."""
        base = f"/{self._prefix}/" if self._prefix else "/"
        path = unquote(url_path)
        if not path.startswith(base):
            return None
        try:
            file = (self._root / path[len(base) :]).resolve()
        except (OSError, ValueError):
            return None
        if not file.is_relative_to(self._root) or not file.is_file():
            return None
        return file.relative_to(self._root).as_posix(), file

    def _signed_url(self, base: str, path: str) -> str:
        expires = f"{time.time() + self._signature_ttl:.3f}"
        query = urlencode({"expires": expires, "sig": _signature(self._signing_key, path, expires)})
        return f"{base}{quote(path)}?{query}"

    def _signature_ok(self, path: str, query: str) -> bool:
        params = parse_qs(query)
        expires = params.get("expires", [""])[0]
        sig = params.get("sig", [""])[0]
        if not hmac.compare_digest(sig, _signature(self._signing_key, path, expires)):
            return False
        try:
            return float(expires) > time.time()
        except ValueError:
            return False


def write_random_tree(
    root: Path, sizes: Mapping[str, int], seed: int = 0, *, deterministic: bool = True
) -> dict[str, str]:
    """Write files of the given sizes under ``root`` and return their SHA-256 hex digests.

    Names may contain "/" (directories are created). With ``deterministic`` the content is a
    SHAKE-128 keystream of (``seed``, name, chunk index), the same on every run and machine; it
    is generated at about 2 s per GiB, against 5 s for ``random.Random.randbytes`` and 4 s for
    ``os.urandom``, which ``deterministic=False`` uses. With hashing and writing, about 4 s per GiB.
    """
    chunk = 4 * 1024 * 1024
    digests = {}
    for name, size in sizes.items():
        file = Path(root) / name
        file.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(file, "wb") as f:
            for index, offset in enumerate(range(0, size, chunk)):
                n = min(chunk, size - offset)
                if deterministic:
                    data = hashlib.shake_128(f"dsmirror:{seed}:{name}:{index}".encode()).digest(n)
                else:
                    data = os.urandom(n)
                digest.update(data)
                f.write(data)
        digests[name] = digest.hexdigest()
    return digests
