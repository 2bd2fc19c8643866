"""Tests of dsmirror.testing.mirror: the loopback HTTP mirror the other tests download from.

Everything runs against real sockets on 127.0.0.x with httpx as the client. Timing tests use
generous bounds: they check that the tool throttles, not how precisely the machine schedules.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dsmirror.testing import Faults, MirrorServer, write_random_tree

SIZES = {"a.bin": 100_000, "sub/b.bin": 300_000, "empty.bin": 0, "one.bin": 1, "r.bin": 1000}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    base = tmp_path_factory.mktemp("mirror")
    (base / "secret.txt").write_bytes(b"outside the root")
    root = base / "root"
    write_random_tree(root, SIZES)
    return root, {name: (root / name).read_bytes() for name in SIZES}


@pytest.fixture
def root(tree: tuple[Path, dict[str, bytes]]) -> Path:
    return tree[0]


@pytest.fixture
def data(tree: tuple[Path, dict[str, bytes]]) -> dict[str, bytes]:
    return tree[1]


@pytest.fixture
def mirror(root: Path) -> Iterator[MirrorServer]:
    with MirrorServer(root) as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=5.0) as c:
        yield c


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread; the list receives its result or the exception it raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- plain serving -----------------------------------------------------------------------------


def test_get_whole_file_with_validators(
    mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes]
) -> None:
    r = client.get(mirror.url + "sub/b.bin")
    assert r.status_code == 200
    assert r.content == data["sub/b.bin"]
    assert r.headers["content-length"] == str(len(data["sub/b.bin"]))
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["last-modified"].endswith(" GMT")
    assert r.headers["etag"] == client.get(mirror.url + "sub/b.bin").headers["etag"]
    assert r.headers["etag"] != client.get(mirror.url + "a.bin").headers["etag"]


def _range_cases() -> Iterator[tuple[str, str]]:
    """Range headers on, one below and one above each boundary of files of 0, 1 and 1000 bytes."""
    for name in ("empty.bin", "one.bin", "r.bin"):
        size = SIZES[name]
        points = sorted({p for p in (0, 1, size - 2, size - 1, size, size + 1) if p >= 0})
        for start in points:
            yield name, f"bytes={start}-"
            for end in points:
                yield name, f"bytes={start}-{end}"
        for n in points:
            yield name, f"bytes=-{n}"


def _expected(size: int, header: str) -> tuple[int, int, int]:
    """(status, first, last) per RFC 9110 for one ``bytes=`` range on a file of ``size`` bytes."""
    first, _, last = header.removeprefix("bytes=").partition("-")
    if not first:
        n = int(last)
        return (416, 0, 0) if n == 0 or size == 0 else (206, max(0, size - n), size - 1)
    start, end = int(first), int(last) if last else size - 1
    if last and end < start:
        return 200, 0, size - 1
    if start >= size:
        return 416, 0, 0
    return 206, start, min(end, size - 1)


@pytest.fixture(scope="module")
def shared_mirror(tree: tuple[Path, dict[str, bytes]]) -> Iterator[MirrorServer]:
    with MirrorServer(tree[0]) as server:
        yield server


@pytest.mark.parametrize(("name", "header"), list(_range_cases()))
def test_range_semantics(
    shared_mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes], name: str, header: str
) -> None:
    content = data[name]
    status, first, last = _expected(len(content), header)
    r = client.get(shared_mirror.url + name, headers={"Range": header})
    assert r.status_code == status
    if status == 416:
        assert r.headers["content-range"] == f"bytes */{len(content)}"
        return
    assert r.content == content[first : last + 1]
    assert r.headers["content-length"] == str(len(r.content))
    if status == 206:
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(content)}"
    else:
        assert "content-range" not in r.headers


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=abc", "items=0-1", "bytes=-", "bytes=9-3"])
def test_ranges_it_cannot_serve_are_ignored(
    shared_mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes], header: str
) -> None:
    r = client.get(shared_mirror.url + "r.bin", headers={"Range": header})
    assert (r.status_code, r.content) == (200, data["r.bin"])


def test_head_sends_headers_only(mirror: MirrorServer, client: httpx.Client) -> None:
    r = client.head(mirror.url + "a.bin")
    assert (r.status_code, r.headers["content-length"], r.content) == (200, "100000", b"")
    r = client.head(mirror.url + "a.bin", headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.headers["content-range"], r.headers["content-length"]) == (
        206,
        "bytes 10-19/100000",
        "10",
    )
    assert client.head(mirror.url + "a.bin", headers={"Range": "bytes=100000-"}).status_code == 416
    assert (mirror.requests, mirror.bytes_served) == (3, 0)


def test_missing_files_directories_and_traversal_are_404(root: Path, client: httpx.Client) -> None:
    with MirrorServer(root, prefix="/models/") as mirror:
        assert mirror.url == f"http://127.0.0.1:{mirror.port}/models/"
        assert client.get(mirror.url + "a.bin").status_code == 200
        for path in ("/a.bin", "/models/nope.bin", "/models/sub", "/models/", "/secret.txt"):
            assert client.get(f"http://127.0.0.1:{mirror.port}{path}").status_code == 404, path
        # httpx normalises dot segments, so send the raw request lines.
        for raw in ("/models/../secret.txt", "/models/%2e%2e/secret.txt", "/models/sub/../../secret.txt"):
            conn = http.client.HTTPConnection(mirror.host, mirror.port, timeout=5)
            conn.request("GET", raw)
            assert conn.getresponse().status == 404, raw
            conn.close()


def test_keep_alive_reuses_one_connection(mirror: MirrorServer, client: httpx.Client) -> None:
    streams = set()
    for _ in range(3):
        r = client.get(mirror.url + "a.bin", headers={"Range": "bytes=0-9"})
        assert r.http_version == "HTTP/1.1"
        streams.add(id(r.extensions["network_stream"]))
    assert len(streams) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.0.0.3"])
def test_loopback_hosts(root: Path, client: httpx.Client, data: dict[str, bytes], host: str) -> None:
    with MirrorServer(root, host=host) as mirror:
        assert (mirror.host, mirror.url) == (host, f"http://{host}:{mirror.port}/")
        assert client.get(mirror.url + "a.bin").content == data["a.bin"]


def test_unthrottled_is_fast(tmp_path: Path) -> None:
    size = 64 * 1024 * 1024
    write_random_tree(tmp_path, {"big.bin": size})
    with MirrorServer(tmp_path) as mirror:
        conn = http.client.HTTPConnection(mirror.host, mirror.port, timeout=5)
        start = time.perf_counter()
        conn.request("GET", "/big.bin")
        response = conn.getresponse()
        received = 0
        buffer = bytearray(1024 * 1024)
        while n := response.readinto(buffer):
            received += n
        elapsed = time.perf_counter() - start
        conn.close()
    assert received == size
    assert elapsed < 2.0  # > 32 MB/s; typically ~1 GB/s through http.client


# -- bandwidth and latency ---------------------------------------------------------------------


def test_rate_is_shared_by_all_connections(tmp_path: Path) -> None:
    write_random_tree(tmp_path, {"f.bin": 2_000_000})
    with MirrorServer(tmp_path, rate=4_000_000) as mirror:
        thirds = [(0, 666_665), (666_666, 1_333_332), (1_333_333, 1_999_999)]

        def fetch(first: int, last: int) -> float:
            with httpx.Client(trust_env=False, timeout=5.0) as c:
                r = c.get(mirror.url + "f.bin", headers={"Range": f"bytes={first}-{last}"})
                assert len(r.content) == last - first + 1
            return time.perf_counter() - start

        start = time.perf_counter()
        runs = [in_thread(functools.partial(fetch, a, b)) for a, b in thirds]
        for thread, _ in runs:
            thread.join(5)
        elapsed = time.perf_counter() - start
        finished = [outcome[0] for _, outcome in runs]
        assert all(isinstance(t, float) for t in finished), finished
        # 2 MB at 4 MB/s: 0.5 s. Not faster (the rate is not each connection's), and not as slow as
        # a third of the rate (1.5 s); the upper bound leaves room for a loaded machine.
        assert 0.375 < elapsed < 1.0, elapsed
        # Shared fairly: no connection got the whole rate and finished in a third of the time.
        assert min(t for t in finished if isinstance(t, float)) > 0.2  # shared, less a 50 ms burst
        assert mirror.bytes_served == 2_000_000


def test_set_rate_applies_to_responses_already_streaming(tmp_path: Path) -> None:
    write_random_tree(tmp_path, {"f.bin": 2_000_000})
    with MirrorServer(tmp_path, rate=1_000_000) as mirror:
        thread, outcome = in_thread(
            lambda: httpx.get(mirror.url + "f.bin", trust_env=False, timeout=5).content
        )
        time.sleep(0.2)
        mirror.set_rate(0)  # paused
        time.sleep(0.1)
        paused_at = mirror.bytes_served
        assert 100_000 < paused_at < 500_000
        time.sleep(0.2)
        assert mirror.bytes_served == paused_at
        start = time.perf_counter()
        mirror.set_rate(None)
        thread.join(5)
        assert time.perf_counter() - start < 0.3  # not the 1.7 s left at 1 MB/s
        assert outcome == [(tmp_path / "f.bin").read_bytes()]
        assert mirror.rate is None


def test_latency_delays_every_response(mirror: MirrorServer, client: httpx.Client) -> None:
    client.get(mirror.url + "one.bin")  # connect outside the measurement
    mirror.set_latency(0.2)
    assert mirror.latency == 0.2
    for path in ("one.bin", "missing.bin"):
        start = time.perf_counter()
        client.get(mirror.url + path)
        assert 0.2 <= time.perf_counter() - start < 0.5
    mirror.set_latency(0.0)
    start = time.perf_counter()
    client.get(mirror.url + "one.bin")
    assert time.perf_counter() - start < 0.1


def test_invalid_settings_are_rejected(root: Path) -> None:
    with pytest.raises(ValueError):
        Faults(probability=1.5)
    with pytest.raises(ValueError):
        Faults(reset_after=-1)
    with pytest.raises(ValueError):
        MirrorServer(root, rate=-1)
    with pytest.raises(ValueError):
        MirrorServer(root).set_latency(-0.1)


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "offset"), [(None, 0), ("bytes=100-299", 100)])
def test_corrupt_flips_the_middle_byte(
    mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes], header: str | None, offset: int
) -> None:
    mirror.set_faults(Faults(corrupt=True))
    r = client.get(mirror.url + "a.bin", headers={"Range": header} if header else {})
    good = data["a.bin"][offset : offset + len(r.content)]
    diffs = [i for i, (x, y) in enumerate(zip(r.content, good, strict=True)) if x != y]
    assert diffs == [len(good) // 2]
    assert r.content[diffs[0]] == good[diffs[0]] ^ 0xFF


def test_reset_after_sends_rst(mirror: MirrorServer, client: httpx.Client) -> None:
    mirror.set_faults(Faults(reset_after=5000))
    received = 0
    with pytest.raises(httpx.ReadError) as caught, client.stream("GET", mirror.url + "a.bin") as r:
        for chunk in r.iter_raw():
            received += len(chunk)
    chain: list[BaseException] = [caught.value]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(nxt)
    assert isinstance(chain[-1], ConnectionResetError), chain
    assert received <= 5000
    assert mirror.bytes_served == 5000


def test_stall_after_pauses_then_closes(mirror: MirrorServer, client: httpx.Client) -> None:
    mirror.set_faults(Faults(stall_after=1000, stall_seconds=0.3))
    received = 0
    start = time.perf_counter()
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", mirror.url + "a.bin") as r:
        for chunk in r.iter_raw():
            received += len(chunk)
    assert received == 1000
    assert 0.3 <= time.perf_counter() - start < 0.8


def test_stall_looks_like_a_read_timeout(mirror: MirrorServer) -> None:
    mirror.set_faults(Faults(stall_after=0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(mirror.url + "a.bin", trust_env=False, timeout=0.2)


def test_short_body_breaks_content_length(mirror: MirrorServer, client: httpx.Client) -> None:
    mirror.set_faults(Faults(short_body=True))
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        client.get(mirror.url + "a.bin")
    assert mirror.bytes_served == 50_000


def test_the_earliest_cut_wins(mirror: MirrorServer, client: httpx.Client) -> None:
    mirror.set_faults(Faults(short_body=True, reset_after=80_000, stall_after=60_000, stall_seconds=0))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(mirror.url + "a.bin")
    assert mirror.bytes_served == 50_000


def test_html_instead_of_data(mirror: MirrorServer, client: httpx.Client) -> None:
    mirror.set_faults(Faults(html_instead=True))
    r = client.get(mirror.url + "a.bin", headers={"Range": "bytes=0-99"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<!DOCTYPE html>")
    assert client.head(mirror.url + "a.bin").headers["content-type"].startswith("text/html")
    assert mirror.bytes_served == 0


def test_ignore_range_answers_200_with_the_whole_file(
    mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes]
) -> None:
    mirror.set_faults(Faults(ignore_range=True))
    r = client.get(mirror.url + "a.bin", headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (200, data["a.bin"])
    assert "content-range" not in r.headers


@pytest.mark.parametrize("header", ["bytes=10-19", "bytes=99990-", "bytes=0-", "bytes=-10"])
def test_wrong_content_range_serves_another_range(
    mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes], header: str
) -> None:
    mirror.set_faults(Faults(wrong_content_range=True))
    asked = _expected(100_000, header)
    r = client.get(mirror.url + "a.bin", headers={"Range": header})
    assert r.status_code == 206
    span, _, total = r.headers["content-range"].removeprefix("bytes ").partition("/")
    first, last = (int(x) for x in span.split("-"))
    assert total == "100000"
    assert (first, last) != asked[1:]
    assert r.content == data["a.bin"][first : last + 1]


@pytest.mark.parametrize(("status", "retry_after"), [(503, 7), (429, None), (500, None)])
def test_status_with_retry_after(
    mirror: MirrorServer, client: httpx.Client, status: int, retry_after: int | None
) -> None:
    mirror.set_faults(Faults(status=status, retry_after=retry_after))
    for method in ("GET", "HEAD"):
        r = client.request(method, mirror.url + "a.bin")
        assert r.status_code == status
        assert r.headers.get("retry-after") == (None if retry_after is None else str(retry_after))
    mirror.set_faults(None)
    assert client.get(mirror.url + "a.bin").status_code == 200  # same keep-alive connection


def test_paths_and_count_limit_the_fault(mirror: MirrorServer, client: httpx.Client) -> None:
    mirror.set_faults(Faults(status=503, paths={"a.bin"}, count=2))
    codes = [client.get(mirror.url + p).status_code for p in ("sub/b.bin", "a.bin", "a.bin", "a.bin")]
    assert codes == [200, 503, 503, 200]
    assert mirror.faults_applied == 2


def test_range_start_limits_the_fault_to_requests_from_that_byte(
    mirror: MirrorServer, client: httpx.Client
) -> None:
    mirror.set_faults(Faults(status=503, range_start=0))
    url = mirror.url + "a.bin"
    codes = [
        client.get(url, headers={"Range": r} if r else {}).status_code
        for r in ("bytes=100-199", "bytes=0-99", None, "bytes=-10", "bytes=0-")
    ]
    assert codes == [206, 503, 503, 206, 503]  # no Range starts at 0; a suffix range at none


def test_count_is_spent_only_on_requests_the_fault_changes(
    mirror: MirrorServer, client: httpx.Client, data: dict[str, bytes]
) -> None:
    mirror.set_faults(Faults(corrupt=True, ignore_range=True, count=1))
    assert client.head(mirror.url + "a.bin").status_code == 200  # no body, no Range: unaffected
    assert client.get(mirror.url + "a.bin").content != data["a.bin"]
    assert client.get(mirror.url + "a.bin").content == data["a.bin"]
    assert mirror.faults_applied == 1


def test_probability_is_seeded(mirror: MirrorServer, client: httpx.Client) -> None:
    def codes() -> list[int]:
        mirror.set_faults(Faults(status=503, probability=0.5, seed=7))
        return [client.head(mirror.url + "one.bin").status_code for _ in range(20)]

    first = codes()
    assert first == codes()
    assert {200, 503} == set(first)


# -- availability ------------------------------------------------------------------------------


def test_set_down_refuses_and_aborts_then_comes_back_on_the_same_port(
    root: Path, client: httpx.Client, data: dict[str, bytes]
) -> None:
    with MirrorServer(root, rate=200_000) as mirror:
        url, port = mirror.url, mirror.port
        thread, outcome = in_thread(lambda: httpx.get(url + "sub/b.bin", trust_env=False, timeout=5))
        wait_until(lambda: mirror.bytes_served > 0)
        start = time.perf_counter()
        mirror.set_down(True)
        assert time.perf_counter() - start < 0.5
        thread.join(2)
        assert isinstance(outcome[0], httpx.TransportError)
        with pytest.raises(httpx.ConnectError):
            client.get(url + "a.bin")
        mirror.set_down(False)
        mirror.set_rate(None)
        assert (mirror.port, mirror.url) == (port, url)
        assert client.get(url + "a.bin").content == data["a.bin"]


def test_stop_ends_every_connection_and_thread(root: Path) -> None:
    baseline = threading.active_count()
    mirror = MirrorServer(root, rate=100_000)
    mirror.start()
    idle = httpx.Client(trust_env=False, timeout=5)
    idle.get(mirror.url + "one.bin")  # leaves a keep-alive connection open
    throttled, _ = in_thread(lambda: httpx.get(mirror.url + "sub/b.bin", trust_env=False, timeout=5))
    mirror.set_faults(Faults(stall_after=0, paths={"a.bin"}))
    stalled, _ = in_thread(lambda: httpx.get(mirror.url + "a.bin", trust_env=False, timeout=5))
    wait_until(lambda: mirror.requests == 3)
    start = time.perf_counter()
    mirror.stop()
    assert time.perf_counter() - start < 0.5
    throttled.join(2)
    stalled.join(2)
    idle.close()
    assert threading.active_count() == baseline, threading.enumerate()


def test_set_down_needs_a_started_server(root: Path) -> None:
    with pytest.raises(RuntimeError):
        MirrorServer(root).set_down(True)


# -- signed redirects --------------------------------------------------------------------------


def test_signed_redirect_expires_and_is_re_resolved(root: Path, data: dict[str, bytes]) -> None:
    key = b"shared-test-key"
    with (
        MirrorServer(root, host="127.0.0.3", prefix="cdn", require_signature=True, signing_key=key) as cdn,
        MirrorServer(root, host="127.0.0.2", signature_ttl=0.3, signing_key=key) as origin,
        httpx.Client(trust_env=False, timeout=5, follow_redirects=True) as client,
    ):
        origin.set_faults(Faults(redirect_to=cdn.url))
        r = client.get(origin.url + "sub/b.bin", headers={"Range": "bytes=0-9"})
        assert (r.status_code, r.content) == (206, data["sub/b.bin"][:10])
        assert [h.status_code for h in r.history] == [302]
        signed = str(r.url)
        assert signed.startswith(cdn.url + "sub/b.bin?expires=")

        assert client.get(cdn.url + "sub/b.bin").status_code == 403
        assert client.get(signed.replace("sig=", "sig=0")).status_code == 403
        assert client.get(signed, headers={"Range": "bytes=10-19"}).content == data["sub/b.bin"][10:20]
        time.sleep(0.35)
        assert client.get(signed, headers={"Range": "bytes=10-19"}).status_code == 403
        r = client.get(origin.url + "sub/b.bin", headers={"Range": "bytes=10-19"})
        assert (r.status_code, r.content) == (206, data["sub/b.bin"][10:20])
        assert cdn.bytes_served_by_path == {"sub/b.bin": 30}
        assert origin.bytes_served == 0


# -- counters and the tree helper --------------------------------------------------------------


def test_counters(mirror: MirrorServer, client: httpx.Client) -> None:
    client.get(mirror.url + "a.bin")
    client.get(mirror.url + "sub/b.bin", headers={"Range": "bytes=-1000"})
    client.get(mirror.url + "missing.bin")
    client.head(mirror.url + "a.bin")
    assert mirror.requests == 4
    assert mirror.bytes_served == 101_000
    assert mirror.bytes_served_by_path == {"a.bin": 100_000, "sub/b.bin": 1000}
    mirror.reset_counters()
    assert (mirror.requests, mirror.bytes_served, mirror.bytes_served_by_path) == (0, 0, {})


def test_write_random_tree(tmp_path: Path) -> None:
    sizes = {"x.bin": 0, "d/e/y.bin": 1, "z.bin": 4 * 1024 * 1024 + 1}
    digests = write_random_tree(tmp_path / "a", sizes, seed=3)
    for name, size in sizes.items():
        content = (tmp_path / "a" / name).read_bytes()
        assert len(content) == size
        assert hashlib.sha256(content).hexdigest() == digests[name]
    assert write_random_tree(tmp_path / "b", sizes, seed=3) == digests
    assert write_random_tree(tmp_path / "c", sizes, seed=4)["z.bin"] != digests["z.bin"]
    assert len(set(digests.values())) == 3
    fresh = write_random_tree(tmp_path / "d", sizes, deterministic=False)
    assert fresh["z.bin"] != digests["z.bin"]
    assert (tmp_path / "d" / "z.bin").stat().st_size == sizes["z.bin"]
