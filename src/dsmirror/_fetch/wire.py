"""A lean HTTP/1.1 client for what a pull spends its bytes on: GETs with a Range over plain http.

Why: httpx (through httpcore and h11) reads a socket into a fresh ``bytes`` each time, appends it
to h11's receive buffer and slices it out again: two copies in user space and a trip through
several layers of Python per read, plus a fresh allocation (page faults) per read. Measured over
loopback from nginx (1 GiB, 8 MiB pieces, one run each, ``scripts/bench_pull.py``): ~8 % of the
pull's CPU in ``memmove`` and ~23 % in the interpreter. Here each connection reads with
``recv_into`` into one buffer of its own (``BUFFER``), and a caller that consumes each chunk
before it asks for the next (the fetch engine: it hashes and writes it) gets views of that
buffer (``borrowed``): one copy from the kernel, no allocation per read.

What it speaks: ``GET`` over HTTP/1.1, keep-alive (connections are kept per host and port and
reused; one the server closed while idle is noticed before reuse), bodies framed by
Content-Length, by chunked transfer-coding or by the end of the connection, 1xx answers skipped.
Heads of at most ``HEAD_LIMIT`` bytes. No TLS, no proxies, no redirects, no decoding: the caller
(``dsmirror._fetch.http.HttpSource``) follows redirects itself, checks the answer, and sends
https URLs and anything a proxy applies to through httpx.

Bounded like httpx's connections (``dsmirror._fetch.transport``): every connect, send and read
is clamped to the calling thread's deadlines (``clamp``) and counts what it read in them, and
each connection is registered with its ``Sockets``, whose ``abort()`` shuts it down.

Errors: ``TimeoutError`` (a timeout or a passed deadline), ``OSError`` (connect, reset) and
``WireError`` (the server broke the protocol, or closed the connection early); the caller
translates them into SourceErrors.
"""

from __future__ import annotations

import contextlib
import mmap
import re
import select
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import overload

from dsmirror._fetch.transport import Sockets, clamp, count_received

__all__ = ["BUFFER", "HEAD_LIMIT", "Headers", "Pool", "Response", "WireError", "usable_target"]

#: Bytes each connection reads at most at once (and holds): 1 MiB. Measured on 1/3 GiB from nginx
#: over loopback (recv_into, SHA-256 and pwrite of each read): 0.41 CPU s with 1 MiB reads into
#: one buffer, 0.75 s with a fresh 1 MiB ``bytes`` per read (recv), 1.03 s with 256 KiB recv.
BUFFER = 1 << 20
#: ``iter_body(align=...)``: each body byte sits in the (page-aligned) buffer at a position equal,
#: modulo ``ALIGN``, to its offset in the file, and a view ends on such a boundary unless it ends
#: the body: the store writes such views with O_DIRECT straight from here, no copy of its own
#: (``dsmirror._journal.direct``).
ALIGN = 4096
HEAD_LIMIT = 64 << 10
_LINE_LIMIT = 8 << 10
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


class WireError(Exception):
    """The server broke HTTP/1.1, or closed the connection before the answer ended."""


class Headers:
    """Response header fields by lower-cased name; repeated fields joined with ", " (as httpx)."""

    def __init__(self, fields: Sequence[tuple[str, str]]) -> None:
        self._d: dict[str, str] = {}
        for name, value in fields:
            key = name.lower()
            self._d[key] = f"{self._d[key]}, {value}" if key in self._d else value

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return self._d.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._d


