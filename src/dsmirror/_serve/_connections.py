"""Which connections the server keeps: bounded in number and in time, so no client makes it answer nobody.

aiohttp parses and answers requests; ``ServeRunner`` runs an app with these rules on top
(``ConnectionLimits`` holds the numbers; the defaults in brackets)::

    a new connection        must bring a whole request head within header_timeout [20 s]
    a request head          must be whole header_timeout after its first byte [20 s]
    idle in keep-alive      is closed keepalive_timeout after its last answer [60 s]
    an answer being sent    to a client that took under 64 KiB of it in send_timeout [60 s] while
                            bytes waited for it, is cut (a slow reader gives its slots back)
    connections             at most max_connections [4096], and fewer than the soft RLIMIT_NOFILE
                            less a reserve for the files being served (1024 -> 896); per client
                            address at most max_connections_per_client [256]
    at a bound              the connection idle longest (no request in progress: no head yet, or
                            between requests) is closed to make room; if none is idle the new one
                            is answered 503 and closed, so a flood of idle connections never keeps
                            a new client out, and busy ones are never cut for it
    a rejected request      one log line (status, client, what was wrong): a malformed head logs
                            no traceback, a 4xx other than 404 and a 503 log their request line

A cut connection is shut down at the socket (``shutdown(SHUT_RDWR)`` with a zero linger), not
closed under the event loop: a ``sendfile`` or a write waiting on the socket then fails like a
client reset, its handler returns, and the transport closes as after any reset; the zero linger
drops what the kernel still held for the client. Progress of a slow reader is the kernel's count
of acknowledged bytes (``TCP_INFO``, Linux); where that is not available, slow readers are not cut
(the other bounds hold everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

__all__ = ["ConnectionLimits", "ServeRunner", "connection_bound"]

logger = logging.getLogger(__name__)

#: A slow reader must take at least this much of an answer per ``send_timeout``.
MIN_PROGRESS = 64 * 1024
#: Statuses logged as rejected requests (404 is an everyday miss; 5xx other than 503 log elsewhere).
_REJECTED = frozenset(range(400, 500)) - {404} | {503}
_BUSY_BODY = b'{"error":"too many connections open"}'
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
_TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked (u64) in Linux's struct tcp_info


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds on connections (seconds and counts; see the module docstring)."""

    header_timeout: float = 20.0
    keepalive_timeout: float = 60.0
    send_timeout: float = 60.0
    max_connections: int = 4096
    max_connections_per_client: int = 256

    def __post_init__(self) -> None:
        if min(self.header_timeout, self.keepalive_timeout, self.send_timeout) <= 0:
            raise ValueError("connection timeouts must be positive")
        if min(self.max_connections, self.max_connections_per_client) < 1:
            raise ValueError("connection bounds must be at least 1")


