"""Hugging Face and ModelScope resolving, pulled end to end from loopback registries.

The registries are ``dsmirror._serve`` apps on 127.0.0.1 (HF routes, ModelScope-like routes);
the real ``huggingface_hub`` client checks the installed cache offline, in fresh subprocesses
(it reads HF_ENDPOINT / HF_HUB_OFFLINE at import). Nothing leaves the loopback interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from dsmirror import Catalog, IntegrityError, NoSourceError, PullFinished, Settings, UsageError
from dsmirror._core.events import Event, PieceRejected, PlanNotes, SourceDropped
from dsmirror._fetch.reuse import LocalReuse, PullDryRun
from dsmirror._formats.catalog import load_catalog
from dsmirror._pull import PullOptions, pull, resolve
from dsmirror._resolve.registries import list_hf_repo, select_files
from dsmirror._resolve.registries.client import RepoURLs
from dsmirror._resolve.registries.hf import HfFile
from dsmirror._serve import STATS, HfRepo, ModelIndex, ServeFaults, ServerThread, make_app
from dsmirror._verify.tree import create_manifest
from dsmirror.testing.cli import DSMIRROR_CLI, cli_env, json_events

REPO_ID = "acme/tiny-r1"
ALIAS = "tiny-r1:7b"
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens
BIG = "model-00001-of-00001.safetensors"
SHARDS = [f"shards/shard-{i:02d}.safetensors" for i in range(8)]
SMALL = ["config.json", "tokenizer.json", "sub/dir/nested.txt", ".gitattributes"]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_ENDPOINT", DEAD)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


# -- the published model ------------------------------------------------------------------------
def _write_model(root: Path, seed: int) -> Path:
    rnd = random.Random(seed)
    files = {
        BIG: rnd.randbytes((17 << 20) + 5),  # three 8 MiB pieces
        **{s: rnd.randbytes((5 << 18) + i) for i, s in enumerate(SHARDS)},  # 1.25 MiB: LFS, one piece
        "config.json": b'{"hidden_size": 8}\n',
        "tokenizer.json": rnd.randbytes(200_000),  # under 1 MiB: a git blob, not LFS
        "sub/dir/nested.txt": b"nested\n",
        "empty.txt": b"",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    files["copy-of-shard-00.safetensors"] = files[SHARDS[0]]  # same blob under two names
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): _sha256(p)
        for p in root.rglob("*")
        if p.is_file() and ".dsmirror" not in p.relative_to(root).parts
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("published") / "tiny-r1", seed=1)


@pytest.fixture(scope="module")
def hf_repo(model_dir: Path) -> HfRepo:
    return HfRepo.from_folder(REPO_ID, model_dir)


def _serve(app: web.Application) -> ServerThread:
    return ServerThread(app).start()


@pytest.fixture(scope="module")
def servers(hf_repo: HfRepo) -> Iterator[dict[str, ServerThread]]:
    index = ModelIndex([hf_repo])
    lfs = {f.path for f in hf_repo.files.values() if f.lfs}
    started = {
        # corrupts one byte in the middle of every LFS file, consistently
        "bad": _serve(make_app(index, faults=ServeFaults(corrupt_paths=set(lfs)))),
        "good": _serve(make_app(index)),
        "ms": _serve(make_app(index)),
        # corrupts a small git file: caught while resolving, by its git blob id
        "liar": _serve(make_app(index, faults=ServeFaults(corrupt_paths={"config.json"}))),
    }
    yield started
    for s in started.values():
        s.stop()


def _catalog_file(path: Path, mirrors: list[dict[str, Any]], models: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "mirrors": mirrors, "models": models or {}}))
    return path


def _mirror(name: str, kind: str, url: str, priority: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "url": url, "priority": priority, **extra}


def _settings(tmp: Path, **extra: str) -> Settings:
    env = {
        "HOME": str(tmp / "home"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_STATE_HOME": str(tmp / "state"),
        "HF_HOME": str(tmp / "hf-home"),
        "HF_HUB_CACHE": str(tmp / "hf-cache"),
        "OLLAMA_MODELS": str(tmp / "ollama"),
        **extra,
    }
    return Settings.from_env(env)


def _run(ref: str, catalog: Catalog, settings: Settings, **opts: Any) -> list[Event]:
    options = PullOptions(give_up_after=30, **opts)
    return list(pull(ref, catalog=catalog, settings=settings, options=options))


def _finished(events: list[Event]) -> PullFinished:
    done = [e for e in events if isinstance(e, PullFinished)]
    assert len(done) == 1
    return done[0]


# -- the real huggingface_hub client, offline ---------------------------------------------------
_CHECK = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError
    repo, paths, patterns = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    def sha(p):
        return hashlib.sha256(open(p, "rb").read()).hexdigest()
    out = {"files": {p: sha(hf_hub_download(repo, p, local_files_only=True)) for p in paths}}
    try:
        snap = snapshot_download(repo, local_files_only=True, allow_patterns=patterns)
        out["snapshot"] = {
            os.path.relpath(os.path.join(d, n), snap).replace(os.sep, "/"): sha(os.path.join(d, n))
            for d, _, names in os.walk(snap) for n in names
        }
    except IncompleteSnapshotError as exc:
        out["incomplete"] = str(exc)[:200]
    print(json.dumps(out))
    """
)