def usable_target(target: str, headers: Mapping[str, str]) -> bool:
    """Whether a request for ``target`` with ``headers`` can go out as it is: printable ASCII
    without spaces in the target, no CR/LF/NUL or non-latin-1 in the fields (anything else is
    left to httpx, which encodes or refuses it)."""
    if not target.startswith("/") or not target.isascii() or not target.isprintable() or " " in target:
        return False
    for k, v in headers.items():
        if not _TOKEN.fullmatch(k.encode("ascii", "replace")):
            return False
        if any(c in v for c in "\r\n\0") or not all(ord(c) < 256 for c in v):
            return False
    return True


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent junk)."""
    try:
        p = select.poll()
    except AttributeError:  # no poll (Windows)
        r, _, _ = select.select([sock], [], [], 0)
        return bool(r)
    p.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(p.poll(0))


class _Conn:
    """One connection and its read buffer; ``lo:hi`` of the buffer is read and not yet consumed."""

    def __init__(self, sock: socket.socket, key: tuple[str, int], pool: Pool) -> None:
        self.sock = sock
        self.key = key
        self.pool = pool
        self.buf = mmap.mmap(-1, BUFFER)  # page-aligned (see ALIGN); pages touched as used
        self.view = memoryview(self.buf)
        self.lo = self.hi = 0
        self.closed = False
        self.requests = 0

    def shutdown(self) -> None:
        # socket.socket.shutdown wakes a thread blocked in recv_into on it (close would not).
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.sockets.forget(self)
            with contextlib.suppress(OSError):
                self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.settimeout(clamp(self.pool.stall_timeout))
        self.sock.sendall(data)

    def recv_into(self, mv: memoryview) -> int:
        self.sock.settimeout(clamp(self.pool.stall_timeout))
        n = self.sock.recv_into(mv)
        count_received(n)
        return n

    def read_ready(self, mv: memoryview) -> int:
        """Read into ``mv`` what has arrived, without waiting: -1 if nothing has (0: closed).

        With a timeout of 0 the socket is read at once (``socket.recv_into`` with a timeout
        polls first); ``recv_into`` sets the stall timeout again before it waits.
        """
        clamp(None)  # a deadline that passed ends the exchange, even with bytes waiting
        if self.sock.gettimeout() != 0.0:
            self.sock.settimeout(0.0)
        try:
            n = self.sock.recv_into(mv)
        except (BlockingIOError, InterruptedError):
            return -1
        count_received(n)
        return n

    def place(self, at: int) -> None:
        """Move the unconsumed bytes ``lo:hi`` to start at ``at``."""
        n = self.hi - self.lo
        if n and at != self.lo:
            self.buf[at : at + n] = self.buf[self.lo : self.hi]  # same size: views may be exported
        self.lo, self.hi = at, at + n

    def fill_aligned(self, want: int) -> None:
        """Read up to ``want`` more bytes after ``hi`` (room allowing): wait until the bytes on
        hand reach an ``ALIGN`` boundary (or are all that is wanted), then take whatever else
        is there without waiting."""
        enough = min(self.hi + want, (self.lo // ALIGN + 1) * ALIGN)
        while want > 0 and self.hi < len(self.buf):
            mv = self.view[self.hi : self.hi + min(want, len(self.buf) - self.hi)]
            got = self.read_ready(mv)
            if got < 0:
                if self.hi >= enough:
                    return  # a run to hand out already: no waiting for more
                got = self.recv_into(mv)
            if not got:
                return  # closed: the caller finds no bytes
            self.hi += got
            want -= got

    def _fill(self, limit: int, what: str) -> None:
        """Read more after ``hi``, making room first; at most ``limit`` bytes unconsumed."""
        if self.hi - self.lo >= limit:
            raise WireError(f"{what} longer than {limit} bytes")
        if self.hi == len(self.buf) or (self.lo and self.lo == self.hi):
            n = self.hi - self.lo
            self.buf[:n] = self.buf[self.lo : self.hi]  # same size: allowed with views exported
            self.lo, self.hi = 0, n
        # At most ``limit`` bytes a read: the body bytes read with a head stay few, so that
        # ``iter_body(align=...)`` can move them in phase.
        got = self.recv_into(self.view[self.hi : self.hi + limit])
        if not got:
            raise WireError(f"the server closed the connection in the middle of the {what}")
        self.hi += got

    def read_head(self) -> tuple[str, int, str, list[tuple[str, str]]]:
        """The next response head: (version, status, reason, fields)."""
        while True:
            m = _HEAD_END.search(self.buf, self.lo, self.hi)
            if m is not None:
                break
            self._fill(HEAD_LIMIT, "response head")
        raw = bytes(self.buf[self.lo : m.start()])
        self.lo = m.end()
        if self.lo == self.hi:
            self.lo = self.hi = 0
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        st = _STATUS.fullmatch(lines[0])
        if st is None:
            raise WireError(f"not an HTTP/1.1 status line: {lines[0][:100]!r}")
        fields = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):  # also obsolete line folding (RFC 9112 5.2)
                raise WireError(f"malformed header line {line[:100]!r}")
            fields.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
        return st.group(1).decode(), int(st.group(2)), (st.group(3) or b"").decode("latin-1"), fields

    def read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\n", self.lo, self.hi)
            if i >= 0:
                line = bytes(self.buf[self.lo : i]).rstrip(b"\r")
                self.lo = i + 1
                return line
            self._fill(_LINE_LIMIT, "chunked body")

    def read_view(self, n: int) -> memoryview:
        """Up to ``n`` (> 0) bytes of the body, valid until the next read; empty at end of file."""
        if self.lo < self.hi:
            k = min(n, self.hi - self.lo)
            mv = self.view[self.lo : self.lo + k]
            self.lo += k
            return mv
        self.lo = self.hi = 0
        got = self.recv_into(self.view[: min(n, len(self.buf))])
        return self.view[:got]


class Response:
    """An answer whose head was read; ``iter_body`` reads its body, ``close`` ends the exchange.

    A connection goes back to its pool only when its body was read to the end and the server
    keeps it open; otherwise it is closed.
    """

    def __init__(self, conn: _Conn, version: str, status: int, reason: str, headers: Headers) -> None:
        self.conn = conn
        self.status_code = status
        self.reason_phrase = reason
        self.headers = headers
        self.http_version = f"HTTP/{version}"
        te = (headers.get("transfer-encoding") or "").lower()
        cl = headers.get("content-length")
        self._keep = version == "1.1" and "close" not in (headers.get("connection") or "").lower()
        self._left = 0
        if status in (204, 304) or 100 <= status < 200:
            self._mode = "none"
        elif te:
            if te.rsplit(",", 1)[-1].strip() != "chunked":
                self._mode, self._keep = "close", False  # RFC 9112 6.3: read until the close
            else:
                self._mode = "chunked"
        elif cl is not None:
            values = {v.strip() for v in cl.split(",")}
            if len(values) != 1 or not (v := values.pop()).isascii() or not v.isdigit() or len(v) > 19:
                raise WireError(f"unusable Content-Length {cl[:100]!r}")
            self._mode, self._left = "length", int(v)
        else:
            self._mode, self._keep = "close", False
        self._done = self._mode == "none" or (self._mode == "length" and self._left == 0)
        self._chunk_left = 0  # chunked: bytes left in the current chunk
        self._crlf = False  # chunked: the CRLF after the chunk's data is still to be read

    def iter_body(self, *, borrowed: bool, align: int | None = None) -> Iterator[memoryview | bytes]:
        """The body's bytes as they arrive; ``borrowed``: views of the connection's buffer, each
        valid until the next one is asked for (else ``bytes`` of their own).

        ``align`` (borrowed only): the offset in its file of the body's first byte, modulo
        ``ALIGN`` (or any offset): a body of known length is then read as ``ALIGN`` says.
        """
        if borrowed and align is not None and self._mode == "length":
            yield from self._aligned_body(align % ALIGN)
            return
        conn = self.conn
        while not self._done:
            if self._mode == "chunked" and not self._chunk_left:
                # Here, not right after the chunk's last bytes: reading the line may move or
                # overwrite the buffer, and the caller had a view of it until now.
                if self._crlf and conn.read_line():
                    raise WireError("a chunk of the body does not end with CRLF")
                self._crlf = False
                self._next_chunk()
                continue
            if self._mode == "chunked":
                want = self._chunk_left
            else:
                want = self._left if self._mode == "length" else BUFFER
            mv = conn.read_view(want)
            if not mv:
                if self._mode == "close":
                    self._done = True
                    return
                raise WireError("the server closed the connection in the middle of the body")
            if self._mode == "chunked":
                self._chunk_left -= len(mv)
                self._crlf = not self._chunk_left
            elif self._mode == "length":
                self._left -= len(mv)
                self._done = not self._left
            yield mv if borrowed else bytes(mv)

    def _aligned_body(self, phase: int) -> Iterator[memoryview]:
        """A body of known length in views placed as ``ALIGN`` says; ``phase``: the file offset
        of its first byte modulo ALIGN. Views take what has arrived (up to the buffer), without
        waiting for more, so a slow source's bytes are handed out as soon as they come."""
        conn = self.conn
        if phase + conn.hi - conn.lo > len(conn.buf):
            # Bytes read with the head that cannot be put in phase (rare: a full buffer after a
            # short head): handed out where they are, the rest in phase.
            k = min(conn.hi - conn.lo, self._left)
            mv = conn.view[conn.lo : conn.lo + k]
            conn.lo += k
            self._left -= k
            self._done = not self._left
            phase = (phase + k) % ALIGN
            yield mv
        conn.place(phase)
        while self._left:
            if conn.hi - conn.lo < self._left:
                conn.fill_aligned(self._left - (conn.hi - conn.lo))
            k = min(conn.hi - conn.lo, self._left)
            if not k:
                raise WireError("the server closed the connection in the middle of the body")
            if k < self._left and (conn.lo + k) % ALIGN < k:
                k -= (conn.lo + k) % ALIGN  # end on a boundary; the rest goes with the next view
            mv = conn.view[conn.lo : conn.lo + k]
            conn.lo += k
            self._left -= k
            self._done = not self._left
            yield mv
            conn.place(conn.lo % ALIGN)  # the rest (under ALIGN bytes) to the front, in phase
        if conn.lo == conn.hi:
            conn.lo = conn.hi = 0

    def _next_chunk(self) -> None:
        line = self.conn.read_line()
        size = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size):
            raise WireError(f"malformed chunk size line {line[:100]!r}")
        self._chunk_left = int(size, 16)
        if not self._chunk_left:
            while self.conn.read_line():  # trailer fields, up to the empty line
                pass
            self._done = True

    def close(self) -> None:
        conn = self.conn
        if self._done and self._keep and conn.lo == conn.hi and not conn.closed:
            conn.pool.put(conn)
        else:
            conn.close()