def connection_bound(limit: int, soft_nofile: int | None) -> int:
    """Connections to keep at most: ``limit``, and a reserve of descriptors below ``soft_nofile``.

    The reserve (an eighth of the descriptors, at least 64) is for what the process opens besides
    sockets: files being sent, the store, journals, libtorrent's files, logs.
    """
    if soft_nofile is None or soft_nofile <= 0:
        return limit
    return max(1, min(limit, soft_nofile - max(64, soft_nofile // 8)))


def _soft_nofile() -> int | None:
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _peer(transport: asyncio.BaseTransport | None) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _sent_state(sock: Any, transport: asyncio.Transport) -> tuple[bool, int] | None:
    """(bytes wait for the client, bytes it has acknowledged so far); None where unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, ValueError):
        return None
    if len(info) < _TCP_INFO_BYTES_ACKED + 8:
        return None
    acked = struct.unpack_from("Q", info, _TCP_INFO_BYTES_ACKED)[0]
    return queued > 0 or transport.get_write_buffer_size() > 0, acked


class _Connection(RequestHandler):
    """aiohttp's connection handler, with the timers and the cut of ``ConnectionLimits``."""

    def __init__(self, manager: _GuardedServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.guard = manager
        #: The server's loop (its clock and timers; also usable once it stopped, as a handler unwinds).
        self.event_loop = loop
        self.client = "?"
        self.busy = False
        self.cut_reason: str | None = None
        self.idle_since = 0.0
        self.got_bytes = False
        #: What was wrong with the request head just refused (for its log line).
        self.malformed: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._acked_mark = 0
        self._mark_time = 0.0

    # --- aiohttp's protocol callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.client = _peer(transport)
        self.idle_since = self.event_loop.time()
        self._arm_head_timer()
        self.guard.admit(self)

    def data_received(self, data: bytes) -> None:
        if data:
            self.got_bytes = True
            if not self.busy and self._head_timer is None:
                self._arm_head_timer()  # the first byte of the next request head
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self.guard.forget(self)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A malformed head (4xx): the answer and one log line (by the access log), no traceback."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer is already being sent")
        reason = message or (str(exc) if exc is not None else "bad request")
        resp = web.Response(status=status, text=f"{status} {reason}", content_type="text/plain")
        resp.force_close()
        self.malformed = reason
        return resp

    # --- requests -------------------------------------------------------------------------------

    def begin(self) -> None:
        """A request head is whole and its handler runs: no head timer; police the answer."""
        self.busy = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._acked_mark, self._mark_time = 0, self.event_loop.time()
        self._schedule_send_check()

    def end(self) -> None:
        self.busy = False
        self.idle_since = self.event_loop.time()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # --- the bounds -----------------------------------------------------------------------------

    def cut(self, why: str) -> None:
        """End the connection at the socket (see the module docstring); idempotent."""
        if self.cut_reason is not None or self.transport is None:
            return
        self.cut_reason = why
        self._cancel_timers()
        sock = self.transport.get_extra_info("socket")
        # The peer may have reset it already (ENOTCONN): then the loop sees that as it sees the cut.
        # Never close the transport here: a sendfile in progress would be left waiting on a closed
        # socket (and CPython 3.11's transport raises InvalidStateError on its sendfile waiter).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)

    def refuse(self) -> None:
        """Answer 503 before reading anything and close (the bounds are full of busy connections)."""
        self.cut_reason = "refused"
        self._cancel_timers()
        if self.transport is not None:
            self.transport.write(_BUSY_REPLY)
        self.force_close()

    def _arm_head_timer(self) -> None:
        self._head_timer = self.event_loop.call_later(self.guard.limits.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.busy:
            return
        timeout = self.guard.limits.header_timeout
        if self.got_bytes:
            logger.info("rejected %s: no whole request head within %g s (slow headers)", self.client, timeout)
        else:
            logger.debug("closed %s: nothing sent within %g s", self.client, timeout)
        self.cut("slow request head")

    def _schedule_send_check(self) -> None:
        tick = min(1.0, self.guard.limits.send_timeout / 4)
        self._send_timer = self.event_loop.call_later(tick, self._check_send)

    def _check_send(self) -> None:
        self._send_timer = None
        transport = self.transport
        if not self.busy or transport is None or self.cut_reason is not None:
            return
        state = _sent_state(transport.get_extra_info("socket"), transport)  # type: ignore[arg-type]
        if state is None:
            return  # nothing to measure progress with here: no slow-reader bound
        waiting, acked = state
        now = self.event_loop.time()
        if not waiting or acked - self._acked_mark >= MIN_PROGRESS:
            self._acked_mark, self._mark_time = acked, now
        elif now - self._mark_time >= self.guard.limits.send_timeout:
            logger.info(
                "cut %s: a slow reader (took %d bytes in %.0f s)",
                self.client,
                acked - self._acked_mark,
                now - self._mark_time,
            )
            self.cut("slow reader")
            return
        self._schedule_send_check()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._send_timer = None


class _GuardedServer(web.Server):
    """aiohttp's connection factory, counting connections by client and making room at the bounds."""

    def __init__(self, plain: web.Server, limits: ConnectionLimits, bound: int) -> None:
        super().__init__(
            self._tracked(plain.request_handler),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            **plain._kwargs,
        )
        self.limits = limits
        self.bound = bound
        self._open: set[_Connection] = set()
        self._by_client: dict[str, set[_Connection]] = {}
        self._warned_at = -3600.0

    def __call__(self) -> _Connection:
        return _Connection(self, loop=self._loop, **self._kwargs)

    @staticmethod
    def _tracked(
        handler: Callable[[BaseRequest], Awaitable[web.StreamResponse]],
    ) -> Callable[[BaseRequest], Awaitable[web.StreamResponse]]:
        async def tracked(request: BaseRequest) -> web.StreamResponse:
            conn = request.protocol
            if not isinstance(conn, _Connection):
                return await handler(request)
            conn.begin()
            try:
                return await handler(request)
            finally:
                conn.end()

        return tracked

    def admit(self, conn: _Connection) -> None:
        """Count ``conn`` in, closing the connection idle longest if a bound is reached (else refuse it)."""
        mine = self._by_client.setdefault(conn.client, set())
        if len(self._live(mine)) >= self.limits.max_connections_per_client:
            self._make_room(conn, mine, f"{self.limits.max_connections_per_client} from {conn.client}")
        elif len(self._live(self._open)) >= self.bound:
            self._make_room(conn, self._open, f"{self.bound} in all")
        if conn.cut_reason is None:
            self._open.add(conn)
            mine.add(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        mine = self._by_client.get(conn.client)
        if mine is not None:
            mine.discard(conn)
            if not mine:
                del self._by_client[conn.client]

    @staticmethod
    def _live(conns: set[_Connection]) -> list[_Connection]:
        return [c for c in conns if c.cut_reason is None]

    def _make_room(self, conn: _Connection, among: set[_Connection], bound: str) -> None:
        idle = [c for c in self._live(among) if not c.busy]
        now = self._loop.time()
        if now - self._warned_at >= 60:
            self._warned_at = now
            logger.warning("connections at the bound (%s open): closing idle ones for new clients", bound)
        if idle:
            victim = min(idle, key=lambda c: c.idle_since)
            logger.info("closed %s: idle, to make room for a new connection (%s open)", victim.client, bound)
            victim.cut("room for a new connection")
        else:
            logger.info("rejected %s: 503, %s connections open and all busy", conn.client, bound)
            conn.refuse()


class _RejectedRequests(AbstractAccessLogger):
    """The access log: one line per rejected request, nothing for the others."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        if response.status not in _REJECTED:
            return
        conn, client, reason = request.protocol, request.remote or "?", None
        if isinstance(conn, _Connection):
            reason, conn.malformed = conn.malformed, None
        if reason is not None:
            self.logger.info("rejected %s: %d, malformed request: %.200r", client, response.status, reason)
        else:
            self.logger.info(
                "rejected %s: %d %s %.200r", client, response.status, request.method, request.raw_path
            )


class ServeRunner(web.AppRunner):
    """``web.AppRunner`` with ``ConnectionLimits`` and the rejected-request log (see the module docstring)."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, *, shutdown_timeout: float) -> None:
        super().__init__(
            app,
            shutdown_timeout=shutdown_timeout,
            keepalive_timeout=limits.keepalive_timeout,
            access_log_class=_RejectedRequests,
            access_log=logger,
        )
        self.limits = limits
        self.bound = connection_bound(limits.max_connections, _soft_nofile())

    async def _make_server(self) -> web.Server:
        return _GuardedServer(await super()._make_server(), self.limits, self.bound)
