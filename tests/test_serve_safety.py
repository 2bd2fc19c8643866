"""The server never serves anything but indexed files, needs its token when set, and stays responsive.

Requests are sent over raw sockets where clients would normalise the path (httpx removes
dot segments), so the server sees exactly the hostile request target.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dsmirror._serve import (
    HfRepo,
    ModelIndex,
    OllamaModel,
    ServerThread,
    index_hf_cache,
    make_app,
)

SECRET = b"TOP-SECRET-do-not-serve"
REPO_ID = "acme/safe"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/{secret.txt, repo/{config.json, model.bin, model.bin.gz?, sub/a.txt}}."""
    root = tmp_path_factory.mktemp("layout")
    (root / "secret.txt").write_bytes(SECRET)
    repo = root / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text("{}\n")
    (repo / "model.bin").write_bytes(os.urandom(4096))
    (repo / "sub" / "a.txt").write_text("a\n")
    (repo / "leak.txt").symlink_to(root / "secret.txt")  # must not be indexed
    return root


@pytest.fixture(scope="module")
def index(layout: Path) -> ModelIndex:
    repo = HfRepo.from_folder(REPO_ID, layout / "repo")
    assert "leak.txt" not in repo.files
    model = OllamaModel.from_files("library", "m", "latest", [], b"{}")
    return ModelIndex([repo], [model])


@pytest.fixture(scope="module")
def server(index: ModelIndex) -> Iterator[ServerThread]:
    with ServerThread(make_app(index)) as srv:
        yield srv