class Pool:
    """Keep-alive connections of one source, per (host, port); at most ``max_idle`` kept idle."""

    def __init__(
        self,
        sockets: Sockets,
        *,
        connect_timeout: float,
        stall_timeout: float,
        max_idle: int,
        user_agent: str,
    ) -> None:
        self.sockets = sockets
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.max_idle = max_idle
        self.user_agent = user_agent
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._lock = threading.Lock()

    def get(self, host: str, port: int, target: str, headers: Mapping[str, str]) -> Response:
        """Send ``GET target`` to ``host:port`` and read the answer's head (1xx skipped).

        A kept-alive connection that fails before any byte of the head came back (the server
        closed it while idle) is replaced by a new one, once: a GET may be sent again.
        """
        key = (host, port)
        request = self._request(host, port, target, headers)
        for attempt in range(2):
            conn, reused = self._take(key)
            try:
                conn.send(request)
                conn.requests += 1
                version, status, reason, fields = conn.read_head()
                while 100 <= status < 200:
                    if status == 101:
                        raise WireError("the server switched protocols (101)")
                    version, status, reason, fields = conn.read_head()
                return Response(conn, version, status, reason, Headers(fields))
            except (OSError, WireError) as exc:
                conn.close()
                fresh_failure = isinstance(exc, TimeoutError) or not reused or attempt
                if fresh_failure or conn.hi:  # a reused one that got no byte back: retry once
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _request(self, host: str, port: int, target: str, headers: Mapping[str, str]) -> bytes:
        ip6 = ":" in host
        authority = f"[{host}]" if ip6 else host
        if port != 80:
            authority += f":{port}"
        fields = {
            "Host": authority,
            "Accept": "*/*",
            "Accept-Encoding": "identity",
            "Connection": "keep-alive",
            "User-Agent": self.user_agent,
        }
        lower = {k.lower(): k for k in fields}
        for k, v in headers.items():
            fields.pop(lower.get(k.lower(), k), None)
            fields[k] = v
        lines = [f"GET {target} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items()), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def _take(self, key: tuple[str, int]) -> tuple[_Conn, bool]:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return self._connect(key), False
            if conn.closed or _readable(conn.sock):
                conn.close()
                continue
            return conn, True

    def _connect(self, key: tuple[str, int]) -> _Conn:
        if self.sockets.aborted:
            raise ConnectionAbortedError("the client was closed")
        host, port = key
        # An ASCII host name as bytes: getaddrinfo encodes a str with the idna codec, whose
        # import (encodings.idna, stringprep, unicodedata) the first connection would wait for.
        address = (host.encode("ascii") if host.isascii() else host, port)
        sock = socket.create_connection(address, timeout=clamp(self.connect_timeout))  # type: ignore[arg-type]
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            raise
        conn = _Conn(sock, key, self)
        if not self.sockets.track(conn):  # aborted while connecting
            conn.closed = True
            sock.close()
            raise ConnectionAbortedError("the client was closed")
        return conn

    def put(self, conn: _Conn) -> None:
        with self._lock:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.max_idle and not self.sockets.aborted:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            c.close()
