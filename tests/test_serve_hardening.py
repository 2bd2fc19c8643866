"""``dsmirror serve`` under hostile clients (issue 12 item 5), over raw sockets on 127.0.0.0/8.

Idle and slow-header connections are closed within their bounds, slow readers are cut so their
slots come back, a flood of idle connections under the common 1024-descriptor limit does not keep a
new client out, malformed input is a 4xx with one log line and no traceback. The servers here run
with short ``ConnectionLimits`` so the whole file takes seconds.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from dsmirror._serve import ConnectionLimits, HfRepo, ModelIndex, OllamaModel, ServerThread, make_app
from dsmirror._serve._connections import connection_bound

REPO_ID = "acme/safe"
BIG = 64 * 1024 * 1024
BIG_URL = f"/{REPO_ID}/resolve/main/big.bin"
SHORT = ConnectionLimits(header_timeout=1.0, keepalive_timeout=1.5, send_timeout=1.0)
RELAXED = ConnectionLimits(header_timeout=20.0, keepalive_timeout=20.0, send_timeout=20.0)
LOGGER = "dsmirror._serve._connections"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ModelIndex:
    root = tmp_path_factory.mktemp("hardening")
    repo = root / "repo"
    repo.mkdir()
    with (repo / "big.bin").open("wb") as f:
        f.truncate(BIG)  # sparse: cheap to make and to hash
    (repo / "config.json").write_text('{"model_type": "tiny"}')
    (root / "weights").write_bytes(b"w" * 100_000)
    model = OllamaModel.from_files(
        "library", "tiny", "latest", [("application/vnd.ollama.image.model", root / "weights")], b"{}"
    )
    return ModelIndex([HfRepo.from_folder(REPO_ID, repo)], ollama_models=[model])


@pytest.fixture(scope="module")
def server(index: ModelIndex) -> Iterator[ServerThread]:
    with ServerThread(make_app(index), limits=SHORT) as srv:
        yield srv


def _connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    so = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        so.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    so.bind((source, 0))
    so.connect(("127.0.0.1", port))
    return so


def _closed_after(so: socket.socket, limit: float = 10.0) -> float:
    """Seconds until the server ends the connection (reading and dropping whatever it sends)."""
    start = time.monotonic()
    so.settimeout(limit)
    try:
        while so.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return limit  # still open
    return time.monotonic() - start


def _count_closed(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has ended (a FIN or a reset is waiting), without blocking."""
    poller = select.poll()
    for so in socks:
        poller.register(so, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(0)}
    closed = 0
    for so in socks:
        if so.fileno() in ready:
            try:
                closed += so.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except ConnectionResetError:
                closed += 1
    return closed


