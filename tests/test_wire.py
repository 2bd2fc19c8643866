"""dsmirror._fetch.wire, the lean HTTP/1.1 client under HttpSource for plain http (issue 14).

Real sockets on 127.0.0.0/8: a scripted server speaks raw bytes, so each test decides exactly
what the client gets (keep-alive or not, chunk boundaries, heads that never end, a proxy).
The contract of every source (exact bytes, faults, threads) is tests/test_conformance.py's.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dsmirror._core.errors import SourceError, SourceUnavailable
from dsmirror._fetch import wire
from dsmirror._fetch.http import HttpSource
from dsmirror._formats.manifest import FileEntry
from dsmirror._schedule.info import SourceInfo
from dsmirror.testing import MirrorServer

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes
ENTRY = FileEntry("f.bin", len(DATA), hashlib.sha256(DATA).hexdigest(), ())


class Scripted:
    """A server on 127.0.0.1 that runs ``handle(conn, server)`` for each connection it accepts."""

    def __init__(self, handle: Callable[[socket.socket, Scripted], None]) -> None:
        self.handle = handle
        self.connections = 0
        self.requests: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self.handle(conn, self)

    def read_request(self, conn: socket.socket) -> bytes | None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            got = conn.recv(65536)
            if not got:
                return None
            buf += got
        self.requests.append(buf)
        return buf

    def close(self) -> None:
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def scripted(handle: Callable[[socket.socket, Scripted], None]) -> Iterator[Scripted]:
    srv = Scripted(handle)
    try:
        yield srv
    finally:
        srv.close()


def _range(req: bytes) -> tuple[int, int]:
    m = re.search(rb"\r\nRange: bytes=(\d+)-(\d+)\r\n", req)
    assert m, req
    return int(m.group(1)), int(m.group(2))


def _206(start: int, end: int, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\nContent-Range: bytes %d-%d/%d\r\n%s\r\n"
        % (end - start + 1, start, end, len(DATA), extra)
    )


def _source(url: str, **kw: float) -> HttpSource:
    return HttpSource(SourceInfo("m", "http", "127.0.0.1", max_connections=2), lambda f: url + f.path, **kw)  # type: ignore[arg-type]


def _get(src: HttpSource, start: int, end: int, *, views: bool = False) -> bytes:
    opener = src.open_range_views if views else src.open_range
    out = bytearray()
    with opener(ENTRY, start, end) as chunks:
        for c in chunks:
            out += c
    return bytes(out)


def test_plain_http_goes_through_wire_and_keeps_its_connection(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(DATA)
    with MirrorServer(tmp_path) as mirror:
        src = _source(mirror.url)
        try:
            assert src._wire_target(mirror.url + "f.bin", {}) is not None
            for start, end in ((0, 99), (100, len(DATA) - 1), (5, 5)):
                assert _get(src, start, end, views=True) == DATA[start : end + 1]
                assert _get(src, start, end) == DATA[start : end + 1]
            assert src._wire is not None and sum(len(v) for v in src._wire._idle.values()) == 1
        finally:
            src.close()


def test_chunked_bodies_with_extensions_trailers_and_odd_boundaries() -> None:
    def handle(conn: socket.socket, srv: Scripted) -> None:
        while (req := srv.read_request(conn)) is not None:
            start, end = _range(req)
            body = DATA[start : end + 1]
            out = _206(start, end).replace(b"Content-Length: %d\r\n" % len(body), b"")
            out = out.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            conn.sendall(out)
            i, n = 0, 1
            while i < len(body):  # chunks of 1, 2, 4, ... bytes, sent a few at a time
                part = body[i : i + n]
                msg = b"%x;ext=1\r\n%s\r\n" % (len(part), part)
                for k in range(0, len(msg), 7777):
                    conn.sendall(msg[k : k + 7777])
                i, n = i + n, min(n * 2, 300_000)
            conn.sendall(b"0\r\nX-Trailer: yes\r\n\r\n")

    with scripted(handle) as srv:
        src = _source(srv.url)
        try:
            assert _get(src, 0, len(DATA) - 1, views=True) == DATA
            assert _get(src, 10, 70_000) == DATA[10:70_001]
            assert srv.connections == 1  # the chunked answer ended cleanly: kept alive
        finally:
            src.close()


def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    """The server closes after each answer without saying so: every request still succeeds."""

    def handle(conn: socket.socket, srv: Scripted) -> None:
        req = srv.read_request(conn)
        if req is not None:
            start, end = _range(req)
            conn.sendall(_206(start, end) + DATA[start : end + 1])

    with scripted(handle) as srv:
        src = _source(srv.url)
        try:
            for k in range(4):
                time.sleep(0.05)  # let the close arrive
                assert _get(src, k, 1000 + k) == DATA[k : 1001 + k]
            assert srv.connections == 4
        finally:
            src.close()


def test_a_head_that_never_ends_and_a_malformed_one_are_that_source_s_error() -> None:
    def endless(conn: socket.socket, srv: Scripted) -> None:
        srv.read_request(conn)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\n")
        with contextlib.suppress(OSError):
            while True:
                conn.sendall(b"X-Junk: " + b"a" * 1000 + b"\r\n")

    def malformed(conn: socket.socket, srv: Scripted) -> None:
        srv.read_request(conn)
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\n no-colon-folded\r\n\r\n")

    for handle, says in ((endless, "longer than"), (malformed, "malformed header")):
        with scripted(handle) as srv:
            src = _source(srv.url)
            try:
                with pytest.raises(SourceUnavailable) as info:
                    _get(src, 0, 99)
                assert says in str(info.value) and "\n" not in str(info.value)
            finally:
                src.close()


def test_close_wakes_a_reader_blocked_in_the_middle_of_a_body() -> None:
    def handle(conn: socket.socket, srv: Scripted) -> None:
        req = srv.read_request(conn)
        assert req is not None
        start, end = _range(req)
        conn.sendall(_206(start, end) + DATA[start : start + 1000])
        time.sleep(30)

    with scripted(handle) as srv:
        src = _source(srv.url, stall_timeout=30.0)
        got: list[BaseException] = []

        def read() -> None:
            try:
                _get(src, 0, len(DATA) - 1, views=True)
            except BaseException as exc:
                got.append(exc)

        t = threading.Thread(target=read)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        src.close()
        t.join(5)
        assert not t.is_alive() and time.monotonic() - t0 < 2
        assert got and isinstance(got[0], SourceError), got


def test_a_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set, plain http goes through httpx and the proxy, never around it."""

    def proxy(conn: socket.socket, srv: Scripted) -> None:
        req = srv.read_request(conn)
        assert req is not None
        start, end = _range(req)
        conn.sendall(_206(start, end) + DATA[start : end + 1])

    with scripted(proxy) as srv:
        monkeypatch.setenv("HTTP_PROXY", srv.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        src = _source("http://mirror.invalid/")
        try:
            assert src._wire_target("http://mirror.invalid/f.bin", {}) is None
            assert _get(src, 0, 99, views=True) == DATA[:100]
        finally:
            src.close()
    assert srv.requests and srv.requests[0].startswith(b"GET http://mirror.invalid/f.bin HTTP/1.1")


def test_targets_and_fields_that_need_encoding_are_left_to_httpx() -> None:
    assert wire.usable_target("/a/b%20c.bin?x=1", {"Range": "bytes=0-1", "Authorization": "Bearer t"})
    assert not wire.usable_target("/a b", {})
    assert not wire.usable_target("/é", {})
    assert not wire.usable_target("/a", {"X": "v\r\nInjected: 1"})
    assert not wire.usable_target("/a", {"Bad Name": "v"})
