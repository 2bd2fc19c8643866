"""An HF cache pulled from a Xet-era upstream stays usable online through any endpoint.

The Hub of the Xet era lists ``xetHash`` in tree entries and answers ``/resolve/`` with
``X-Xet-Hash`` and ``Link: <...>; rel="xet-auth"``. huggingface_hub (with ``hf_xet`` installed, as
here) skips its HEAD request for a file whose cached ``trees/<commit>.json`` entry has a
``xet_hash`` and asks the endpoint for a Xet token (``/api/models/<repo>/xet-read-token/<commit>``):
a mirror without Xet answers 404 there. So dsmirror never writes Xet fields into a cache, and
``dsmirror serve`` never lists or sends them.

The upstream is ``dsmirror._serve``'s HF app dressed as the Xet-era Hub (it still serves plain
Range bytes, as the Hub's bridge does); the later mirror is the same app over a copy of the files,
without Xet. The real ``huggingface_hub`` client runs online in fresh subprocesses (it reads
HF_ENDPOINT at import). Everything stays on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from dsmirror import Mirror
from dsmirror._formats import hfcache
from dsmirror._install.hf import install_hf_snapshot
from dsmirror._serve import (
    STATS,
    HfRepo,
    ModelIndex,
    ServeConfig,
    ServeRoots,
    ServerThread,
    Upstream,
    build_app,
    make_app,
)
from dsmirror.testing.cli import DSMIRROR_CLI, cli_env

REPO_ID = "acme/xet-era"
WEIGHTS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
TOKEN_ROUTE = "xet-read-token"


def _write_model(root: Path) -> Path:
    rnd = random.Random(16)
    files = {
        WEIGHTS[0]: rnd.randbytes((3 << 20) + 11),  # LFS (over 1 MiB): Xet-backed upstream
        WEIGHTS[1]: rnd.randbytes((2 << 20) + 5),
        "config.json": b'{"hidden_size": 8}\n',
        "tokenizer.json": rnd.randbytes(50_000),  # a git blob: never Xet
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("published") / "xet-era")


@pytest.fixture(scope="module")
def repo(model_dir: Path) -> HfRepo:
    return HfRepo.from_folder(REPO_ID, model_dir)


def _xet_hash(sha256: str) -> str:
    """A stand-in for the Xet content hash: 64 hex, as huggingface_hub checks."""
    return hashlib.sha256(b"xet:" + sha256.encode()).hexdigest()


def _xet_era(app: web.Application, repo: HfRepo) -> web.Application:
    """``app`` answering like the Hub with Xet storage: ``xetHash`` in tree entries, Xet headers on
    ``/resolve/`` of LFS files. It has no Xet token route (a request there is a 404 in its log)."""
    xet = {f.path: _xet_hash(f.sha256) for f in repo.files.values() if f.lfs and f.sha256}

    @web.middleware
    async def list_xet(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response = await handler(request)
        if "/tree/" in request.path and isinstance(response, web.Response) and response.status == 200:
            assert isinstance(response.body, bytes)
            entries = json.loads(response.body)
            for e in entries:
                if e["path"] in xet:
                    e["xetHash"] = xet[e["path"]]
            response.body = json.dumps(entries).encode()
        return response

    async def xet_headers(request: web.Request, response: web.StreamResponse) -> None:
        _, sep, rest = request.path.partition(f"/{REPO_ID}/resolve/")
        path = rest.split("/", 1)[-1] if sep else ""
        if path in xet and response.status in (200, 206):
            base = f"{request.scheme}://{request.host}/api/models/{REPO_ID}"
            response.headers["X-Xet-Hash"] = xet[path]
            response.headers["Link"] = (
                f'<{base}/{TOKEN_ROUTE}/{repo.commit}>; rel="xet-auth", '
                f'<https://cas-server.invalid/v1/reconstructions/{xet[path]}>; rel="xet-reconstruction-info"'
            )

    app.middlewares.append(list_xet)
    app.on_response_prepare.append(xet_headers)
    return app


def _requested(app: web.Application) -> list[str]:
    return [path for _method, path, _status in app[STATS].requests]


def _catalog(path: Path, url: str) -> Path:
    path.write_text(
        f"version: 1\nmirrors:\n  - name: xet-hub\n    kind: hf\n    url: {url}\n    priority: 1\n"
    )
    return path


def _cli_pull(tmp: Path, catalog: Path, *args: str) -> None:
    env = cli_env(tmp)  # its stores where _settings(tmp) has them
    argv = [
        *DSMIRROR_CLI,
        "pull", f"hf://{REPO_ID}", "--format", "hf", "--no-default-catalog", "--mirrors", str(catalog),
        "--give-up-after", "30", *args,
    ]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


_ONLINE = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils._runtime import is_xet_available
    snap = snapshot_download(sys.argv[1])
    files = {
        os.path.relpath(os.path.join(d, n), snap).replace(os.sep, "/"):
            hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
        for d, _, names in os.walk(snap) for n in names
    }
    print(json.dumps({"xet": is_xet_available(), "files": files}))
    """
)


