"""The Hugging Face side of the server, checked with httpx and with the real huggingface_hub client.

The real client runs in fresh subprocesses: it reads HF_ENDPOINT / HF_HUB_OFFLINE at import.
Everything stays on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dsmirror._serve import (
    LFS_MIN_SIZE,
    STATS,
    ByteRange,
    HfRepo,
    ModelIndex,
    RangeNotSatisfiable,
    ServeFaults,
    ServerThread,
    index_hf_cache,
    make_app,
    parse_range,
)

REPO_ID = "acme/tiny-model"
BIG = LFS_MIN_SIZE + 123_457  # one LFS file just over the threshold


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def repo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "sub").mkdir()
    (root / "model.safetensors").write_bytes(os.urandom(BIG))
    (root / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "sub" / "nested.txt").write_text("nested\n")
    (root / "empty.txt").write_bytes(b"")
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return root


@pytest.fixture(scope="module")
def repo(repo_folder: Path) -> HfRepo:
    return HfRepo.from_folder(REPO_ID, repo_folder)


@pytest.fixture(scope="module")
def server(repo: HfRepo) -> Iterator[ServerThread]:
    # A tiny tree page forces the client through Link rel="next" paging.
    with ServerThread(make_app(ModelIndex([repo]), tree_page_size=2)) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


# --- index ------------------------------------------------------------------------------


def test_from_folder_hashes(repo: HfRepo, repo_folder: Path) -> None:
    big = repo.files["model.safetensors"]
    data = (repo_folder / "model.safetensors").read_bytes()
    assert big.lfs and big.sha256 == hashlib.sha256(data).hexdigest() and big.git_sha1 is None
    assert big.etag == big.sha256
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{big.sha256}\nsize {BIG}\n".encode()
    assert big.blob_id == _git_sha1(pointer) and big.pointer_size == len(pointer)
    small = repo.files["config.json"]
    assert not small.lfs and small.git_sha1 == _git_sha1((repo_folder / "config.json").read_bytes())
    assert repo.files["empty.txt"].git_sha1 == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # git's empty blob
    assert set(repo.files) == {
        "model.safetensors",
        "config.json",
        "sub/nested.txt",
        "empty.txt",
        ".gitattributes",
    }
    assert repo.refs == {"main": repo.commit}
    assert HfRepo.from_folder(REPO_ID, repo_folder).commit == repo.commit  # deterministic


# --- API --------------------------------------------------------------------------------


def test_model_info(client: httpx.Client, repo: HfRepo) -> None:
    for url in (f"/api/models/{REPO_ID}", f"/api/models/{REPO_ID}/revision/main"):
        info = client.get(url).json()
        assert info["id"] == info["modelId"] == REPO_ID and info["sha"] == repo.commit
        assert {s["rfilename"] for s in info["siblings"]} == set(repo.files)
        assert all(set(s) == {"rfilename"} for s in info["siblings"])
    info = client.get(f"/api/models/{REPO_ID}/revision/{repo.commit}", params={"blobs": "true"}).json()
    by_name = {s["rfilename"]: s for s in info["siblings"]}
    big = repo.files["model.safetensors"]
    assert by_name["model.safetensors"] == {
        "rfilename": "model.safetensors",
        "size": BIG,
        "blobId": big.blob_id,
        "lfs": {"sha256": big.sha256, "size": BIG, "pointerSize": big.pointer_size},
    }
    assert "lfs" not in by_name["config.json"] and by_name["config.json"]["size"] == 19


def _all_pages(client: httpx.Client, url: str, **params: str) -> tuple[list[dict[str, Any]], int]:
    entries: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    first = True
    while next_url:
        r = client.get(next_url, params=params if first else None)
        first = False
        assert r.status_code == 200, r.text
        entries += r.json()
        pages += 1
        next_url = r.links.get("next", {}).get("url")
    return entries, pages


def test_tree_recursive_paged(client: httpx.Client, repo: HfRepo) -> None:
    entries, pages = _all_pages(client, f"/api/models/{REPO_ID}/tree/main", recursive="True")
    assert pages == 3  # 6 entries, 2 per page
    paths = [e["path"] for e in entries]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)
    assert {e["path"] for e in entries if e["type"] == "directory"} == {"sub"}
    files = {e["path"]: e for e in entries if e["type"] == "file"}
    assert set(files) == set(repo.files)
    big = repo.files["model.safetensors"]
    assert files["model.safetensors"]["lfs"] == {
        "oid": big.sha256,
        "size": BIG,
        "pointerSize": big.pointer_size,
    }
    assert files["model.safetensors"]["oid"] == big.blob_id
    assert (
        files["config.json"]["oid"] == repo.files["config.json"].git_sha1
        and "lfs" not in files["config.json"]
    )
    assert not any("xetHash" in e for e in entries)


def test_tree_levels_and_paths(client: httpx.Client) -> None:
    top, _ = _all_pages(client, f"/api/models/{REPO_ID}/tree/main")
    assert {e["path"] for e in top} == {
        ".gitattributes",
        "config.json",
        "empty.txt",
        "model.safetensors",
        "sub",
    }
    # huggingface_hub quotes the folder with safe="": sub%2Fdir must work.
    for url in (f"/api/models/{REPO_ID}/tree/main/sub", f"/api/models/{REPO_ID}/tree/main/sub%2F"):
        r = client.get(url)
        if url.endswith("%2F"):
            assert r.status_code == 400
            continue
        assert [e["path"] for e in r.json()] == ["sub/nested.txt"]
    r = client.get(f"/api/models/{REPO_ID}/tree/main/nope")
    assert r.status_code == 404 and r.headers["X-Error-Code"] == "EntryNotFound"


def test_error_codes(client: httpx.Client, repo: HfRepo) -> None:
    cases = {
        "/api/models/acme/unknown": "RepoNotFound",
        "/acme/unknown/resolve/main/config.json": "RepoNotFound",
        f"/api/models/{REPO_ID}/revision/v9": "RevisionNotFound",
        f"/api/models/{REPO_ID}/tree/{'0' * 40}": "RevisionNotFound",
        f"/{REPO_ID}/resolve/dev/config.json": "RevisionNotFound",
        f"/{REPO_ID}/resolve/main/missing.json": "EntryNotFound",
    }
    for url, code in cases.items():
        for method in ("GET", "HEAD"):
            r = client.request(method, url)
            assert (r.status_code, r.headers.get("X-Error-Code")) == (404, code), (method, url)
        assert "error" in client.get(url).json()
    missing = client.head(f"/{REPO_ID}/resolve/main/missing.json")
    assert missing.headers["X-Repo-Commit"] == repo.commit  # lets the client cache .no_exist


def test_unknown_api_routes_answer_404_json(client: httpx.Client) -> None:
    for url in ("/api/agent-harnesses", "/api/whoami-v2", "/api/datasets/a/b", "/nothing/here"):
        r = client.get(url)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")


def test_resolve_headers(client: httpx.Client, repo: HfRepo, repo_folder: Path) -> None:
    big = repo.files["model.safetensors"]
    r = client.head(f"/{REPO_ID}/resolve/main/model.safetensors")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["X-Repo-Commit"] == repo.commit
    assert r.headers["X-Linked-Etag"] == f'"{big.sha256}"' and r.headers["X-Linked-Size"] == str(BIG)
    assert r.headers["Content-Length"] == str(BIG) and r.headers["Accept-Ranges"] == "bytes"
    assert not any(h.lower().startswith("x-xet") for h in r.headers)
    small = client.head(f"/{REPO_ID}/resolve/{repo.commit}/config.json")
    assert small.headers["ETag"] == f'"{repo.files["config.json"].git_sha1}"'
    assert "X-Linked-Etag" not in small.headers and small.headers["Content-Length"] == "19"
    nested = client.get(f"/{REPO_ID}/resolve/main/sub/nested.txt")
    assert nested.content == (repo_folder / "sub" / "nested.txt").read_bytes()


def test_resolve_ranges(client: httpx.Client, repo_folder: Path) -> None:
    data = (repo_folder / "model.safetensors").read_bytes()
    url = f"/{REPO_ID}/resolve/main/model.safetensors"
    etag = client.head(url).headers["ETag"]
    r = client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    assert r.headers["Content-Range"] == f"bytes 1000-{BIG - 1}/{BIG}"
    r = client.get(url, headers={"Range": "bytes=5-9", "If-Range": etag})
    assert r.status_code == 206 and r.content == data[5:10]
    r = client.get(url, headers={"Range": "bytes=5-9", "If-Range": '"somethingelse"'})
    assert r.status_code == 200 and r.content == data  # stale validator: whole file
    r = client.get(url, headers={"Range": f"bytes={BIG}-"})
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{BIG}"
    r = client.get(url, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    r = client.head(url, headers={"Range": "bytes=0-0"})
    assert r.status_code == 206 and r.headers["Content-Length"] == "1" and r.content == b""


@pytest.mark.parametrize("size", [0, 1, 2, 7])
def test_parse_range_against_slicing(size: int) -> None:
    """Every single-range spec around the boundaries agrees with Python slicing (or is 416)."""
    data = bytes(range(size))
    points = sorted({0, 1, size - 1, size, size + 1} - {-1})
    specs: list[tuple[str, bytes | None]] = []
    for a in points:
        specs.append((f"{a}-", data[a:] if a < size else None))
        for b in points:
            ok = a < size and b >= a
            specs.append((f"{a}-{b}", data[a : b + 1] if ok else None))
        specs.append((f"-{a}", data[-a:] if a > 0 and size > 0 else None))
    for spec, expected in specs:
        if expected is None:
            with pytest.raises(RangeNotSatisfiable):
                parse_range(f"bytes={spec}", size)
        else:
            rng = parse_range(f"bytes={spec}", size)
            assert rng is not None and data[rng.start : rng.stop] == expected, spec


def test_parse_range_ignored_forms() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=0-1,4-5", 10) is None
    assert parse_range("bytes=3-4", 10) == ByteRange(3, 5)
    for bad in ("bytes=", "bytes=-", "bytes=a-b", "bytes=5-2"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(bad, 10)


def test_faults_and_stats(repo: HfRepo, repo_folder: Path) -> None:
    faults = ServeFaults(
        corrupt_paths={"model.safetensors"}, status_for_paths={"config.json": 503}, retry_after=2
    )
    app = make_app(ModelIndex([repo]), faults=faults)
    data = (repo_folder / "model.safetensors").read_bytes()
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as c:
        body = c.get(f"/{REPO_ID}/resolve/main/model.safetensors").content
        diff = [i for i in range(BIG) if body[i] != data[i]]
        assert diff == [BIG // 2]
        head = c.get(f"/{REPO_ID}/resolve/main/model.safetensors", headers={"Range": "bytes=0-99"})
        assert head.content == data[:100]  # the bad byte is only where it is
        r = c.get(f"/{REPO_ID}/resolve/main/config.json")
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        c.get(f"/{REPO_ID}/resolve/main/sub/nested.txt")
    stats = app[STATS]
    assert stats.bytes_by_file == {f"{REPO_ID}/model.safetensors": BIG + 100, f"{REPO_ID}/sub/nested.txt": 7}
    assert stats.bytes_total == BIG + 107
    assert ("GET", f"/{REPO_ID}/resolve/main/config.json", 503) in stats.requests


# --- the real huggingface_hub client ----------------------------------------------------

_DOWNLOAD = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
repo_id, revision, offline = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
snap = snapshot_download(repo_id, revision=revision, local_files_only=offline)
one = None if offline else hf_hub_download(repo_id, "sub/nested.txt", revision=revision)
print(json.dumps({"snapshot": snap, "one": one}))
"""


