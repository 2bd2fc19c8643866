"""The sockets under dsmirror's HTTP clients: bounded by a deadline, and abortable from any thread.

httpx bounds each socket operation (``timeout``), never an exchange: a server that sends one byte
every two seconds, of its response head or of its body, keeps a request alive for ever under a
15 s timeout. And a thread blocked in ``recv`` cannot be stopped from another thread: closing the
httpx client does not wake it (``close(2)`` of a socket another thread reads does not, on Linux).
So every connection of a client armed here (``Sockets.arm``) goes through a network stream that

- clamps the timeout of each connect, read and write to what is left of the *deadlines* active
  in the calling thread (``bounded``; the earliest wins, so a probe's deadline also bounds the
  response head a source is waiting for), and fails with httpcore's own timeout errors (which
  httpx maps to ``httpx.TimeoutException``) once one has passed; each deadline counts the bytes
  read while it is active, so a caller can tell "no answer" from "an answer that never ended";
- is registered with its ``Sockets`` (as are the raw connections of ``dsmirror._fetch.wire``,
  which bound themselves with ``clamp``), whose ``abort()`` shuts every open socket down
  (``shutdown(2)``, which does wake a blocked reader: its ``recv`` returns end-of-file) and
  refuses new connections, so a stuck request ends at once and no thread is left waiting on a
  server that will never answer.

The deadlines follow the injected clock (``dsmirror._core.clock``): a deadline is ``clock.now()``
plus its seconds, and the time left becomes the socket timeout.

httpx does not take a network backend, so ``arm`` replaces the backend of each of the client's
connection pools (its own transport and the proxy transports it made from the environment), the
one private attribute this module relies on; ``tests/test_hostile_servers.py`` fails if an httpx
upgrade moves it.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dsmirror._core.clock import Clock, SystemClock

if TYPE_CHECKING:
    import ssl

    import httpx  # a client given to ``Sockets.arm`` was made with it: imported then

__all__ = ["Deadline", "Sockets", "bounded", "clamp", "count_received"]


@dataclass
class Deadline:
    """A moment on ``clock``: ``seconds`` after it was made."""

    seconds: float
    clock: Clock = field(default_factory=SystemClock)
    at: float = field(init=False)
    received: int = field(init=False, default=0)  # bytes read while it was active

    def __post_init__(self) -> None:
        self.at = self.clock.now() + self.seconds

    def left(self) -> float:
        return self.at - self.clock.now()


_active: ContextVar[tuple[Deadline, ...]] = ContextVar("dsmirror_deadlines", default=())


@contextlib.contextmanager
def bounded(deadline: Deadline) -> Iterator[Deadline]:
    """Within this block, the calling thread's sockets (of armed clients) end by ``deadline``."""
    token = _active.set((*_active.get(), deadline))
    try:
        yield deadline
    finally:
        _active.reset(token)


def _clamp(timeout: float | None, expired: type[Exception]) -> float | None:
    active = _active.get()
    if not active:
        return timeout
    left = min(d.left() for d in active)
    if left <= 0:
        raise expired("the deadline passed")
    return left if timeout is None else min(timeout, left)


def clamp(timeout: float | None) -> float | None:
    """``timeout`` clamped to the calling thread's active deadlines; TimeoutError once one passed.

    For sockets dsmirror drives itself (``dsmirror._fetch.wire``): call it before each blocking
    operation and use the result as the socket's timeout.
    """
    return _clamp(timeout, TimeoutError)


def count_received(n: int) -> None:
    """``n`` bytes were read by the calling thread: counted in each of its active deadlines."""
    for d in _active.get():
        d.received += n


@functools.cache
def _backend_class() -> type[Any]:
    """The httpcore network backend of armed clients, defined on first use: importing httpcore
    costs ~0.1-0.3 s of CPU at start (it imports trio when installed), and a pull from plain-http
    mirrors never makes an httpx client (``dsmirror._fetch.wire``)."""
    import httpcore

    class _Stream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream, owner: Sockets) -> None:
            self._inner = inner
            self._owner = owner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            data = self._inner.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))
            for d in _active.get():
                d.received += len(data)
            return data

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._inner.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self._owner.forget(self)
            self._inner.close()

        def start_tls(
            self,
            ssl_context: ssl.SSLContext,
            server_hostname: str | None = None,
            timeout: float | None = None,
        ) -> httpcore.NetworkStream:
            self._inner = self._inner.start_tls(
                ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)
            )
            return self

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

        def shutdown(self) -> None:
            sock = self._inner.get_extra_info("socket")
            if isinstance(sock, socket.socket):
                # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown would drop
                # its SSL object under the feet of the thread reading it.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    class _Backend(httpcore.NetworkBackend):
        def __init__(self, inner: httpcore.NetworkBackend, owner: Sockets) -> None:
            self._inner = inner
            self._owner = owner

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore.NetworkStream:
            _check_open(self._owner)
            inner = self._inner.connect_tcp(
                host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options
            )
            return _track(self._owner, _Stream(inner, self._owner))

        def connect_unix_socket(
            self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
        ) -> httpcore.NetworkStream:
            _check_open(self._owner)
            inner = self._inner.connect_unix_socket(
                path, _clamp(timeout, httpcore.ConnectTimeout), socket_options
            )
            return _track(self._owner, _Stream(inner, self._owner))

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    def _check_open(owner: Sockets) -> None:
        if owner.aborted:
            raise httpcore.ConnectError("the client was closed")

    def _track(owner: Sockets, stream: _Stream) -> _Stream:
        if not owner.track(stream):  # aborted while connecting
            stream.close()
            raise httpcore.ConnectError("the client was closed")
        return stream

    return _Backend


class _Shuttable(Protocol):
    def shutdown(self) -> None: ...


class Sockets:
    """The open connections of the clients armed with it; ``abort()`` ends them all at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[_Shuttable] = set()
        self._aborted = False

    def arm(self, client: httpx.Client) -> httpx.Client:
        """Route ``client``'s connections through here (see the module docstring); returns it.

        A client built with an injected transport (a test's ``httpx.MockTransport``) has no
        sockets to bound: it is returned as it is.
        """
        import httpx

        for transport in (client._transport, *client._mounts.values()):
            if isinstance(transport, httpx.HTTPTransport):
                pool = transport._pool
                pool._network_backend = _backend_class()(pool._network_backend, self)
        return client

    def abort(self) -> None:
        """Shut every open connection down and refuse new ones: blocked reads end at once."""
        with self._lock:
            self._aborted = True
            streams = list(self._open)
        for s in streams:
            s.shutdown()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def track(self, conn: _Shuttable) -> bool:
        """Register a connection dsmirror drives itself (``shutdown()`` on abort); False if aborted.

        The caller closes ``conn`` when False, and calls ``forget`` when it closes it.
        """
        with self._lock:
            if self._aborted:
                return False
            self._open.add(conn)
            return True

    def forget(self, conn: _Shuttable) -> None:
        with self._lock:
            self._open.discard(conn)