def hf_offline(cache: Path, tmp: Path, paths: list[str], patterns: list[str] | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(cache),
        HF_HOME=str(tmp / "hf-home-offline"),
        HF_ENDPOINT=DEAD,
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    argv = [sys.executable, "-c", _CHECK, REPO_ID, json.dumps(paths), json.dumps(patterns)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


# -- unit-level -----------------------------------------------------------------------------------
def test_globs_are_anchored() -> None:
    files = [HfFile(p, 1, "0" * 40) for p in ("a.json", "sub/b.json", "original/c.bin", "x.json.bak")]
    assert [f.path for f in select_files(files, ["*.json"], [])] == ["a.json", "sub/b.json"]
    assert [f.path for f in select_files(files, [], ["original/*"])] == ["a.json", "sub/b.json", "x.json.bak"]
    assert [f.path for f in select_files(files, ["json"], [])] == []  # no substring matches


def test_listing_pins_the_commit_and_falls_back(servers: dict[str, ServerThread], hf_repo: HfRepo) -> None:
    from dsmirror import Mirror

    mirrors = [Mirror("dead", "hf", DEAD), Mirror("good", "hf", servers["good"].url)]
    listing = list_hf_repo(mirrors, REPO_ID, "main", token=None, timeout=5)
    assert listing.commit == hf_repo.commit and listing.endpoint == "good"
    by_path = {f.path: f for f in listing.files}
    assert set(by_path) == set(hf_repo.files)
    for path, served in hf_repo.files.items():
        assert by_path[path].size == served.size
        assert by_path[path].blob_id == served.blob_id
        assert by_path[path].lfs_sha256 == (served.sha256 if served.lfs else None)
        assert by_path[path].etag == served.etag
    with pytest.raises(NoSourceError) as info:
        list_hf_repo([Mirror("dead", "hf", DEAD), mirrors[1]], "acme/nope", "main", token=None, timeout=5)
    assert "dead:" in str(info.value) and "good: repository not found" in str(info.value)
    with pytest.raises(NoSourceError, match="revision not found"):
        list_hf_repo(mirrors[1:], REPO_ID, "v9", token=None)


def test_plan_for_the_hf_cache(servers: dict[str, ServerThread], hf_repo: HfRepo, tmp_path: Path) -> None:
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [_mirror("good", "hf", servers["good"].url, 1), _mirror("ms", "modelscope", servers["ms"].url, 2)],
        {ALIAS: {"hf": REPO_ID, "modelscope": REPO_ID}},
    )
    settings = _settings(tmp_path)
    plan = resolve(ALIAS, load_catalog(cat), settings, PullOptions(format="hf"))
    try:
        m = plan.manifest
        assert plan.dest == settings.hf_cache / "models--acme--tiny-r1"
        assert m.meta["commit"] == hf_repo.commit and m.name == ALIAS
        etags = {f.etag for f in hf_repo.files.values()}
        assert {f.path for f in m.files} == {f"blobs/{e}" for e in etags}  # one blob per content
        for served in hf_repo.files.values():
            f = m.file(f"blobs/{served.etag}")
            assert f.sha256 == served.sha256 and f.size == served.size
            if served.lfs:
                assert all(p == "" for p in f.pieces)  # the Hub publishes no piece hashes
            else:
                assert f.pieces == tuple(
                    hashlib.sha256(served.disk_path.read_bytes()[i : i + m.piece_size]).hexdigest()
                    for i in range(0, served.size, m.piece_size)
                )
        assert [s.name for s in plan.sources] == ["good", "ms", "prefetched"]
        assert any("ms: serves" in n and f"{len(m.files)} of {len(m.files)}" in n for n in plan.notes)
    finally:
        for s in plan.sources:
            s.close()


def test_modelscope_serves_only_files_that_agree(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    for p in model_dir.rglob("*"):
        if p.is_file():
            (other / p.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (other / p.relative_to(model_dir)).write_bytes(p.read_bytes())
    (other / "config.json").write_bytes(b'{"hidden_size": 9}\n')  # same size, other content
    (other / SHARDS[3]).write_bytes(b"x" * (5 << 18))
    with ServerThread(make_app(ModelIndex([HfRepo.from_folder(REPO_ID, other)]))) as ms:
        cat = _catalog_file(
            tmp_path / "m.yaml",
            [_mirror("good", "hf", servers["good"].url, 1), _mirror("ms", "modelscope", ms.url, 2)],
            {ALIAS: {"hf": REPO_ID, "modelscope": REPO_ID}},
        )
        plan = resolve(ALIAS, load_catalog(cat), _settings(tmp_path), PullOptions(format="dir"))
        for s in plan.sources:
            s.close()
    ms_source = next(s for s in plan.sources if s.name == "ms")
    urls = ms_source.url_for  # type: ignore[attr-defined]
    assert isinstance(urls, RepoURLs) and urls.allowed is not None
    everything = {f.path for f in plan.manifest.files}
    assert everything - urls.allowed == {"config.json", SHARDS[3]}


def test_a_small_file_liar_is_dropped_while_resolving(
    servers: dict[str, ServerThread], hf_repo: HfRepo, tmp_path: Path
) -> None:
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [_mirror("liar", "hf", servers["liar"].url, 1), _mirror("good", "hf", servers["good"].url, 2)],
    )
    plan = resolve(f"hf://{REPO_ID}", load_catalog(cat), _settings(tmp_path), PullOptions(format="dir"))
    for s in plan.sources:
        s.close()
    assert plan.manifest.file("config.json").sha256 == hf_repo.files["config.json"].sha256
    assert "liar" not in [s.name for s in plan.sources]
    assert plan.manifest.name == "tiny-r1"
    assert any("liar: dropped" in n and "config.json" in n for n in plan.notes)


def test_refusals(servers: dict[str, ServerThread], tmp_path: Path) -> None:
    cat = load_catalog(_catalog_file(tmp_path / "m.yaml", [_mirror("good", "hf", servers["good"].url, 1)]))
    settings = _settings(tmp_path)
    with pytest.raises(UsageError, match="not an Ollama model"):
        resolve(f"hf://{REPO_ID}", cat, settings, PullOptions(format="ollama"))
    with pytest.raises(NoSourceError, match="repository not found"):
        resolve("hf://acme/missing", cat, settings, PullOptions(format="hf"))
    with pytest.raises(UsageError, match="include/exclude"):
        resolve(f"hf://{REPO_ID}", cat, settings, PullOptions(format="hf", include=("*.gguf",)))


def test_a_published_piece_manifest_must_agree(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_bytes(b'{"hidden_size": 9}\n')
    create_manifest(wrong, name="wrong").write(tmp_path / "wrong.manifest.json")
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [_mirror("good", "hf", servers["good"].url, 1)],
        {ALIAS: {"hf": REPO_ID, "manifest": "wrong.manifest.json"}},
    )
    with pytest.raises(IntegrityError, match=r"published piece manifest says config\.json"):
        resolve(ALIAS, load_catalog(cat), _settings(tmp_path), PullOptions(format="hf"))


# -- pulls -------------------------------------------------------------------------------------------
def _recorder(seen: list[tuple[str, str | None]]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Any:
        seen.append((request.path, request.headers.get("Authorization")))
        return await handler(request)

    return record


def test_the_token_goes_to_the_official_endpoint_only(
    hf_repo: HfRepo, model_dir: Path, tmp_path: Path
) -> None:
    index = ModelIndex([hf_repo])
    official_seen: list[tuple[str, str | None]] = []
    mirror_seen: list[tuple[str, str | None]] = []
    official_app = make_app(index, token="hf_secret")
    official_app.middlewares.append(_recorder(official_seen))
    mirror_app = make_app(index)
    mirror_app.middlewares.append(_recorder(mirror_seen))
    with ServerThread(official_app) as official, ServerThread(mirror_app) as mirror:
        cat = _catalog_file(
            tmp_path / "m.yaml",
            [
                _mirror("hub", "hf", official.url, 1, official=True),
                _mirror("mirror", "hf", mirror.url, 2),
            ],
        )
        settings = _settings(tmp_path, HF_TOKEN="hf_secret")
        events = _run(f"hf://{REPO_ID}", load_catalog(cat), settings, format="dir", dest=tmp_path / "out")
    assert _digests(tmp_path / "out") == _digests(model_dir)
    assert official_seen and all(auth == "Bearer hf_secret" for _, auth in official_seen)
    assert any("/api/models/" in p for p, _ in official_seen) and any(
        "/resolve/" in p for p, _ in official_seen
    )
    assert mirror_seen and all(auth is None for _, auth in mirror_seen)
    assert "hf_secret" not in repr(settings) and "hf_secret" not in repr(events)
    for state_file in (tmp_path / "state").rglob("*"):
        if state_file.is_file():
            assert b"hf_secret" not in state_file.read_bytes()


def test_dir_install_then_reuse_from_the_hf_cache(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    cat = load_catalog(
        _catalog_file(
            tmp_path / "m.yaml",
            [
                _mirror("good", "hf", servers["good"].url, 1),
                _mirror("ms", "modelscope", servers["ms"].url, 2),
            ],
            {ALIAS: {"hf": REPO_ID, "modelscope": REPO_ID}},
        )
    )
    settings = _settings(tmp_path)
    _run(ALIAS, cat, settings, format="hf")
    sent = {n: servers[n].app[STATS].bytes_total for n in ("good", "ms")}
    # The same model as a plain folder: every byte comes from the cache's blobs, none from the network.
    events = _run(ALIAS, cat, settings, format="dir", dest=tmp_path / "plain")
    assert _digests(tmp_path / "plain") == _digests(model_dir)
    reused = [e for e in events if isinstance(e, LocalReuse)]
    assert reused and sum(e.reused_bytes for e in reused) > 0
    assert sum(_finished(events).delivered_by_source.values()) == 0
    assert all(servers[n].app[STATS].bytes_total == sent[n] for n in ("good", "ms"))
    # ... and dsmirror ls now knows the folder.
    from dsmirror._install.listing import list_installed

    assert any(m.kind == "dir" and m.where == tmp_path / "plain" for m in list_installed(settings))


def test_a_second_pull_downloads_nothing(servers: dict[str, ServerThread], tmp_path: Path) -> None:
    cat = load_catalog(_catalog_file(tmp_path / "m.yaml", [_mirror("good", "hf", servers["good"].url, 1)]))
    settings = _settings(tmp_path)
    _run(f"hf://{REPO_ID}", cat, settings, format="hf")
    before = servers["good"].app[STATS].bytes_total
    events = _run(f"hf://{REPO_ID}", cat, settings, format="hf")
    assert servers["good"].app[STATS].bytes_total == before
    assert _finished(events).downloaded_bytes == 0


def test_include_narrows_the_snapshot(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    cat = load_catalog(_catalog_file(tmp_path / "m.yaml", [_mirror("good", "hf", servers["good"].url, 1)]))
    settings = _settings(tmp_path)
    _run(f"hf://{REPO_ID}", cat, settings, format="hf", include=("*.json", "sub/*"))
    got = hf_offline(settings.hf_cache, tmp_path, ["config.json", "sub/dir/nested.txt"], ["*.json", "sub/*"])
    want = {k: v for k, v in _digests(model_dir).items() if k.endswith(".json") or k.startswith("sub/")}
    assert got["snapshot"] == want
    # Without the patterns the snapshot is honestly incomplete (trees/<commit>.json lists everything).
    assert "incomplete" in hf_offline(settings.hf_cache, tmp_path, [], None)


# -- acceptance ----------------------------------------------------------------------------------------
def _cli_pull(ref: str, tmp: Path, catalog: Path, *args: str) -> list[dict[str, Any]]:
    env = cli_env(tmp)  # its stores where _settings(tmp) has them
    argv = [
        *DSMIRROR_CLI,
        "pull", ref, "--no-default-catalog", "--mirrors", str(catalog), "--json",
        "--give-up-after", "30", *args,
    ]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json_events(proc.stdout)


def _acceptance(servers: dict[str, ServerThread], model_dir: Path, tmp: Path, alias: dict[str, Any]) -> None:
    cat = _catalog_file(
        tmp / "mirrors.yaml",
        [
            _mirror("bad", "hf", servers["bad"].url, 1),
            _mirror("good", "hf", servers["good"].url, 2),
            _mirror("ms", "modelscope", servers["ms"].url, 3),
        ],
        {ALIAS: alias},
    )
    events = _cli_pull(ALIAS, tmp, cat, "--format", "hf")
    finished = [e for e in events if e["event"] == "PullFinished"]
    assert len(finished) == 1
    caught = [e for e in events if e["event"] in ("PieceRejected", "SourceDropped") and e["source"] == "bad"]
    assert caught, "the corrupting endpoint was never caught"
    delivered = finished[0]["delivered_by_source"]
    assert delivered["good"] > 0 and delivered["ms"] > 0  # one pull over all of them at once
    want = _digests(model_dir)
    got = hf_offline(tmp / "hf-cache", tmp, sorted(want), None)
    assert got["files"] == want
    assert got["snapshot"] == want
    blobs = tmp / "hf-cache" / "models--acme--tiny-r1" / "blobs"
    for blob in blobs.iterdir():
        assert len(blob.name) in (40, 64)  # no partial or temporary file among the blobs


def test_acceptance_alias_with_a_piece_manifest(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    create_manifest(model_dir, name="tiny-r1", piece_size=1 << 20).write(tmp_path / "tiny.manifest.json")
    alias = {"hf": REPO_ID, "modelscope": REPO_ID, "manifest": str(tmp_path / "tiny.manifest.json")}
    _acceptance(servers, model_dir, tmp_path, alias)


def test_acceptance_alias_with_registry_digests_only(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    """No piece hashes anywhere: the engine must find the corrupting endpoint from whole-file digests."""
    _acceptance(servers, model_dir, tmp_path, {"hf": REPO_ID, "modelscope": REPO_ID})


def test_pieces_from_a_corrupt_endpoint_are_rejected_in_process(
    servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path
) -> None:
    create_manifest(model_dir, name="tiny-r1", piece_size=1 << 20).write(tmp_path / "tiny.manifest.json")
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [_mirror("bad", "hf", servers["bad"].url, 1), _mirror("good", "hf", servers["good"].url, 2)],
        {ALIAS: {"hf": REPO_ID, "manifest": str(tmp_path / "tiny.manifest.json")}},
    )
    events = _run(ALIAS, load_catalog(cat), _settings(tmp_path), format="dir", dest=tmp_path / "out")
    assert _digests(tmp_path / "out") == _digests(model_dir)
    assert any(isinstance(e, (PieceRejected, SourceDropped)) and e.source == "bad" for e in events)


def test_modelscope_only_alias(servers: dict[str, ServerThread], model_dir: Path, tmp_path: Path) -> None:
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [_mirror("ms", "modelscope", servers["ms"].url, 1)],
        {"ms-only": {"modelscope": REPO_ID, "exclude": ["shards/*"]}},
    )
    settings = _settings(tmp_path)
    with pytest.raises(UsageError, match="cannot be pulled with --format hf"):
        resolve("ms-only", load_catalog(cat), settings, PullOptions(format="hf"))
    _run("ms-only", load_catalog(cat), settings, format="dir", dest=tmp_path / "out")
    want = {k: v for k, v in _digests(model_dir).items() if not k.startswith("shards/")}
    assert _digests(tmp_path / "out") == want


def test_an_hf_ref_borrows_the_aliases_modelscope_copy(
    servers: dict[str, ServerThread], tmp_path: Path
) -> None:
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [_mirror("good", "hf", servers["good"].url, 1), _mirror("ms", "modelscope", servers["ms"].url, 2)],
        {ALIAS: {"hf": REPO_ID, "modelscope": REPO_ID}},
    )
    plan = resolve(f"hf://{REPO_ID}@main", load_catalog(cat), _settings(tmp_path), PullOptions(format="dir"))
    for s in plan.sources:
        s.close()
    assert [s.name for s in plan.sources] == ["good", "ms", "prefetched"]
    assert plan.manifest.name == "tiny-r1"


# -- file globs on the command line ---------------------------------------------------------------------
BIN_REPO = "acme/bins"


@pytest.fixture(scope="module")
def bin_repo(tmp_path_factory: pytest.TempPathFactory) -> HfRepo:
    """A small repo with .bin weights (one in LFS, one in git), json files and a README."""
    root = tmp_path_factory.mktemp("bins") / "bins"
    rnd = random.Random(7)
    files = {
        "config.json": b'{"hidden_size": 8}\n',
        "sub/tokenizer.json": rnd.randbytes(3000),
        "pytorch_model.bin": rnd.randbytes((1 << 20) + 17),  # LFS
        "extra/adapter.bin": rnd.randbytes(5000),  # a git blob
        "README.md": b"# bins\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return HfRepo.from_folder(BIN_REPO, root)


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (("--include", "*.json"), lambda p: p.endswith(".json")),
        (("--exclude-file", "*.bin", "--exclude-file", "README.md"), lambda p: p.endswith(".json")),
        (("--exclude-file", "*.bin"), lambda p: not p.endswith(".bin")),
    ],
    ids=["include", "exclude-two", "exclude"],
)
def test_cli_file_globs(
    bin_repo: HfRepo, tmp_path: Path, args: tuple[str, ...], wanted: Callable[[str], bool]
) -> None:
    with ServerThread(make_app(ModelIndex([bin_repo]))) as hub:
        cat = _catalog_file(tmp_path / "m.yaml", [_mirror("hub", "hf", hub.url, 1)])
        events = _cli_pull(f"hf://{BIN_REPO}", tmp_path, cat, "--dest", str(tmp_path / "out"), *args)
        sent = dict(hub.app[STATS].bytes_by_file)
    keep = {p for p in bin_repo.files if wanted(p)}
    assert keep and keep != set(bin_repo.files)
    # Only the selected files crossed the network, each once, and nothing else was fetched.
    assert sent == {f"{BIN_REPO}/{p}": bin_repo.files[p].size for p in keep}
    assert set(_digests(tmp_path / "out")) == keep
    assert sorted(_finished_json(events)["files"]) == sorted(keep)


def test_cli_help_documents_the_globs(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dsmirror.cli._app import app

    text = CliRunner().invoke(app, ["pull", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
    for option in ("--include", "--exclude-file", "--exclude", "--metadata-timeout"):
        assert option in text
    assert "Anchored" in text and "GLOB" in text


def _finished_json(events: list[dict[str, Any]]) -> dict[str, Any]:
    done = [e for e in events if e["event"] == "PullFinished"]
    assert len(done) == 1
    return done[0]


# -- the resolver's notes --------------------------------------------------------------------------------
def test_cli_json_shows_the_resolvers_notes(
    servers: dict[str, ServerThread], hf_repo: HfRepo, tmp_path: Path
) -> None:
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [
            _mirror("liar", "hf", servers["liar"].url, 1),
            _mirror("good", "hf", servers["good"].url, 2),
            _mirror("ms", "modelscope", servers["ms"].url, 3),
        ],
        {ALIAS: {"hf": REPO_ID, "modelscope": REPO_ID}},
    )
    events = _cli_pull(ALIAS, tmp_path, cat, "--dest", str(tmp_path / "out"), "--include", "*.json")
    kinds = [e["event"] for e in events]
    assert kinds.count("PlanNotes") == 1 and kinds.index("PlanNotes") < kinds.index("PullStarted")
    plan = events[kinds.index("PlanNotes")]
    assert plan["ref"] == ALIAS and plan["name"] == ALIAS and plan["dest"] == str(tmp_path / "out")
    notes = plan["notes"]
    assert notes[0] == f"hf://{REPO_ID}@main is commit {hf_repo.commit} (listed by liar)"
    assert "liar: dropped, it sent config.json with the wrong git blob id" in notes
    assert "ms: serves 2 of 2 files with the pinned digests" in notes
    assert _finished_json(events)["delivered_by_source"].get("liar", 0) == 0


def test_notes_are_printed_one_line_each(tmp_path: Path) -> None:
    from rich.console import Console

    from dsmirror._core.events import PlanNotes
    from dsmirror.cli._render import print_notes, render_human

    long_note = "hf://acme/x@main is commit " + "a" * 40 + " (listed by [hub]) " + "x" * 150
    ev = PlanNotes("hf://acme/x", "x", "0" * 64, "/tmp/x", (long_note, "ms: not used (HTTP 404)"))
    for render in (lambda c: list(print_notes([ev], c)), lambda c: render_human([ev], c)):
        console = Console(width=80, record=True, no_color=True)
        render(console)
        lines = console.export_text().splitlines()
        assert lines == [f"note {long_note}", "note ms: not used (HTTP 404)"]


# -- metadata requests are bounded in time ---------------------------------------------------------------
@pytest.fixture
def silent() -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback endpoint that accepts every connection and never answers: (url, connections)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", held
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.mark.parametrize("revision", ["main", "commit"])
def test_a_silent_endpoint_is_skipped_after_the_timeout(
    servers: dict[str, ServerThread],
    hf_repo: HfRepo,
    silent: tuple[str, list[socket.socket]],
    revision: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dsmirror import Mirror

    url, held = silent
    rev = hf_repo.commit if revision == "commit" else revision  # a commit skips model_info: tree only
    mirrors = [
        Mirror("dead", "hf", DEAD),
        Mirror("silent", "hf", url),
        Mirror("good", "hf", servers["good"].url),
    ]
    t0 = time.monotonic()
    listing = list_hf_repo(mirrors, REPO_ID, rev, token=None, timeout=0.3)
    took = time.monotonic() - t0
    assert held, "the silent endpoint was never asked"
    assert listing.endpoint == "good" and listing.commit == hf_repo.commit
    assert listing.skipped[0].startswith("dead: cannot connect")
    assert listing.skipped[1:] == ("silent: no answer within 0.3 s",)
    assert 0.3 <= took < 3  # one timeout, no retries with back-off
    # Nothing was logged: huggingface_hub warns only before a retry, and none was made.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with pytest.raises(NoSourceError, match=r"silent: no answer within 0\.2 s"):
        list_hf_repo(mirrors[1:2], REPO_ID, rev, token=None, timeout=0.2)


def test_the_metadata_timeout_reaches_every_registry(
    servers: dict[str, ServerThread], silent: tuple[str, list[socket.socket]], tmp_path: Path
) -> None:
    url, _ = silent
    cat = _catalog_file(
        tmp_path / "m.yaml",
        [
            _mirror("silent", "hf", url, 1),
            _mirror("good", "hf", servers["good"].url, 2),
            _mirror("ms-silent", "modelscope", url, 3),
        ],
        {ALIAS: {"hf": REPO_ID, "modelscope": REPO_ID}},
    )
    t0 = time.monotonic()
    opts = PullOptions(format="dir", dest=tmp_path / "out", dry_run=True, metadata_timeout=0.3)
    events = list(pull(ALIAS, catalog=load_catalog(cat), settings=_settings(tmp_path), options=opts))
    assert time.monotonic() - t0 < 5
    notes = next(e for e in events if isinstance(e, PlanNotes)).notes
    assert "silent: no answer within 0.3 s (did not list the repo)" in notes
    assert any(n.startswith("ms-silent: not used (no answer within 0.3 s") for n in notes), notes


# -- dry run -------------------------------------------------------------------------------------------
def test_dry_run_fetches_nothing(servers: dict[str, ServerThread], hf_repo: HfRepo, tmp_path: Path) -> None:
    with ServerThread(make_app(ModelIndex([hf_repo]))) as hub:
        cat = load_catalog(_catalog_file(tmp_path / "m.yaml", [_mirror("hub", "hf", hub.url, 1)]))
        settings = _settings(tmp_path)
        dest = tmp_path / "out"
        events = _run(f"hf://{REPO_ID}", cat, settings, format="dir", dest=dest, dry_run=True)
        assert hub.app[STATS].bytes_total == 0
        assert not dest.exists()
        small = {p: f for p, f in hf_repo.files.items() if not f.lfs and f.size}
        notes = next(e for e in events if isinstance(e, PlanNotes)).notes
        assert f"dry run: {len(small)} small file(s)" in notes[-1] and "provisional" in notes[-1]
        dry = next(e for e in events if isinstance(e, PullDryRun))
        rows = {r.path: r for r in dry.files}
        assert set(rows) == set(hf_repo.files)
        for path, served in hf_repo.files.items():  # everything to fetch, small files with their size
            assert rows[path].fetch_bytes == served.size and rows[path].fetch_from == ("hub",)
        assert dry.fetch_bytes == sum(f.size for f in hf_repo.files.values())

        # Once pulled, the small files are on disk: the dry run knows their digests and the real id.
        done = _finished(_run(f"hf://{REPO_ID}", cat, settings, format="dir", dest=dest))
        served = hub.app[STATS].bytes_total
        events = _run(f"hf://{REPO_ID}", cat, settings, format="dir", dest=dest, dry_run=True)
        assert hub.app[STATS].bytes_total == served
    dry = next(e for e in events if isinstance(e, PullDryRun))
    assert dry.fetch_bytes == 0 and dry.present_bytes == done.total_bytes
    notes = next(e for e in events if isinstance(e, PlanNotes)).notes
    assert not any(n.startswith("dry run:") for n in notes)
    assert dry.manifest_sha256 == next(e for e in events if isinstance(e, PlanNotes)).manifest_sha256


def test_dry_run_after_an_interrupted_pull(bin_repo: HfRepo, tmp_path: Path) -> None:
    """The small files an interrupted pull fetched are read from its partial area, not fetched again."""
    from dsmirror import DsmirrorError

    faults = ServeFaults(status_for_paths={"pytorch_model.bin": 404})
    with ServerThread(make_app(ModelIndex([bin_repo]), faults=faults)) as hub:
        cat = load_catalog(_catalog_file(tmp_path / "m.yaml", [_mirror("hub", "hf", hub.url, 1)]))
        settings = _settings(tmp_path)
        dest = tmp_path / "out"
        ref = f"hf://{BIN_REPO}"
        with pytest.raises(DsmirrorError):
            list(pull(ref, catalog=cat, settings=settings, options=PullOptions(dest=dest, give_up_after=2)))
        served = hub.app[STATS].bytes_total
        events = _run(ref, cat, settings, format="dir", dest=dest, dry_run=True)
        assert hub.app[STATS].bytes_total == served
    notes = next(e for e in events if isinstance(e, PlanNotes)).notes
    assert not any(n.startswith("dry run:") for n in notes)  # every small file was found on disk
    dry = next(e for e in events if isinstance(e, PullDryRun))
    rows = {r.path: r for r in dry.files}
    assert rows["pytorch_model.bin"].fetch_bytes == bin_repo.files["pytorch_model.bin"].size
    assert dry.fetch_bytes == rows["pytorch_model.bin"].fetch_bytes  # the rest is present (resumed)
