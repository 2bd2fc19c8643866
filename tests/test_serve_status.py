"""What `dsmirror serve` tells about itself: the status document, ``/metrics``, the page's files.

Servers run in this process (``ServerThread``) on loopback; upstreams are the package's own
HF-compatible app. Every figure checked is one the server counted while the test made it serve:
the bytes a client received, the bytes the upstream app says it sent.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dsmirror import EngineConfig, Mirror, SchedulerConfig, create_manifest
from dsmirror._serve import (
    STATS,
    HfRepo,
    ModelIndex,
    OllamaModel,
    ServeConfig,
    ServeRoots,
    ServerThread,
    Upstream,
    build_app,
    make_app,
)
from dsmirror._serve._app import STATUS
from dsmirror._serve._errors import KINDS
from dsmirror._serve._metrics import render_metrics
from dsmirror.testing import MirrorServer
from test_serve_cli import make_repo_folder

REPO_ID = "acme/status-model"
STATIC = Path(__file__).parents[1] / "src" / "dsmirror" / "_serve" / "static"
ENGINE = EngineConfig(
    max_connections=4, progress_interval=0.05, scheduler=SchedulerConfig(give_up_after=10.0)
)


def _folder(root: Path, name: str, size: int = 300_000) -> tuple[Path, object]:
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "a.bin").write_bytes(hashlib.shake_128(name.encode()).digest(size))
    (root / "readme.txt").write_text(f"{name}\n")
    return root, create_manifest(root, name=name, piece_size=64 << 10)


def _ollama_store(root: Path) -> OllamaModel:
    gguf = root.parent / "m.gguf"
    gguf.write_bytes(hashlib.shake_128(b"gguf").digest(200_001))
    model = OllamaModel.from_files(
        "library", "tiny", "latest", [("application/vnd.ollama.image.model", gguf)], b"{}"
    )
    (root / "blobs").mkdir(parents=True)
    for digest, blob in model.blobs.items():
        data = blob if isinstance(blob, bytes) else blob.read_bytes()
        (root / "blobs" / digest.replace(":", "-")).write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(model.manifest)
    return model


def _metrics(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by the Prometheus client's own parser: (sample name, labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    families = list(text_string_to_metric_families(r.text))
    for family in families:
        assert family.documentation, family.name  # every metric has its HELP
        assert family.type in ("counter", "gauge"), family.name
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    # Strictly: HELP, then TYPE, then the samples of that metric, every name once.
    names = re.findall(r"^# HELP (\S+) ", r.text, re.M)
    assert names == re.findall(r"^# TYPE (\S+) ", r.text, re.M)
    assert len(names) == len(set(names)) and all(n.startswith("dsmirror_") for n in names)
    return out


def test_status_and_metrics_count_what_is_served(tmp_path: Path) -> None:
    plain, manifest = _folder(tmp_path / "plain", "plain-model")
    model = _ollama_store(tmp_path / "ollama")
    config = ServeConfig(
        roots=ServeRoots(ollama_models=tmp_path / "ollama", folders=((manifest, plain),)),  # type: ignore[arg-type]
        rescan_interval=0,
    )
    app, _ = build_app(config)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        doc = c.get("/dsmirror/status").json()
        assert doc["status"] == "ok" and doc["served"]["bytes"] == doc["bytes_served"] == 0
        models = {m["name"]: m for m in doc["models"]}
        assert models["plain-model"] == {
            "name": "plain-model",
            "format": "dir",
            "revision": manifest.sha256,  # type: ignore[attr-defined]
            "size": 300_000 + len("plain-model\n"),
            "files": 2,
            "verified_files": 2,
            "verified": True,
            "complete": True,
        }
        tiny = models["library/tiny:latest"]
        assert tiny["format"] == "ollama" and tiny["revision"] == model.digest
        assert tiny["size"] == sum(layer.size for layer in model.layers) and tiny["verified"]
        assert doc["seeding"] is None and doc["pull_through"] is None
        assert doc["pulls"] == {"active": 0, "done": 0, "failed": 0, "recent": []}
        before = _metrics(c)
        assert before["dsmirror_served_bytes_total", (("kind", "folder"),)] == 0
        assert before["dsmirror_models", (("format", "dir"),)] == 1
        assert before["dsmirror_models", (("format", "ollama"),)] == 1

        # Serve: a folder file whole, a range of it, an Ollama blob.
        got = c.get("/dsmirror/files/plain-model/weights/a.bin")
        assert got.status_code == 200 and len(got.content) == 300_000
        part = c.get("/dsmirror/files/plain-model/weights/a.bin", headers={"Range": "bytes=0-999"})
        assert len(part.content) == 1000
        layer = model.layers[-1]
        blob = c.get(f"/v2/library/tiny/blobs/{layer.digest}")
        assert len(blob.content) == layer.size
        c.get("/dsmirror/files/plain-model/nope.bin")

        doc = c.get("/dsmirror/status").json()
        counted = app[STATS]
        assert doc["served"]["bytes"] == counted.bytes_total == 301_000 + layer.size
        assert doc["served"]["by_kind"]["folder"] == 301_000
        assert doc["served"]["by_kind"]["ollama"] == layer.size
        assert doc["served"]["responses"]["folder"] == {"200": 1, "206": 1, "404": 1}
        assert doc["saved_bytes"] == doc["served"]["bytes"]  # nothing came from upstream
        after = _metrics(c)
        assert after["dsmirror_served_bytes_total", (("kind", "folder"),)] == 301_000
        assert after["dsmirror_served_bytes_total", (("kind", "ollama"),)] == layer.size
        assert after["dsmirror_http_responses_total", (("code", "206"), ("kind", "folder"))] == 1
        assert after["dsmirror_saved_bytes", ()] == 301_000 + layer.size
        assert after["dsmirror_uptime_seconds", ()] >= before["dsmirror_uptime_seconds", ()]
        assert after["dsmirror_info", (("version", doc["version"]),)] == 1


def test_pull_through_counts_upstream_bytes_by_source(tmp_path: Path) -> None:
    folder = make_repo_folder(tmp_path / "origin", seed=11)
    repo = HfRepo.from_folder(REPO_ID, folder)
    upstream_app = make_app(ModelIndex([repo]))
    with ServerThread(upstream_app) as up:
        mirror = Mirror(name="office-up", kind="hf", url=up.url, official=False)
        config = ServeConfig(
            roots=ServeRoots(hf_cache=tmp_path / "hub"),
            upstream=Upstream(hf=(mirror,)),
            rescan_interval=0,
            pull_engine=ENGINE,
            pull_piece_size=256 << 10,
        )
        app, _ = build_app(config)
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            big = repo.files["model.safetensors"]
            for _ in range(3):  # three clients, one pull
                r = c.get(f"/{REPO_ID}/resolve/main/model.safetensors")
                assert r.status_code == 200 and len(r.content) == big.size
            r = c.get(f"/{REPO_ID}/resolve/main/config.json")
            assert r.content == (folder / "config.json").read_bytes()
            doc = c.get("/dsmirror/status").json()
            sent_upstream = sum(upstream_app[STATS].bytes_by_file.values())
            small = repo.files["config.json"].size
            assert sent_upstream == big.size + small  # each file once
            assert doc["upstream"] == {"bytes": sent_upstream, "by_source": {"office-up": sent_upstream}}
            assert doc["served"]["by_kind"]["hf"] == 3 * big.size + small
            assert doc["saved_bytes"] == 2 * big.size
            pulls = doc["pulls"]
            assert pulls["active"] == 0 and pulls["done"] == 2 and pulls["failed"] == 0
            engine_pull = next(p for p in pulls["recent"] if p["file"] == f"{REPO_ID}/model.safetensors")
            assert engine_pull["state"] == "done" and engine_pull["size"] == big.size
            (source,) = engine_pull["sources"]
            assert source["name"] == "office-up" and source["delivered"] == big.size
            m = _metrics(c)
            assert m["dsmirror_upstream_bytes_total", (("source", "office-up"),)] == sent_upstream
            assert m["dsmirror_pulls_finished_total", (("result", "done"),)] == 2
            assert m["dsmirror_pulls_active", ()] == 0
            # What was pulled is held, and verified: the store's install record, the checked git blob.
            app[STATUS].tick()
            hub_model = next(x for x in c.get("/dsmirror/status").json()["models"] if x["name"] == REPO_ID)
            assert hub_model["format"] == "hf" and hub_model["revision"] == "main"
            assert hub_model["verified"], hub_model


def test_errors_are_shown_with_advice(tmp_path: Path) -> None:
    plain, manifest = _folder(tmp_path / "plain", "plain-model")
    (plain / "readme.txt").write_text("tampered!!!!\n")  # the first scan refuses it
    config = ServeConfig(roots=ServeRoots(folders=((manifest, plain),)), rescan_interval=0)  # type: ignore[arg-type]
    app, _ = build_app(config)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        logging.getLogger("dsmirror._serve._send").warning("a <b>hostile</b> [/] name\x1b[2J")
        doc = c.get("/dsmirror/status").json()
        recent = doc["errors"]["recent"]
        assert [e["kind"] for e in recent] == ["serve", "index"]
        assert recent[1]["message"].startswith("not serving ") and "readme.txt" in recent[1]["message"]
        assert recent[1]["hint"] == KINDS["index"]
        assert (
            recent[0]["message"] == "a <b>hostile</b> [/] name\x1b[2J"
        )  # as data; the page shows it as text
        assert doc["errors"]["by_kind"]["index"] == 1 and doc["errors"]["by_kind"]["serve"] == 1
        assert {m["name"]: m["complete"] for m in doc["models"]} == {"plain-model": False}
        m = _metrics(c)
        assert m["dsmirror_errors_total", (("kind", "index"),)] == 1
    # Stopped: the handler is gone from the logger.
    assert not any(h is app[STATUS].errors for h in logging.getLogger("dsmirror").handlers)


def test_page_and_files_are_static_safe_and_public(tmp_path: Path) -> None:
    plain, manifest = _folder(tmp_path / "plain", "plain-model")
    config = ServeConfig(roots=ServeRoots(folders=((manifest, plain),)), token="s3cret", rescan_interval=0)  # type: ignore[arg-type]
    with ServerThread(build_app(config)[0]) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert page.content == (STATIC / "status.html").read_bytes()
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
        for name, kind in (("status.js", "text/javascript"), ("status.css", "text/css")):
            r = c.get(f"/dsmirror/static/{name}")
            assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind)
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert c.head("/").status_code == 200
        for hidden in (
            "/dsmirror/static/status.html",
            "/dsmirror/static/x.js",
            "/dsmirror/static/..%2Fstatus.py",
        ):
            assert c.get(hidden).status_code in (400, 401, 404), hidden
        # The data needs the token, like every other route.
        for url in ("/dsmirror/status", "/metrics", "/?x=/dsmirror/status"):
            assert c.get(url).status_code == (200 if url.startswith("/?") else 401), url
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/dsmirror/status", headers=auth).json()["models"][0]["name"] == "plain-model"
        assert c.get("/metrics", headers=auth).status_code == 200
    # No build step and nothing from elsewhere: the page names no other host, and the script puts
    # strings in as text only.
    html = (STATIC / "status.html").read_text()
    script = (STATIC / "status.js").read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<script>" not in html and " style=" not in html  # no inline script or style (CSP)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "http://" not in script.replace("http://www.w3.org/2000/svg", "")


def test_metrics_format_escapes_label_values() -> None:
    doc = json.loads(json.dumps(_document_with_sources({'a"b\\c\nd': 5, "plain": 7})))
    text = render_metrics(doc)
    assert 'dsmirror_upstream_bytes_total{source="a\\"b\\\\c\\nd"} 5' in text
    parsed = {
        s.labels.get("source"): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "dsmirror_upstream_bytes_total"
    }
    assert parsed == {'a"b\\c\nd': 5, "plain": 7}


def _document_with_sources(by_source: dict[str, int]) -> dict[str, object]:
    """A status document of an idle server whose pull-through fetched ``by_source``."""
    app = make_app(ModelIndex())
    status = app[STATUS]
    doc = status.document(ModelIndex(), [])
    doc["upstream"] = {"bytes": sum(by_source.values()), "by_source": by_source}
    return doc


@pytest.fixture(autouse=True)
def _no_stray_handlers() -> Iterator[None]:
    """Every app's error handler is removed when it stops (a leak would see other tests' logs)."""
    yield
    leaked = [h for h in logging.getLogger("dsmirror").handlers if type(h).__name__ == "RecentErrors"]
    for h in leaked:
        logging.getLogger("dsmirror").removeHandler(h)
    assert not leaked


def test_status_of_hf_cache_tells_unverified_big_files(tmp_path: Path) -> None:
    """An HF cache written by another tool: the big LFS blob is trusted by name, the small ones hashed."""
    folder = make_repo_folder(tmp_path / "origin", seed=3)
    repo = HfRepo.from_folder(REPO_ID, folder)
    hub = tmp_path / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    (hub / "blobs").mkdir(parents=True)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(repo.commit)
    snap = hub / "snapshots" / repo.commit
    for path, f in repo.files.items():
        shutil.copyfile(f.disk_path, hub / "blobs" / f.etag)
        (snap / path).parent.mkdir(parents=True, exist_ok=True)
        depth = "../" * (path.count("/") + 2)
        (snap / path).symlink_to(f"{depth}blobs/{f.etag}")
    config = ServeConfig(roots=ServeRoots(hf_cache=tmp_path / "hub"), rescan_interval=0)
    with ServerThread(build_app(config)[0]) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        (held,) = c.get("/dsmirror/status").json()["models"]
    assert held["name"] == REPO_ID and held["format"] == "hf" and held["revision"] == "main"
    assert held["files"] == len(repo.files) and held["size"] == sum(f.size for f in repo.files.values())
    assert held["verified_files"] == len(repo.files) - 1 and not held["verified"]


def test_a_running_pull_shows_its_sources_rates_and_logs_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin = tmp_path / "origin"
    (origin / "w").mkdir(parents=True)
    (origin / "w" / "big.bin").write_bytes(hashlib.shake_128(b"big").digest(3_000_000))
    manifest = create_manifest(origin, name="slow-model", piece_size=64 << 10)
    served = tmp_path / "served"
    served.mkdir()
    with MirrorServer(origin, rate=1_000_000) as mirror:
        mirror_entry = Mirror(name="lan-files", kind="http", url=mirror.url, official=False)
        config = ServeConfig(
            roots=ServeRoots(folders=((manifest, served),)),
            upstream=Upstream(http=(mirror_entry,)),
            rescan_interval=0,
            pull_engine=ENGINE,
        )
        app, _ = build_app(config)
        with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                download = pool.submit(c.get, "/dsmirror/files/slow-model/w/big.bin")
                deadline = time.monotonic() + 10
                while True:
                    doc = c.get("/dsmirror/status").json()
                    running = [p for p in doc["pulls"]["recent"] if p["state"] == "running"]
                    if (
                        running
                        and running[0]["verified_bytes"] > 0
                        and all(x["rate"] > 0 for x in [running[0], *running[0]["sources"]])
                    ):
                        break
                    assert time.monotonic() < deadline, doc["pulls"]
                    time.sleep(0.05)
                (pull,) = running
                assert pull["file"] == "slow-model/w/big.bin" and doc["pulls"]["active"] == 1
                (source,) = pull["sources"]
                assert source["name"] == "lan-files" and source["kind"] == "http" and source["rate"] > 0
                assert 0 < doc["upstream"]["by_source"]["lan-files"] < 3_000_000
                with caplog.at_level(logging.INFO, logger="dsmirror"):
                    app[STATUS].tick()
                (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pulling ")]
                assert re.fullmatch(
                    r"pulling slow-model/w/big\.bin: \S+ \S+ / 2\.9 MiB verified, \S+ \S+/s"
                    r" \(lan-files \S+ \S+/s\)",
                    line,
                ), line
                assert download.result().content == (origin / "w" / "big.bin").read_bytes()
            # The last piece is sent as it verifies; the pull ends after the file's own check.
            while (doc := c.get("/dsmirror/status").json())["pulls"]["active"]:
                assert time.monotonic() < deadline + 10, doc["pulls"]
                time.sleep(0.05)
    assert doc["upstream"]["by_source"] == {"lan-files": 3_000_000}
    assert doc["pulls"]["active"] == 0 and doc["pulls"]["done"] == 1
    assert len(doc["history"]["samples"]) >= 1
