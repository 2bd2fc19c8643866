"""Ollama registries: names, manifests, and pulls into an Ollama store from loopback registries.

The registries are ``dsmirror._serve`` apps on 127.0.0.1: an "official" one that answers blob
requests with 307 to a second server (its CDN), and one that corrupts every blob it sends.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from dsmirror import NoSourceError, PullFinished, Settings, UsageError
from dsmirror._core.events import Event
from dsmirror._formats.catalog import load_catalog
from dsmirror._install.listing import list_installed
from dsmirror._pull import PullOptions, pull, resolve
from dsmirror._resolve.registries import parse_ollama_manifest, parse_ollama_name
from dsmirror._serve import (
    STATS,
    ModelIndex,
    OllamaModel,
    ServeFaults,
    ServerThread,
    index_ollama_store,
    make_app,
)

ALIAS = "tiny:1b"
CONFIG = b'{"model_format":"gguf","model_family":"llama","file_type":"Q4_0"}'


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OllamaModel:
    root = tmp_path_factory.mktemp("ollama-src")
    rnd = random.Random(3)
    (root / "model.gguf").write_bytes(rnd.randbytes((32 << 20) + 1))  # five 8 MiB pieces
    (root / "template").write_text("{{ .Prompt }}")
    (root / "params").write_text('{"stop":["</s>"]}')
    (root / "license").write_text("MIT\n")
    layers = [
        ("application/vnd.ollama.image.model", root / "model.gguf"),
        ("application/vnd.ollama.image.template", root / "template"),
        ("application/vnd.ollama.image.params", root / "params"),
        ("application/vnd.ollama.image.license", root / "license"),
    ]
    return OllamaModel.from_files("library", "tiny", "latest", layers, CONFIG)


def _blob_bytes(model: OllamaModel) -> dict[str, bytes]:
    out = {}
    for digest, blob in model.blobs.items():
        out[digest.removeprefix("sha256:")] = blob if isinstance(blob, bytes) else Path(blob).read_bytes()
    return out


@pytest.fixture(scope="module")
def servers(model: OllamaModel) -> Iterator[dict[str, ServerThread]]:
    index = ModelIndex(ollama_models=[model])
    cdn = ServerThread(make_app(index)).start()
    started = {
        "cdn": cdn,
        "registry": ServerThread(make_app(index, blob_redirect_to=cdn.url)).start(),
        "bad": ServerThread(make_app(index, faults=ServeFaults(corrupt_paths=set(model.blobs)))).start(),
    }
    yield started
    for s in started.values():
        s.stop()


def _catalog(path: Path, mirrors: list[dict[str, Any]]) -> Path:
    doc = {"version": 1, "mirrors": mirrors, "models": {ALIAS: {"ollama": "library/tiny:latest"}}}
    path.write_text(yaml.safe_dump(doc))
    return path


def _mirrors(servers: dict[str, ServerThread], *names: str) -> list[dict[str, Any]]:
    spec = {
        "registry": {"name": "registry", "kind": "ollama", "url": servers["registry"].url, "official": True},
        "bad": {"name": "bad", "kind": "ollama", "url": servers["bad"].url, "priority": 1},
    }
    return [spec[n] for n in names]


def _settings(tmp: Path) -> Settings:
    return Settings.from_env(
        {
            "HOME": str(tmp / "home"),
            "XDG_STATE_HOME": str(tmp / "state"),
            "HF_HUB_CACHE": str(tmp / "hf-cache"),
            "OLLAMA_MODELS": str(tmp / "ollama"),
        }
    )


def _run(ref: str, cat: Path, settings: Settings, **opts: Any) -> list[Event]:
    options = PullOptions(**{"give_up_after": 30, **opts})
    return list(pull(ref, catalog=load_catalog(cat), settings=settings, options=options))


def _check_store(models: Path, model: OllamaModel, host: str = "registry.ollama.ai") -> None:
    manifest = models / "manifests" / host / "library" / "tiny" / "latest"
    assert manifest.read_bytes() == model.manifest  # the registry's bytes, unchanged
    blobs = _blob_bytes(model)
    on_disk = {p.name: p.read_bytes() for p in (models / "blobs").iterdir()}
    assert on_disk == {f"sha256-{h}": data for h, data in blobs.items()}  # nothing else in blobs/
    for h, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == h
    # Read back the way Ollama reads its store (the server's indexer speaks the same layout).
    (found,) = index_ollama_store(models)
    assert (found.host, found.namespace, found.name, found.tag) == (host, "library", "tiny", "latest")


# -- names and manifests ------------------------------------------------------------------------
_LIB = "registry.ollama.ai"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("library/deepseek-r1:7b", (_LIB, "library", "deepseek-r1", "7b", "deepseek-r1:7b")),
        ("deepseek-r1", (_LIB, "library", "deepseek-r1", "latest", "deepseek-r1:latest")),
        ("huihui/qwq:32b", (_LIB, "huihui", "qwq", "32b", "huihui/qwq:32b")),
        ("ollama://lan:5000/team/tiny:q4", ("lan:5000", "team", "tiny", "q4", "lan:5000/team/tiny:q4")),
    ],
)  # fmt: skip
def test_names(text: str, want: tuple[str, ...]) -> None:
    n = parse_ollama_name(text)
    assert (n.host, n.namespace, n.name, n.tag, n.short) == want
    assert n.manifest_path == f"manifests/{want[0]}/{want[1]}/{want[2]}/{want[3]}"


@pytest.mark.parametrize("text", ["", "a/b/c/d/e", "../x:1", "name:ta/g", "-x"])
def test_bad_names(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ollama_name(text)


def _doc(layers: list[dict[str, Any]], config: dict[str, Any] | None = None) -> bytes:
    cfg = config or {"digest": "sha256:" + "c" * 64, "size": 3}
    return json.dumps({"schemaVersion": 2, "config": cfg, "layers": layers}).encode()


def test_manifest_parsing() -> None:
    a = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "a" * 64, "size": 10}
    blobs = parse_ollama_manifest(_doc([a, dict(a)]))
    assert [(b.sha256[0], b.size) for b in blobs] == [("c", 3), ("a", 10)]  # config first, once each
    assert blobs[1].path == "blobs/sha256-" + "a" * 64
    for bad in (
        _doc([{**a, "digest": "sha256:" + "A" * 64}]),
        _doc([{**a, "digest": "md5:abc"}]),
        _doc([{**a, "size": -1}]),
        _doc([{**a, "size": True}]),
        _doc([a, {**a, "size": 11}]),
        json.dumps({"schemaVersion": 1}).encode(),
        b"not json",
    ):
        with pytest.raises(ValueError):
            parse_ollama_manifest(bad)


def test_plan(servers: dict[str, ServerThread], model: OllamaModel, tmp_path: Path) -> None:
    cat = load_catalog(_catalog(tmp_path / "m.yaml", _mirrors(servers, "bad", "registry")))
    settings = _settings(tmp_path)
    plan = resolve(ALIAS, cat, settings, PullOptions(format="ollama"))
    for s in plan.sources:
        s.close()
    assert plan.dest == settings.ollama_models
    assert [s.name for s in plan.sources] == ["registry", "bad"]  # official first
    assert {f.path: f.sha256 for f in plan.manifest.files} == {
        f"blobs/sha256-{h}": h for h in _blob_bytes(model)
    }
    assert plan.manifest.files[0].sha256 == hashlib.sha256(CONFIG).hexdigest()  # the config blob too
    assert "from registry" in plan.notes[0]  # the official registry decides what the tag means
    with pytest.raises(UsageError, match="cannot be pulled with --format hf"):
        resolve(ALIAS, cat, settings, PullOptions(format="hf"))
    with pytest.raises(UsageError, match="is an Ollama model"):
        resolve("ollama://library/tiny", cat, settings, PullOptions(format="hf"))
    with pytest.raises(NoSourceError, match="tiny:nope"):
        resolve("ollama://library/tiny:nope", cat, settings, PullOptions(format="ollama"))


def test_a_manifest_that_lies_about_its_digest_is_refused(model: OllamaModel, tmp_path: Path) -> None:
    @web.middleware
    async def lie(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Any:
        resp = await handler(request)
        if "/manifests/" in request.path:
            resp.headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
        return resp

    liar_app = make_app(ModelIndex(ollama_models=[model]))
    liar_app.middlewares.append(lie)
    with ServerThread(liar_app) as liar, ServerThread(make_app(ModelIndex(ollama_models=[model]))) as honest:
        cat = _catalog(
            tmp_path / "m.yaml",
            [
                {"name": "liar", "kind": "ollama", "url": liar.url, "official": True},
                {"name": "honest", "kind": "ollama", "url": honest.url},
            ],
        )
        plan = resolve(ALIAS, load_catalog(cat), _settings(tmp_path), PullOptions(format="ollama"))
        for s in plan.sources:
            s.close()
    assert "from honest" in plan.notes[0]


def test_a_silent_registry_is_skipped_after_the_metadata_timeout(
    servers: dict[str, ServerThread], tmp_path: Path
) -> None:
    """A registry that accepts the connection and never answers costs one timeout, then the next."""
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    try:
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
        cat = _catalog(
            tmp_path / "m.yaml",
            [
                {"name": "silent", "kind": "ollama", "url": silent, "official": True},
                *_mirrors(servers, "bad"),
            ],
        )
        t0 = time.monotonic()
        plan = resolve(ALIAS, load_catalog(cat), _settings(tmp_path), PullOptions(metadata_timeout=0.3))
        took = time.monotonic() - t0
        for s in plan.sources:
            s.close()
    finally:
        listener.close()
    assert 0.3 <= took < 3
    assert "from bad" in plan.notes[0]
    assert plan.notes[1].startswith("silent: no answer within 0.3 s (")
    assert plan.notes[1].endswith("(did not serve the manifest)")


def test_file_globs_are_refused(servers: dict[str, ServerThread], tmp_path: Path) -> None:
    cat = load_catalog(_catalog(tmp_path / "m.yaml", _mirrors(servers, "registry")))
    for opts in (PullOptions(include=("*.gguf",)), PullOptions(format="ollama", exclude_files=("license",))):
        with pytest.raises(UsageError, match="pulled whole"):
            resolve(ALIAS, cat, _settings(tmp_path), opts)


# -- pulls ----------------------------------------------------------------------------------------
def test_no_manifest_unless_every_blob_is_in_place(model: OllamaModel, tmp_path: Path) -> None:
    gguf = next(
        d for d in model.blobs if not isinstance(model.blobs[d], bytes) and "model" in str(model.blobs[d])
    )
    broken = make_app(ModelIndex(ollama_models=[model]), faults=ServeFaults(status_for_paths={gguf: 404}))
    with ServerThread(broken) as registry:
        cat = _catalog(tmp_path / "m.yaml", [{"name": "registry", "kind": "ollama", "url": registry.url}])
        settings = _settings(tmp_path)
        with pytest.raises(NoSourceError):
            _run(ALIAS, cat, settings, format="ollama", give_up_after=5)
    models = settings.ollama_models
    assert not (models / "manifests").exists()
    assert (
        all(p.name.startswith("sha256-") for p in (models / "blobs").iterdir())
        if (models / "blobs").exists()
        else True
    )


def test_explicit_registry_host_and_a_second_pull(
    servers: dict[str, ServerThread], model: OllamaModel, tmp_path: Path
) -> None:
    host = servers["registry"].url.removeprefix("http://")
    cat = _catalog(tmp_path / "m.yaml", _mirrors(servers, "registry"))
    settings = _settings(tmp_path)
    ref = f"ollama://{host}/library/tiny:latest"
    _run(ref, cat, settings, format="ollama")
    _check_store(settings.ollama_models, model, host=host)
    sent = servers["cdn"].app[STATS].bytes_total
    events = _run(ref, cat, settings, format="ollama")
    assert servers["cdn"].app[STATS].bytes_total == sent  # every blob was already there
    assert next(e for e in events if isinstance(e, PullFinished)).downloaded_bytes == 0
    listed = [m for m in list_installed(settings) if m.kind == "ollama"]
    assert [(m.name, m.status) for m in listed] == [(f"{host}/library/tiny:latest", "verified")]


@pytest.mark.parametrize("spelling", ["ollama://library/tiny:latest", "ollama://{host}/library/tiny:latest"])
def test_namespace_and_host_spellings_pull(
    spelling: str, servers: dict[str, ServerThread], model: OllamaModel, tmp_path: Path
) -> None:
    """``library/tiny`` is namespace/name on the catalog's registries (it was read as host "library",
    and the pull went to https://library/v2/...); ``127.0.0.1:PORT/library/tiny`` is that registry."""
    host = servers["registry"].url.removeprefix("http://")
    ref = spelling.format(host=host)
    cat = _catalog(tmp_path / "m.yaml", _mirrors(servers, "registry"))
    settings = _settings(tmp_path)
    events = _run(ref, cat, settings, format="ollama")
    assert any(isinstance(e, PullFinished) for e in events)
    _check_store(
        settings.ollama_models, model, host="registry.ollama.ai" if "{host}" not in spelling else host
    )