def _hf(
    home: Path, endpoint: str, *args: str, offline: bool = False, telemetry: bool = False
) -> dict[str, str | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="*",
    )
    if not telemetry:
        env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    script = textwrap.dedent(_DOWNLOAD)
    argv = [sys.executable, "-c", script, *args, "1" if offline else "0"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, str | None] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check_cache(hub: Path, repo: HfRepo, repo_folder: Path) -> None:
    storage = hub / f"models--{REPO_ID.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == repo.commit
    snapshot = storage / "snapshots" / repo.commit
    assert _tree_bytes(snapshot) == _tree_bytes(repo_folder)
    blobs = {p.name for p in (storage / "blobs").iterdir()}
    assert blobs == {f.etag for f in repo.files.values()}
    for path, f in repo.files.items():
        link = snapshot / path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == (storage / "blobs" / f.etag).resolve()


def test_real_client_snapshot_offline_and_reserve(
    server: ServerThread, repo: HfRepo, repo_folder: Path, tmp_path: Path
) -> None:
    stats = server.app[STATS]
    stats.requests.clear()
    big_before = stats.bytes_by_file.get(f"{REPO_ID}/model.safetensors", 0)
    first = tmp_path / "home1"
    out = _hf(first, server.url, REPO_ID, "main")
    snap = Path(str(out["snapshot"]))
    assert snap == first / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / repo.commit
    assert Path(str(out["one"])).read_text() == "nested\n"
    _check_cache(first / "hub", repo, repo_folder)
    print("huggingface_hub requested:", *stats.requests, sep="\n  ")
    served = [(m, p.split("?")[0], s) for m, p, s in stats.requests]
    assert ("GET", f"/api/models/{REPO_ID}/revision/main", 200) in served
    assert sum(1 for m, p, _ in served if m == "GET" and "/tree/" in p) == 3  # paged
    assert ("GET", f"/{REPO_ID}/resolve/{repo.commit}/model.safetensors", 200) in served
    assert not any(s >= 500 for _, _, s in served)
    assert stats.bytes_by_file[f"{REPO_ID}/model.safetensors"] - big_before == BIG  # once, whole

    # Offline, in a fresh process: the cache alone answers.
    out = _hf(first, "http://127.0.0.1:9", REPO_ID, "main", offline=True)
    assert Path(str(out["snapshot"])) == snap

    # Serve the cache the client just wrote, and download it again from there.
    cached = index_hf_cache(first / "hub")
    assert len(cached) == 1 and cached[0].commit == repo.commit and cached[0].refs == {"main": repo.commit}
    assert {p: (f.etag, f.size, f.lfs) for p, f in cached[0].files.items()} == {
        p: (f.etag, f.size, f.lfs) for p, f in repo.files.items()
    }
    second_app = make_app(ModelIndex(cached))
    with ServerThread(second_app) as second:
        other = tmp_path / "home2"
        out = _hf(other, second.url, REPO_ID, "main")
        _check_cache(other / "hub", repo, repo_folder)
        # With telemetry on, the client also asks /api/agent-harnesses: a quick 404 must not hurt.
        by_commit = _hf(tmp_path / "home3", second.url, REPO_ID, repo.commit, telemetry=True)
        assert _tree_bytes(Path(str(by_commit["snapshot"]))) == _tree_bytes(repo_folder)
    assert ("GET", "/api/agent-harnesses", 404) in second_app[STATS].requests
    assert ("GET", f"/api/models/{REPO_ID}/revision/{repo.commit}", 200) not in second_app[STATS].requests


