"""Hostile HTTP servers on loopback: what a broken or malicious server does to a client.

:class:`MirrorServer` plays an honest mirror having a bad day (slow, corrupt, resetting);
:class:`HostileServer` plays a server that, on purpose or by a bug, would take its client down
with it if the client trusted it: a body that never ends, a gzip bomb, an answer dripped one byte
at a time, a connection accepted and never answered, a redirect to an unusable address. Every
connection is answered by one :class:`Behaviour`, chosen by the request's path (``routes``, the
longest matching prefix) or the server's default::

    info = Respond(200, json.dumps({"sha": commit}).encode(), content_type="application/json")
    with HostileServer(EndlessBody(), routes={"/api/models/org/repo/revision/": info}) as srv:
        list_hf_repo([Mirror("bad", "hf", srv.url)], "org/repo", "main", token=None)

The behaviours:

- :class:`Respond`: a plain, well-formed answer (to lead a client to the hostile route);
- :class:`EndlessBody`: ``200`` and a body without a length that never ends (as fast as the
  client reads);
- :class:`GzipBomb`: ``200`` with ``Content-Encoding: gzip``: about 1 KiB on the wire per MiB
  decoded, endless unless ``decoded`` is given;
- :class:`DripFeed`: one byte every ``interval`` seconds, of the response head (``head=True``: the
  status line and headers never end) or of the body after a prompt head;
- :class:`BlackHole`: reads the request, never answers, keeps the connection open;
- :class:`Redirect`: ``302`` to a ``Location`` of the test's choice (``http://xn--/x`` is not a
  valid IDNA host).

Every answer ends with ``Connection: close``. The server counts ``requests`` and ``bytes_sent``
and keeps when each connection opened and ended (``connections``, monotonic seconds: a client
that gives up closes its end, and the handler sees it at its next send or wait, so
``wait_closed`` first); ``busy_seconds`` is how long the client was held, first connection to
last. :meth:`HostileServer.stop` shuts every open connection down, so no handler outlives it.
It logs nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "Behaviour",
    "BlackHole",
    "DripFeed",
    "EndlessBody",
    "GzipBomb",
    "HostileServer",
    "Redirect",
    "Request",
    "Respond",
]

_MAX_HEAD = 64 << 10
_REASONS = {200: "OK", 206: "Partial Content", 302: "Found", 401: "Unauthorized", 403: "Forbidden"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query
    headers: Mapping[str, str]  # lower-case names


class _Conn:
    """One accepted connection, as a behaviour sees it: send, wait, and whether to give up."""

    def __init__(self, sock: socket.socket, server: HostileServer) -> None:
        self.sock = sock
        self._server = server

    @property
    def stopping(self) -> bool:
        return self._server._stopping.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if the server is stopping."""
        return not self._server._stopping.wait(seconds)

    def idle(self, seconds: float) -> bool:
        """Read (and drop) what the client sends for up to ``seconds``; False once it closed its end
        or the server is stopping."""
        self.sock.settimeout(seconds)
        try:
            got = self.sock.recv(4096)
        except TimeoutError:
            return not self.stopping
        except OSError:
            return False
        finally:
            self.sock.settimeout(None)
        return bool(got) and not self.stopping

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False once the client went away or the server is stopping."""
        if self.stopping:
            return False
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        self._server._count(len(data))
        return True

    def head(self, status: int, headers: Iterable[tuple[str, str]] = ()) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", *(f"{k}: {v}" for k, v in headers)]
        return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


class Behaviour(ABC):
    """How the server answers one request on its connection ``conn``."""

    @abstractmethod
    def serve(self, conn: _Conn, request: Request) -> None: ...


@dataclass(frozen=True)
class Respond(Behaviour):
    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()

    def serve(self, conn: _Conn, request: Request) -> None:
        hdrs = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body))), *self.headers]
        conn.send(conn.head(self.status, hdrs) + (b"" if request.method == "HEAD" else self.body))


@dataclass(frozen=True)
class EndlessBody(Behaviour):
    """``prefix``, then ``filler`` over and over, with no length: a listing or manifest that never ends."""

    prefix: bytes = b"["
    filler: bytes = b'{"type": "file", "path": "x", "size": 1, "oid": "0"},' * 64
    content_type: str = "application/json"
    status: int = 200

    def serve(self, conn: _Conn, request: Request) -> None:
        block = self.filler * max(1, (256 << 10) // len(self.filler))
        if conn.send(conn.head(self.status, [("Content-Type", self.content_type)]) + self.prefix):
            while conn.send(block):
                pass


#: One MiB of zeros, deflated after a full flush: the flush byte-aligns the stream and resets the
#: window, so the same bytes decode to another MiB of zeros wherever they are repeated.
_ZERO_MIB = 1 << 20


def _gzip_blocks() -> tuple[bytes, bytes, bytes]:
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    first = c.compress(bytes(_ZERO_MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(_ZERO_MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    return first, block, c.flush(zlib.Z_FINISH)  # the last: an empty final block and the trailer


@dataclass(frozen=True)
class GzipBomb(Behaviour):
    """gzip-encoded zeros: ``decoded`` bytes (whole MiB; endless if None), ~1/1000 of that on the wire."""

    decoded: int | None = None
    content_type: str = "application/json"

    def serve(self, conn: _Conn, request: Request) -> None:
        first, block, last = _gzip_blocks()
        hdrs = [("Content-Type", self.content_type), ("Content-Encoding", "gzip")]
        if not conn.send(conn.head(200, hdrs) + first):
            return
        left = None if self.decoded is None else self.decoded // _ZERO_MIB - 1
        batch = block * 256  # 256 MiB decoded per send
        while left is None or left > 0:
            n = 256 if left is None else min(256, left)
            if not conn.send(batch if n == 256 else block * n):
                return
            if left is not None:
                left -= n
        # A wrong trailer (its CRC is of two MiB only): a client that got this far read it all.
        conn.send(last)


@dataclass(frozen=True)
class DripFeed(Behaviour):
    """One byte every ``interval`` s: of the head (``head=True``, it never ends) or of ``body``."""

    body: bytes = b'{"version": 1, "name": "never", "piece_size": 16384, "files": []}'
    interval: float = 2.0
    head: bool = False
    status: int = 200
    content_type: str = "application/json"

    def serve(self, conn: _Conn, request: Request) -> None:
        if self.head:
            data = conn.head(self.status).removesuffix(b"Connection: close\r\n\r\n") + b"X-Pad: "
            for b in data:
                if not (conn.send(bytes([b])) and conn.idle(self.interval)):
                    return
            while conn.send(b"a") and conn.idle(self.interval):
                pass
            return
        hdrs = [("Content-Type", self.content_type), ("Content-Length", str(len(self.body)))]
        if not conn.send(conn.head(self.status, hdrs)):
            return
        for b in self.body:
            if not (conn.idle(self.interval) and conn.send(bytes([b]))):
                return


@dataclass(frozen=True)
class BlackHole(Behaviour):
    """Accept, read the request, say nothing, and keep the connection open until the client gives up."""

    def serve(self, conn: _Conn, request: Request) -> None:
        while conn.idle(0.1):
            pass


@dataclass(frozen=True)
class Redirect(Behaviour):
    location: str = "http://xn--/x"
    status: int = 302

    def serve(self, conn: _Conn, request: Request) -> None:
        conn.send(conn.head(self.status, [("Location", self.location), ("Content-Length", "0")]))


class HostileServer:
    """An HTTP/1.1 server on ``host`` (a fresh port) answering each request with a :class:`Behaviour`."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        routes: Mapping[str, Behaviour] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.behaviour = behaviour
        self.routes = dict(routes or {})
        self._host = host
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.requests = 0
        self.bytes_sent = 0
        self.connections: list[list[float]] = []  # [opened, ended] (ended: +inf while open)

    def __enter__(self) -> HostileServer:
        self.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port/``."""
        assert self._listener is not None, "the server is not started"
        return f"http://{self._host}:{self._listener.getsockname()[1]}/"

    @property
    def busy_seconds(self) -> float:
        """From the first connection's start to the last one's end (inf while one is open)."""
        with self._lock:
            spans = [list(c) for c in self.connections]
        return max(e for _, e in spans) - min(o for o, _ in spans) if spans else 0.0

    def wait_closed(self, timeout: float = 2.0) -> bool:
        """Wait until no connection is open (a handler notices a client's close at its next step)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._conns:
                    return True
            time.sleep(0.01)
        return False

    def start(self) -> None:
        self._listener = socket.create_server((self._host, 0))
        self._listener.settimeout(0.2)
        t = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self._threads.append(t)
        t.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in list(self._threads):
            t.join(5)
        if self._listener is not None:
            self._listener.close()

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            span = [time.monotonic(), float("inf")]
            with self._lock:
                self._conns.add(sock)
                self.connections.append(span)
            t = threading.Thread(target=self._handle, args=(sock, span), name="hostile-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, sock: socket.socket, span: list[float]) -> None:
        try:
            request = self._read_request(sock)
            if request is not None:
                with self._lock:
                    self.requests += 1
                self._behaviour_for(request.path).serve(_Conn(sock, self), request)
        finally:
            with self._lock:
                self._conns.discard(sock)
                span[1] = time.monotonic()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _behaviour_for(self, path: str) -> Behaviour:
        for prefix in sorted(self.routes, key=len, reverse=True):
            if path.startswith(prefix):
                return self.routes[prefix]
        return self.behaviour

    def _read_request(self, sock: socket.socket) -> Request | None:
        sock.settimeout(0.5)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < _MAX_HEAD:
            try:
                got = sock.recv(4096)
            except TimeoutError:
                if self._stopping.is_set():
                    return None
                continue
            except OSError:
                return None
            if not got:
                return None
            data += got
        sock.settimeout(None)
        lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Request(parts[0], parts[1], headers)