def _get(port: int, target: bytes, headers: bytes = b"", method: bytes = b"GET") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as so:
        so.sendall(
            method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        data = b""
        while chunk := so.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@contextmanager
def _descriptors(needed: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE raised to ``needed`` for the block (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None and "Traceback" not in record.getMessage(), record.getMessage()
        assert record.levelno < logging.ERROR, record.getMessage()


# --- the bounds, pure ---------------------------------------------------------------------------


def test_connection_bound_keeps_descriptors_for_files() -> None:
    assert connection_bound(4096, 1024) == 896
    assert connection_bound(4096, 20_000) == 4096
    assert connection_bound(300, 1024) == 300
    assert connection_bound(4096, 100) == 36
    assert connection_bound(4096, None) == 4096
    assert connection_bound(4096, 10) == 1


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(header_timeout=0)
    with pytest.raises(ValueError):
        ConnectionLimits(max_connections_per_client=0)


# --- time bounds --------------------------------------------------------------------------------


def test_a_silent_connection_is_closed_at_the_header_timeout(server: ServerThread) -> None:
    with _connect(server.port) as so:
        lived = _closed_after(so)
    assert SHORT.header_timeout - 0.1 <= lived < SHORT.header_timeout + 1.5, lived


def test_half_a_request_head_is_closed(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    with _connect(server.port) as so:
        start = time.monotonic()
        so.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(25):  # drip-feed a header: a byte every 0.2 s, the head never whole
                so.sendall(b"X")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _closed_after(so)
        lived = time.monotonic() - start
    assert SHORT.header_timeout - 0.1 <= lived < SHORT.header_timeout + 1.5, lived
    lines = [r.getMessage() for r in caplog.records if "slow headers" in r.getMessage()]
    assert len(lines) == 1, lines


def test_keepalive_idle_is_closed(server: ServerThread) -> None:
    with _connect(server.port) as so:
        so.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        so.settimeout(5)
        assert so.recv(65536).startswith(b"HTTP/1.1 200")
        answered = time.monotonic()
        while True:  # the connection stays open between requests...
            try:
                if not so.recv(65536):
                    break
            except ConnectionResetError:
                break
        lived = time.monotonic() - answered
    # ...until keepalive_timeout (aiohttp checks it on a rounded timer: allow a second more)
    assert SHORT.keepalive_timeout - 0.1 <= lived < SHORT.keepalive_timeout + 2, lived


def test_a_busy_connection_is_not_timed_out(server: ServerThread) -> None:
    """A client reading a long answer at a fair pace keeps its connection past every timeout."""
    with _connect(server.port, rcvbuf=65536) as so:
        so.sendall(f"GET {BIG_URL} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-{2_000_000 - 1}\r\n\r\n".encode())
        so.settimeout(5)
        got, start = 0, time.monotonic()
        while got < 2_000_000:
            chunk = so.recv(100_000)
            assert chunk, f"cut after {got} bytes"
            got += len(chunk)
            time.sleep(0.05)  # ~2 MB/s: slow, but far from a slow reader
        assert time.monotonic() - start > SHORT.send_timeout


# --- slow readers and connection bounds ---------------------------------------------------------


def test_slow_readers_do_not_lock_their_address_out(
    index: ModelIndex, caplog: pytest.LogCaptureFixture
) -> None:
    """150 slow readers from one address fill its 128 request slots; once cut they give them back."""
    caplog.set_level(logging.INFO)
    limits = ConnectionLimits(send_timeout=3.0)
    with ServerThread(make_app(index), limits=limits) as srv:
        readers = []
        try:
            for _ in range(150):
                so = _connect(srv.port, rcvbuf=4096)
                so.sendall(f"GET {BIG_URL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                readers.append(so)
            time.sleep(0.3)
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                assert c.get("/healthz").status_code == 503  # the address's slots are all taken
                start = time.monotonic()
                while (status := c.get("/healthz").status_code) != 200 and time.monotonic() - start < 15:
                    time.sleep(0.1)
                recovered = time.monotonic() - start
                assert status == 200
                assert recovered < limits.send_timeout + 3, recovered
                r = c.get(BIG_URL, headers={"Range": "bytes=0-65535"})
                assert r.status_code == 206 and len(r.content) == 65536
        finally:
            for so in readers:
                so.close()
    cuts = [r.getMessage() for r in caplog.records if "slow reader" in r.getMessage()]
    assert 1 <= len(cuts) <= 128, len(cuts)  # one line each (the 503'd ones were never sending)
    _no_traceback(caplog)


def test_per_client_bound_closes_that_clients_idle_connections(index: ModelIndex) -> None:
    limits = ConnectionLimits(header_timeout=30, max_connections_per_client=20)
    with ServerThread(make_app(index), limits=limits) as srv:
        idle = [_connect(srv.port, "127.0.0.3") for _ in range(30)]
        other = [_connect(srv.port, "127.0.0.4") for _ in range(5)]
        try:
            with httpx.Client(base_url=srv.url, timeout=5) as c:
                assert c.get("/healthz").status_code == 200
            time.sleep(0.3)
            assert _count_closed(idle[:10]) == 10  # the oldest ten, to stay at 20
            assert _count_closed(idle[10:]) == 0
            assert _count_closed(other) == 0  # other addresses untouched
        finally:
            for so in idle + other:
                so.close()


def test_a_full_house_of_busy_connections_answers_503(index: ModelIndex) -> None:
    limits = ConnectionLimits(send_timeout=30, max_connections=5)
    with ServerThread(make_app(index), limits=limits) as srv:
        busy = []
        try:
            for i in range(5):
                so = _connect(srv.port, f"127.0.0.{10 + i}", rcvbuf=4096)
                so.sendall(f"GET {BIG_URL} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                busy.append(so)
            time.sleep(0.3)
            with _connect(srv.port, "127.0.0.20") as so:
                so.settimeout(5)
                reply = so.recv(4096)
            assert reply.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in reply
        finally:
            for so in busy:
                so.close()
        with httpx.Client(base_url=srv.url, timeout=5) as c:  # they went away: room again
            deadline = time.monotonic() + 5
            while c.get("/healthz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.get("/healthz").status_code == 200


_SERVE = [sys.executable, "-c", "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()"]


def _serve_with_nofile(tmp_path: Path, soft: int) -> tuple[subprocess.Popen[str], int]:
    """``dsmirror serve`` as a child whose soft RLIMIT_NOFILE is ``soft``; its port."""
    env = {
        k: v
        for k, v in os.environ.items()
        if "proxy" not in k.lower() and not k.startswith(("HF_", "OLLAMA"))
    }
    env.update(HOME=str(tmp_path), NO_PROXY="*")
    (tmp_path / "models").mkdir()
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            f'ulimit -Sn {soft} && exec "$0" "$@"',  # the limit set in the child only (no preexec_fn)
            *_SERVE,
            "serve",
            "--port",
            "0",
            "--no-default-catalog",
            "--ollama-models",
            str(tmp_path / "models"),
            "--hf-cache",
            str(tmp_path / "hf"),
            "--rescan",
            "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line + (proc.stderr.read() if proc.stderr else "")
    threading.Thread(target=proc.stderr.read if proc.stderr else (lambda: None), daemon=True).start()
    return proc, int(line.rsplit(":", 1)[1])


def test_an_idle_flood_under_1024_descriptors_keeps_room_for_new_clients(tmp_path: Path) -> None:
    """The issue's case: 1100 idle connections to a box with the common 1024-descriptor limit."""
    proc, port = _serve_with_nofile(tmp_path, 1024)
    flood: list[socket.socket] = []
    try:
        with _descriptors(4096):
            for i in range(1100):  # from five addresses, each under the per-client bound
                flood.append(_connect(port, f"127.0.0.{2 + i % 5}"))
            start = time.monotonic()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                assert c.get("/healthz").status_code == 200
            served_in = time.monotonic() - start
            assert served_in < 3, served_in
            time.sleep(0.3)
            closed = _count_closed(flood)
            # The child kept at most 896 (1024 less its reserve), closing the oldest first.
            assert closed >= 1100 - 896 and _count_closed(flood[:closed]) == closed, closed
            for so in flood:
                so.close()
            flood.clear()
    finally:
        for so in flood:
            so.close()
        proc.terminate()
        proc.wait(15)


# --- malformed input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "bytes=0-" + "9" * 5000,
        "bytes=" + "1" * 5000 + "-",
        "bytes=-" + "9" * 5000,
        "bytes=0-99999999999999999999",
        "bytes=--",
        "bytes=abc-def",
        "bytes=\u0661-\u0662",
    ],
)
def test_malformed_ranges_are_416(
    server: ServerThread, index: ModelIndex, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    blob = index.ollama_models[0].layers[1].digest
    for url in (BIG_URL, f"/v2/library/tiny/blobs/{blob}"):
        status, data = _get(server.port, url.encode(), b"Range: " + value.encode("utf-8") + b"\r\n")
        assert status in (400, 416), data[:200]
    _no_traceback(caplog)


@pytest.mark.parametrize(
    "head",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /healthz\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_a_malformed_head_is_one_log_line(
    server: ServerThread, head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as so:
        so.sendall(head)
        reply = b""
        while chunk := so.recv(65536):
            reply += chunk
    assert reply.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.0 400 Bad Request"), reply[
        :100
    ]
    time.sleep(0.1)  # the log line is written after the answer
    lines = [r for r in caplog.records if r.name.startswith(("aiohttp", "dsmirror"))]
    assert len(lines) == 1 and "malformed request" in lines[0].getMessage(), [r.getMessage() for r in lines]
    _no_traceback(caplog)


def test_rejected_requests_log_one_line_each(server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    with httpx.Client(base_url=server.url, timeout=5) as c:
        assert c.post("/healthz", content=b"x").status_code == 405
        assert c.get("/acme/safe/resolve/main/%2e%2e/x").status_code == 400
        assert c.delete("/v2/library/tiny/manifests/latest").status_code == 405
        assert c.get("/acme/safe/resolve/main/nope.bin").status_code == 404  # a miss: not a rejection
        assert c.get("/healthz").status_code == 200
    time.sleep(0.1)
    lines = [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("rejected")
    ]
    assert len(lines) == 3, lines
    assert "405 POST '/healthz'" in lines[0] and " 400 GET " in lines[1] and "405 DELETE" in lines[2]
    _no_traceback(caplog)


_TARGETS = [
    "/healthz",
    "/v2/",
    "/v2/_catalog",
    "/v2/library/tiny/tags/list",
    "/v2/library/tiny/manifests/latest",
    "/v2/library/tiny/blobs/{blob}",
    f"/api/models/{REPO_ID}",
    f"/api/models/{REPO_ID}/tree/main",
    f"/{REPO_ID}/resolve/main/config.json",
    f"/api/v1/models/{REPO_ID}/repo?FilePath=config.json",
    f"/api/v1/models/{REPO_ID}/repo/files",
    "/dsmirror/files/x/y",
]
_JUNK = ["%", "%zz", "%00", "%ff%fe", "\u00e9", "?n=-1", "?n=1e9", "?last=%ff", "?cursor=-5", "/..", "//"]
_JUNK += ["?cursor=" + "9" * 5000, "?n=" + "9" * 5000, "?recursive=true&cursor=x", "?FilePath=../../x"]
_JUNK += ["/%2e%2e", "?Revision=%00"]
_HEADERS = ["Range: bytes=0-" + "9" * 5000, "Range: bytes=5-1", "Range: bytes=,", "Range: x"]
_HEADERS += ["Range: bytes=-0", 'If-Range: "x"', "If-None-Match: *", 'If-Match: W/"x"', "Cookie: x"]


def test_hostile_requests_get_no_5xx_and_one_line_each(
    index: ModelIndex, caplog: pytest.LogCaptureFixture
) -> None:
    """Generated hostile requests over every route: never a 5xx or a traceback; a log line per rejection."""
    caplog.set_level(logging.INFO, LOGGER)
    blob = index.ollama_models[0].layers[1].digest
    rng, statuses = random.Random(12), []
    # Its own server (no other test's connections), with bounds no slow turn of a loaded machine
    # reaches: this test is about answers and log lines, not timeouts.
    with ServerThread(make_app(index), limits=RELAXED) as srv:
        for _ in range(300):
            junk = rng.choice(_JUNK) if rng.random() < 0.6 else ""
            target = rng.choice(_TARGETS).format(blob=blob) + junk
            method = rng.choice(["GET", "GET", "HEAD", "POST", "DELETE"])
            headers = "".join(h + "\r\n" for h in rng.sample(_HEADERS, rng.randint(0, 3)))
            status, data = _get(srv.port, target.encode(), headers.encode(), method=method.encode())
            assert status < 500, (method, target[:100], headers[:200], data[:200])
            statuses.append(status)
        rejected = [s for s in statuses if s >= 400 and s != 404]

        def lines() -> list[str]:
            messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            return [m for m in messages if m.startswith("rejected")]

        deadline = time.monotonic() + 5  # a line is written just after its answer
        while len(lines()) < len(rejected) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(lines()) == len(rejected) and len(rejected) > 50, (len(lines()), len(rejected))
    _no_traceback(caplog)