def test_format_dir_is_an_ollama_layout_in_a_folder(
    servers: dict[str, ServerThread], model: OllamaModel, tmp_path: Path
) -> None:
    cat = _catalog(tmp_path / "m.yaml", _mirrors(servers, "registry"))
    settings = _settings(tmp_path)
    _run(ALIAS, cat, settings, format="dir", dest=tmp_path / "copy")
    _check_store(tmp_path / "copy", model)
    (found,) = [m for m in list_installed(settings) if m.kind == "dir"]
    assert (
        found.where == tmp_path / "copy"
        and found.status == "verified"
        and found.files == len(model.blobs) + 1
    )


# -- acceptance ------------------------------------------------------------------------------------
def test_acceptance_pull_alias_into_the_ollama_store(
    servers: dict[str, ServerThread], model: OllamaModel, tmp_path: Path
) -> None:
    cat = _catalog(tmp_path / "mirrors.yaml", _mirrors(servers, "bad", "registry"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        OLLAMA_MODELS=str(tmp_path / "ollama"),
        HF_HUB_CACHE=str(tmp_path / "hf-cache"),
    )
    argv = [
        sys.executable, "-c", "from dsmirror.cli import main; main()",
        "pull", ALIAS, "--format", "ollama", "--no-default-catalog", "--mirrors", str(cat), "--json",
        "--give-up-after", "30",
    ]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("PullFinished") == 1
    caught = [e for e in events if e["event"] in ("PieceRejected", "SourceDropped") and e["source"] == "bad"]
    assert caught, "the corrupting registry was never caught"
    _check_store(tmp_path / "ollama", model)
    assert not list((tmp_path / "ollama" / ".dsmirror" / "partial").glob("*/data"))