def _raw(port: int, request_line: bytes, headers: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as so:
        so.sendall(request_line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + headers + b"\r\n")
        data = b""
        while chunk := so.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


HOSTILE = [
    "/acme/safe/resolve/main/../../secret.txt",
    "/acme/safe/resolve/main/../../../secret.txt",
    "/acme/safe/resolve/main/sub/../../secret.txt",
    "/acme/safe/resolve/main/%2e%2e/%2e%2e/secret.txt",
    "/acme/safe/resolve/main/%2E%2E%2F%2E%2E%2Fsecret.txt",
    "/acme/safe/resolve/main/..%2f..%2fsecret.txt",
    "/acme/safe/resolve/main/sub%2Fa.txt",
    "/acme/safe/resolve/main/..%5c..%5csecret.txt",
    "/acme/safe/resolve/main//etc/passwd",
    "/acme/safe/resolve/main/%2Fetc%2Fpasswd",
    "/acme/safe/resolve/main/config.json%00.txt",
    "/acme/safe/resolve/%2e%2e/config.json",
    "/acme/safe/resolve/main/./config.json",
    "/api/models/acme/safe/tree/main/..%2F..",
    "/api/models/acme/safe/tree/main/%2Fetc",
    "/api/models/%2e%2e/%2e%2e/tree/main",
    "/api/v1/models/acme/safe/repo?FilePath=../secret.txt",
    "/api/v1/models/acme/safe/repo?FilePath=/etc/passwd",
    "/api/v1/models/acme/safe/repo?FilePath=sub/../../secret.txt",
    "/api/v1/models/acme/safe/repo?FilePath=config.json%00",
    "/api/v1/models/acme/safe/repo?FilePath=leak.txt",
    "/v2/library/m/blobs/..%2F..%2Fsecret.txt",
    "/v2/library/m/blobs/sha256:..%2f..%2fsecret.txt",
    "/v2/%2e%2e/m/manifests/latest",
    "/acme/safe/resolve/main/leak.txt",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "http://127.0.0.1/acme/safe/resolve/main/../../secret.txt",
    "//etc/passwd",
    "*",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_targets_are_refused(server: ServerThread, target: str) -> None:
    status, data = _raw(server.port, f"GET {target} HTTP/1.1".encode())
    assert 400 <= status < 500, data[:200]
    assert SECRET not in data and b"root:" not in data


@pytest.mark.parametrize(
    "line", [b"GET /acme/safe/resolve/main/config.json\x00 HTTP/1.1", b"GET /\x00 HTTP/1.1"]
)
def test_raw_nul_is_refused(server: ServerThread, line: bytes) -> None:
    status, data = _raw(server.port, line)
    assert status == 400 and SECRET not in data


def test_legit_paths_still_work(server: ServerThread, layout: Path) -> None:
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/acme/safe/resolve/main/sub/a.txt").content == b"a\n"
        r = c.get("/api/models/acme/safe/tree/main/sub")
        assert [e["path"] for e in r.json()] == ["sub/a.txt"]


def test_no_compressed_sibling_is_served(server: ServerThread, layout: Path) -> None:
    """aiohttp's FileResponse would send model.bin.gz to a gzip-accepting client."""
    gz = layout / "repo" / "model.bin.gz"
    gz.write_bytes(b"not what was indexed")
    try:
        with httpx.Client(base_url=server.url) as c:
            r = c.get("/acme/safe/resolve/main/model.bin", headers={"Accept-Encoding": "gzip, br"})
        assert r.status_code == 200 and "Content-Encoding" not in r.headers
        assert r.content == (layout / "repo" / "model.bin").read_bytes()
    finally:
        gz.unlink()


def test_file_swapped_after_indexing_is_not_served(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * len(SECRET))
    (folder / "b.bin").write_bytes(b"short")
    index = ModelIndex([HfRepo.from_folder(REPO_ID, folder)])
    (folder / "a.bin").unlink()
    (folder / "a.bin").symlink_to(tmp_path / "secret.txt")  # same size, other content
    (folder / "b.bin").write_bytes(b"longer than indexed")
    with ServerThread(make_app(index)) as srv, httpx.Client(base_url=srv.url) as c:
        for name in ("a.bin", "b.bin"):
            for method in ("GET", "HEAD"):
                r = c.request(method, f"/acme/safe/resolve/main/{name}")
                assert r.status_code == 500 and SECRET not in r.content


def test_hf_cache_symlinks_leading_out_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    storage = tmp_path / "hub" / "models--acme--safe"
    commit = "a" * 40
    snap = storage / "snapshots" / commit
    (snap / "sub").mkdir(parents=True)
    (storage / "blobs").mkdir()
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    etag = "e" * 64
    (storage / "blobs" / etag).write_bytes(b"weights")
    (snap / "model.bin").symlink_to(Path("..", "..", "blobs", etag))
    (snap / "escape.txt").symlink_to(Path("..", "..", "..", "..", "secret.txt"))
    (snap / "sub" / "abs.txt").symlink_to(tmp_path / "secret.txt")
    (snap / "plain.txt").write_bytes(SECRET)  # not a symlink into blobs/
    (repo,) = index_hf_cache(tmp_path / "hub")
    assert set(repo.files) == {"model.bin"} and repo.refs == {"main": commit}
    assert repo.files["model.bin"].lfs and repo.files["model.bin"].etag == etag


def test_bearer_token(index: ModelIndex) -> None:
    urls = [
        "/healthz",
        "/api/models/acme/safe",
        "/acme/safe/resolve/main/config.json",
        "/api/v1/models/acme/safe/repo?FilePath=config.json",
        "/v2/",
        "/v2/library/m/manifests/latest",
        "/api/agent-harnesses",
    ]
    with ServerThread(make_app(index, token="s3cret")) as srv, httpx.Client(base_url=srv.url) as c:
        for url in urls:
            assert c.get(url).status_code == 401
            assert c.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get(url, headers={"Authorization": "Basic s3cret"}).status_code == 401
            ok = c.get(url, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code != 401, url
        assert c.get("/healthz").headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_write_methods_are_405(server: ServerThread, method: str) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.request(method, "/acme/safe/resolve/main/config.json", content=b"x" * 100)
        assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"


def test_large_body_is_refused(server: ServerThread) -> None:
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/api/models/acme/safe", content=b"x" * (1024 * 1024))
        assert 400 <= r.status_code < 500


def test_stalled_clients_do_not_block_others(tmp_path: Path) -> None:
    big = tmp_path / "repo" / "big.bin"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: cheap to create and to hash
    index = ModelIndex([HfRepo.from_folder(REPO_ID, big.parent)])
    with ServerThread(make_app(index)) as srv:
        stalled = []
        for _ in range(4):
            so = socket.create_connection(("127.0.0.1", srv.port))
            so.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            so.sendall(b"GET /acme/safe/resolve/main/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            stalled.append(so)
        try:
            time.sleep(0.2)
            start = time.monotonic()
            with httpx.Client(base_url=srv.url, timeout=5) as c:
                for _ in range(10):
                    assert c.get("/healthz").status_code == 200
                    r = c.get("/acme/safe/resolve/main/big.bin", headers={"Range": "bytes=0-65535"})
                    assert r.status_code == 206 and len(r.content) == 65536
            assert time.monotonic() - start < 3
        finally:
            for so in stalled:
                so.close()