def _hf_online(cache: Path, home: Path, endpoint: str) -> dict[str, Any]:
    """The real client, online (Xet not disabled), through ``endpoint`` into ``cache``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING")) and "proxy" not in k.lower()
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_CACHE=str(cache),
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="*",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _ONLINE, REPO_ID], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _hf_xet_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("hf_xet") is not None


def _tree_cache(cache: Path, commit: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        hfcache.tree_file(hfcache.repo_folder(cache, REPO_ID), commit).read_bytes()
    )
    return doc


def test_the_upstream_answers_like_the_xet_era_hub(repo: HfRepo) -> None:
    """The premise: without the fix's care, a client would see Xet everywhere on this upstream."""
    with ServerThread(_xet_era(make_app(ModelIndex([repo])), repo)) as up, httpx.Client(base_url=up.url) as c:
        tree = c.get(f"/api/models/{REPO_ID}/tree/{repo.commit}", params={"recursive": "true"}).json()
        assert {e["path"] for e in tree if "xetHash" in e} == set(WEIGHTS)
        head = c.head(f"/{REPO_ID}/resolve/{repo.commit}/{WEIGHTS[0]}")
        assert head.headers["X-Xet-Hash"] and 'rel="xet-auth"' in head.headers["Link"]
        r = c.get(f"/{REPO_ID}/resolve/{repo.commit}/{WEIGHTS[0]}", headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and len(r.content) == 10  # still plain Range bytes
        assert c.get(f"/api/models/{REPO_ID}/{TOKEN_ROUTE}/{repo.commit}").status_code == 404


def test_a_cache_pulled_from_xet_is_completed_online_through_a_mirror_without_xet(
    repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    upstream_app = _xet_era(make_app(ModelIndex([repo])), repo)
    with ServerThread(upstream_app) as upstream:
        # The config and tokenizer first; the weights later, elsewhere.
        cat = _catalog(tmp_path / "mirrors.yaml", upstream.url)
        _cli_pull(tmp_path, cat, "--include", "*.json")
    assert not any(TOKEN_ROUTE in p for p in _requested(upstream_app))
    cache = tmp_path / "hf-cache"

    # Later, online, through a mirror that has the same repo but no Xet.
    copy = tmp_path / "mirror-copy"
    shutil.copytree(model_dir, copy)
    mirror_repo = HfRepo.from_folder(REPO_ID, copy)
    assert mirror_repo.commit == repo.commit
    mirror_app = make_app(ModelIndex([mirror_repo]))
    with ServerThread(mirror_app) as mirror:
        got = _hf_online(cache, tmp_path / "client-home", mirror.url)
    assert got["xet"] is _hf_xet_installed()
    assert got["files"] == _digests(model_dir)
    asked = _requested(mirror_app)
    assert not any(TOKEN_ROUTE in p for p in asked), asked
    for w in WEIGHTS:  # plain HTTP: the client asked the resolve URL for each weight file
        assert any(p.endswith(f"/resolve/{repo.commit}/{w}") for p in asked), asked
    tree = _tree_cache(cache, repo.commit)
    assert set(tree["files"]) == set(repo.files)  # still every file: offline completeness checks
    assert not any("xet" in k.lower() for entry in tree["files"].values() for k in entry), tree


def test_serve_pulls_through_from_xet_and_hands_clients_no_xet(
    repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    upstream_app = _xet_era(make_app(ModelIndex([repo])), repo)
    with ServerThread(upstream_app) as upstream:
        config = ServeConfig(
            roots=ServeRoots(hf_cache=tmp_path / "server-hub"),
            upstream=Upstream(hf=(Mirror(name="xet-hub", kind="hf", url=upstream.url, official=False),)),
            rescan_interval=0,
        )
        serve_app = build_app(config)[0]
        with ServerThread(serve_app) as srv:
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                tree = c.get(f"/api/models/{REPO_ID}/tree/main", params={"recursive": "true"}).json()
                assert {e["path"] for e in tree if e["type"] == "file"} == set(repo.files)
                assert not any("xet" in k.lower() for e in tree for k in e), tree
                for w in WEIGHTS:
                    head = c.head(f"/{REPO_ID}/resolve/main/{w}")
                    assert head.status_code == 200
                    assert not any(h.lower().startswith("x-xet") for h in head.headers)
                    assert "xet" not in head.headers.get("Link", "")
            cache = tmp_path / "client-cache"
            got = _hf_online(cache, tmp_path / "client-home", srv.url)
    assert got["files"] == _digests(model_dir)
    assert not any(TOKEN_ROUTE in p for p in _requested(serve_app))
    assert not any(TOKEN_ROUTE in p for p in _requested(upstream_app))
    tree_doc = _tree_cache(cache, repo.commit)  # what the client wrote from serve's listing
    assert not any("xet" in k.lower() for entry in tree_doc["files"].values() for k in entry)


def test_a_tree_cache_with_xet_hashes_is_cleaned_by_an_install(tmp_path: Path) -> None:
    """A tree the client wrote from the Hub names Xet hashes; a dsmirror install into that repo
    keeps its entries and drops the Xet fields."""
    commit = "c" * 40
    data = b"weights"
    sha = hashlib.sha256(data).hexdigest()
    repo_dir = hfcache.repo_folder(tmp_path / "hub", REPO_ID)
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / sha).write_bytes(data)
    hub_entry = {"size": 7, "blob_id": "b" * 40, "lfs_sha256": sha, "lfs_size": 7, "xet_hash": "e" * 64}
    other = {"size": 3, "blob_id": "d" * 40}
    trees = hfcache.tree_file(repo_dir, commit)
    trees.parent.mkdir()
    trees.write_text(json.dumps({"format_version": 1, "files": {"w.bin": hub_entry, "x.json": other}}))
    ours = {"w.bin": {"size": 7, "blob_id": "b" * 40, "lfs_sha256": sha, "lfs_size": 7}, "x.json": other}
    install_hf_snapshot(repo_dir, commit=commit, revision="main", files=[("w.bin", sha)], tree=ours)
    doc = json.loads(trees.read_bytes())
    assert doc == {"format_version": 1, "files": ours}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[1, 2]",
        b'{"format_version": 2, "files": {"a": {"size": 1, "blob_id": "x", "xet_hash": "e"}}}',
        b'{"format_version": 1, "files": ["a"]}',
        b'{"format_version": 1, "files": {"a": "x"}}',
        b'{"format_version": 1, "files": {"a": {"size": 1, "blob_id": "x"}}}',
    ],
)
def test_trees_left_as_they_are(data: bytes) -> None:
    """Not a format-1 tree (the client ignores it), or one without Xet hashes: nothing to rewrite."""
    assert hfcache.tree_without_xet(data) is None


def test_tree_json_never_writes_xet_hashes() -> None:
    entry = {"size": 1, "blob_id": "b" * 40, "lfs_sha256": "a" * 64, "lfs_size": 1, "xet_hash": "e" * 64}
    doc = json.loads(hfcache.tree_json({"w.bin": entry}))
    assert doc["files"]["w.bin"] == {k: v for k, v in entry.items() if k != "xet_hash"}