# --- ModelScope-like --------------------------------------------------------------------


def test_modelscope_listing_and_download(client: httpx.Client, repo: HfRepo, repo_folder: Path) -> None:
    r = client.get(f"/api/v1/models/{REPO_ID}/repo/files", params={"Revision": "master", "Recursive": "True"})
    body = r.json()
    assert r.status_code == 200 and body["Code"] == 200 and body["Success"] is True
    files = {f["Path"]: f for f in body["Data"]["Files"] if f["Type"] == "blob"}
    assert set(files) == set(repo.files)
    for path, f in files.items():
        data = (repo_folder / path).read_bytes()
        assert f["Size"] == len(data) and f["Sha256"] == hashlib.sha256(data).hexdigest()
        assert f["Name"] == path.rsplit("/", 1)[-1] and f["Revision"] == repo.commit
    top = client.get(f"/api/v1/models/{REPO_ID}/repo/files").json()["Data"]["Files"]
    assert {(f["Path"], f["Type"]) for f in top} >= {("sub", "tree"), ("config.json", "blob")}
    assert "sub/nested.txt" not in {f["Path"] for f in top}

    url = f"/api/v1/models/{REPO_ID}/repo"
    data = (repo_folder / "model.safetensors").read_bytes()
    params = {"Revision": "master", "FilePath": "model.safetensors"}
    full = client.get(url, params=params)
    assert full.status_code == 200 and full.content == data
    part = client.get(url, params=params, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    head = client.head(url, params={"FilePath": "sub/nested.txt"})
    assert head.status_code == 200 and head.headers["Content-Length"] == "7"
    missing = client.get(url, params={"FilePath": "nope.bin"})
    assert missing.status_code == 404 and missing.json()["Success"] is False
    assert client.get("/api/v1/models/acme/none/repo/files").status_code == 404
    assert client.get(url, params={"Revision": "v7", "FilePath": "config.json"}).status_code == 404


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {
        "status": "ok",
        "hf_repos": 1,
        "hf_snapshots": 1,
        "ollama_models": 0,
        "files": 5,
    }
