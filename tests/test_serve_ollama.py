"""The Ollama registry side of the server, driven the way `ollama pull` drives a registry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dsmirror._serve import (
    STATS,
    ModelIndex,
    OllamaModel,
    ServeFaults,
    ServerThread,
    index_ollama_store,
    make_app,
)

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_SIZE = 300_001
CONFIG = b'{"model_format":"gguf","model_family":"llama","file_type":"Q4_0"}'


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> OllamaModel:
    root = tmp_path_factory.mktemp("ollama-src")
    (root / "model.gguf").write_bytes(os.urandom(MODEL_SIZE))
    (root / "template").write_text("{{ .Prompt }}")
    (root / "params").write_text('{"stop":["</s>"]}')
    layers = [
        ("application/vnd.ollama.image.model", root / "model.gguf"),
        ("application/vnd.ollama.image.template", root / "template"),
        ("application/vnd.ollama.image.params", root / "params"),
    ]
    return OllamaModel.from_files("library", "tiny", "latest", layers, CONFIG)


@pytest.fixture(scope="module")
def server(model: OllamaModel) -> Iterator[ServerThread]:
    with ServerThread(make_app(ModelIndex(ollama_models=[model]))) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def _pull(client: httpx.Client, ns: str, name: str, tag: str, *, part: int = 65_536) -> dict[str, bytes]:
    """What ollama does: manifest, then every blob (HEAD for size, ranged GETs), verified."""
    r = client.get(f"/v2/{ns}/{name}/manifests/{tag}", headers={"Accept": MANIFEST_V2})
    assert r.status_code == 200, r.text
    assert r.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(r.content).hexdigest()
    manifest = json.loads(r.content)
    blobs: dict[str, bytes] = {}
    for layer in [manifest["config"], *manifest["layers"]]:
        url = f"/v2/{ns}/{name}/blobs/{layer['digest']}"
        size = int(client.head(url).headers["Content-Length"])
        assert size == layer["size"]
        data = b""
        while len(data) < size:
            end = min(len(data) + part, size) - 1
            chunk = client.get(url, headers={"Range": f"bytes={len(data)}-{end}"})
            assert chunk.status_code == 206
            assert chunk.headers["Content-Range"] == f"bytes {len(data)}-{end}/{size}"
            data += chunk.content
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        blobs[layer["digest"]] = data
    return blobs


def test_manifest_shape(model: OllamaModel) -> None:
    doc = json.loads(model.manifest)
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == MANIFEST_V2
    assert doc["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert doc["config"]["digest"] == "sha256:" + hashlib.sha256(CONFIG).hexdigest()
    assert [layer["mediaType"].rsplit(".", 1)[-1] for layer in doc["layers"]] == [
        "model",
        "template",
        "params",
    ]
    assert doc["layers"][0]["size"] == MODEL_SIZE


def test_ping_and_pull(client: httpx.Client, model: OllamaModel, server: ServerThread) -> None:
    r = client.get("/v2/")
    assert r.status_code == 200 and r.json() == {}
    blobs = _pull(client, "library", "tiny", "latest")
    assert blobs[model.layers[0].digest] == CONFIG
    assert server.app[STATS].bytes_by_file[model.layers[1].digest] >= MODEL_SIZE


def test_manifest_bytes_exact(client: httpx.Client, model: OllamaModel) -> None:
    r = client.get("/v2/library/tiny/manifests/latest")
    assert r.content == model.manifest and r.headers["Content-Type"] == MANIFEST_V2
    head = client.head("/v2/library/tiny/manifests/latest")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(model.manifest))
    assert head.headers["Docker-Content-Digest"] == model.digest
    by_digest = client.get(f"/v2/library/tiny/manifests/{model.digest}")
    assert by_digest.content == model.manifest


def test_full_blob_and_ranges(client: httpx.Client, model: OllamaModel) -> None:
    digest = model.layers[1].digest
    url = f"/v2/library/tiny/blobs/{digest}"
    full = client.get(url)
    assert full.status_code == 200 and "sha256:" + hashlib.sha256(full.content).hexdigest() == digest
    assert full.headers["Docker-Content-Digest"] == digest and full.headers["Accept-Ranges"] == "bytes"
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == full.content[-10:]
    r = client.get(url, headers={"Range": f"bytes={MODEL_SIZE}-"})
    assert r.status_code == 416
    config = client.get(f"/v2/library/tiny/blobs/{model.layers[0].digest}", headers={"Range": "bytes=2-6"})
    assert config.status_code == 206 and config.content == CONFIG[2:7]


def test_not_found_codes(client: httpx.Client, model: OllamaModel) -> None:
    def code(r: httpx.Response) -> tuple[int, str]:
        return r.status_code, r.json()["errors"][0]["code"]

    assert code(client.get("/v2/library/tiny/manifests/7b")) == (404, "MANIFEST_UNKNOWN")
    assert code(client.get("/v2/library/other/manifests/latest")) == (404, "MANIFEST_UNKNOWN")
    assert client.head("/v2/library/tiny/manifests/7b").status_code == 404
    unknown = "sha256:" + "0" * 64
    assert code(client.get(f"/v2/library/tiny/blobs/{unknown}")) == (404, "BLOB_UNKNOWN")
    # Blobs are scoped by repository, as in any registry.
    assert code(client.get(f"/v2/library/other/blobs/{model.layers[1].digest}")) == (404, "BLOB_UNKNOWN")
    assert code(client.get("/v2/library/tiny/blobs/sha256:xyz")) == (400, "DIGEST_INVALID")


def test_blob_redirect(model: OllamaModel, server: ServerThread) -> None:
    """Like the real registry: blob GETs answer 307 to a CDN; HEAD is answered directly."""
    front = make_app(ModelIndex(ollama_models=[model]), blob_redirect_to=server.url + "/")
    digest = model.layers[1].digest
    with ServerThread(front) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.get(f"/v2/library/tiny/blobs/{digest}")
        assert (
            r.status_code == 307 and r.headers["Location"] == f"{server.url}/v2/library/tiny/blobs/{digest}"
        )
        followed = c.get(
            f"/v2/library/tiny/blobs/{digest}", follow_redirects=True, headers={"Range": "bytes=0-9"}
        )
        assert followed.status_code == 206 and len(followed.content) == 10
        assert c.head(f"/v2/library/tiny/blobs/{digest}").headers["Content-Length"] == str(MODEL_SIZE)
        assert c.get("/v2/library/tiny/manifests/latest").status_code == 200  # manifests stay here
    assert front[STATS].bytes_total == 0


def test_faults_by_digest(model: OllamaModel) -> None:
    digest = model.layers[1].digest
    faults = ServeFaults(corrupt_paths={digest}, status_for_paths={model.layers[2].digest: 500})
    app = make_app(ModelIndex(ollama_models=[model]), faults=faults)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url) as c:
        bad = c.get(f"/v2/library/tiny/blobs/{digest}").content
        assert len(bad) == MODEL_SIZE and "sha256:" + hashlib.sha256(bad).hexdigest() != digest
        assert c.get(f"/v2/library/tiny/blobs/{model.layers[2].digest}").status_code == 500


def _write_store(root: Path, model: OllamaModel, host: str = "registry.ollama.ai") -> None:
    manifest = root / "manifests" / host / model.namespace / model.name / model.tag
    manifest.parent.mkdir(parents=True)
    manifest.write_bytes(model.manifest)
    (root / "blobs").mkdir()
    for digest, blob in model.blobs.items():
        target = root / "blobs" / digest.replace(":", "-")
        if isinstance(blob, bytes):
            target.write_bytes(blob)
        else:
            shutil.copyfile(blob, target)


def test_serve_from_ollama_store(tmp_path: Path, model: OllamaModel) -> None:
    store = tmp_path / "models"
    _write_store(store, model)
    # A second model whose blob is missing is skipped, not half-served.
    broken = store / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(model.manifest.replace(model.layers[1].digest.encode(), b"sha256:" + b"1" * 64))
    models = index_ollama_store(store)
    assert [(m.host, m.namespace, m.name, m.tag) for m in models] == [
        ("registry.ollama.ai", "library", "tiny", "latest")
    ]
    assert models[0].manifest == model.manifest
    with ServerThread(make_app(ModelIndex(ollama_models=models))) as srv, httpx.Client(base_url=srv.url) as c:
        blobs = _pull(c, "library", "tiny", "latest", part=100_000)
        assert set(blobs) == {layer.digest for layer in model.layers}
        assert c.get("/v2/library/broken/manifests/latest").status_code == 404
