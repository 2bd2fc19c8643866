"""The registry API of ``dsmirror serve`` (the OCI distribution spec's pull side), checked by the spec
over HTTP and used by unmodified OCI clients: Debian's ``skopeo`` and ORAS's Python SDK (``oras``).

Models are served from an Ollama store laid out as Ollama leaves it (``manifests/<host>/<ns>/<name>/<tag>``,
``blobs/sha256-<hex>``). Two manifest flavours: Ollama's own (Docker schema 2 with
``application/vnd.ollama.image.*`` layers, what the Ollama registry serves) and an OCI image manifest
over the same blobs. skopeo (containers/image) refuses the first client-side ("unsupported docker v2s2
media type") whatever the server does, so skopeo inspects and copies the OCI one, lists tags and
reads the raw Ollama manifest; ``oras`` pulls the Ollama one. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dsmirror._serve import ModelIndex, ServerThread, index_ollama_store, make_app
from dsmirror._serve._oci_routes import MAX_PAGE, page

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
CONFIG = json.dumps(
    {"model_format": "gguf", "model_family": "llama", "architecture": "amd64", "os": "linux"}
).encode()
MODEL_SIZE = 1_500_007
TAGS = ("latest", "7b", "q4_0")
#: The tags of library/tiny as the registry lists them (code-point order).
TINY_TAGS = ["7b", "latest", "oci", "q4_0"]
MANY = MAX_PAGE + 234  # tags of library/many: more than one page


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(media_type: str, config_type: str, layers: list[tuple[str, bytes]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": _digest(CONFIG), "size": len(CONFIG)},
        "layers": [{"mediaType": t, "digest": _digest(b), "size": len(b)} for t, b in layers],
    }
    return json.dumps(doc, indent=1).encode()


class Store:
    """An Ollama store on disk; ``add`` files a manifest (and its blobs) the way Ollama does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True)

    def add(self, host: str, ns: str, name: str, tag: str, manifest: bytes, blobs: list[bytes]) -> None:
        for blob in [CONFIG, *blobs]:
            path = self.root / "blobs" / _digest(blob).replace(":", "-")
            if not path.exists():
                path.write_bytes(blob)
        target = self.root / "manifests" / host / ns / name / tag
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(manifest)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    weights, template = os.urandom(MODEL_SIZE), b"{{ .Prompt }}"
    layers = [
        ("application/vnd.ollama.image.model", weights),
        ("application/vnd.ollama.image.template", template),
    ]
    ollama_manifest = _manifest(DOCKER_V2, "application/vnd.docker.container.image.v1+json", layers)
    oci_manifest = _manifest(OCI_MANIFEST, OCI_CONFIG, layers)
    store = Store(tmp_path_factory.mktemp("oci") / "models")
    for tag in TAGS:
        store.add("registry.ollama.ai", "library", "tiny", tag, ollama_manifest, [weights, template])
    store.add("registry.ollama.ai", "library", "tiny", "oci", oci_manifest, [weights, template])
    store.add("hf.co", "acme", "coder", "q8", ollama_manifest, [weights, template])
    small = _manifest(DOCKER_V2, "application/vnd.docker.container.image.v1+json", [])
    for i in range(MANY):
        store.add("registry.ollama.ai", "library", "many", f"t{i:05d}", small, [])
    return {
        "store": store.root,
        "weights": weights,
        "template": template,
        "ollama_manifest": ollama_manifest,
        "oci_manifest": oci_manifest,
    }


@pytest.fixture(scope="module")
def server(world: dict[str, object]) -> Iterator[ServerThread]:
    models = index_ollama_store(world["store"])  # type: ignore[arg-type]
    with ServerThread(make_app(ModelIndex(ollama_models=models))) as srv:
        yield srv


@pytest.fixture()
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def _error(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) == {"errors"} and len(body["errors"]) == 1, body
    assert {"code", "message", "detail"} <= set(body["errors"][0]), body
    return r.status_code, body["errors"][0]["code"]


# --- the spec, over HTTP ------------------------------------------------------------------------


def test_api_version_check(client: httpx.Client) -> None:
    r = client.get("/v2/")
    assert r.status_code == 200 and r.json() == {}
    assert r.headers[API_VERSION[0]] == API_VERSION[1]
    assert client.get("/v2/library/tiny/manifests/latest").headers[API_VERSION[0]] == API_VERSION[1]
    assert client.get("/v2/library/none/tags/list").headers[API_VERSION[0]] == API_VERSION[1]


def test_catalog_and_its_pages(client: httpx.Client) -> None:
    r = client.get("/v2/_catalog")
    assert r.status_code == 200 and r.json() == {
        "repositories": ["acme/coder", "library/many", "library/tiny"]
    }
    assert "Link" not in r.headers
    first = client.get("/v2/_catalog", params={"n": 2})
    assert first.json() == {"repositories": ["acme/coder", "library/many"]}
    assert first.headers["Link"] == '</v2/_catalog?n=2&last=library%2Fmany>; rel="next"'
    second = client.get(first.headers["Link"].split(">")[0][1:])
    assert second.json() == {"repositories": ["library/tiny"]} and "Link" not in second.headers
    assert client.get("/v2/_catalog", params={"last": "acme/coder"}).json()["repositories"] == [
        "library/many",
        "library/tiny",
    ]
    empty = client.get("/v2/_catalog", params={"n": 0})
    assert empty.json() == {"repositories": []} and "Link" not in empty.headers
    assert _error(client.get("/v2/_catalog", params={"n": "-1"})) == (400, "UNSUPPORTED")
    assert client.get("/v2/_catalog", params={"n": "9" * 5000}).status_code == 200


def test_tags_list(client: httpx.Client) -> None:
    r = client.get("/v2/library/tiny/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": "library/tiny", "tags": TINY_TAGS}
    one = client.get("/v2/library/tiny/tags/list", params={"n": 1, "last": "7b"})
    assert one.json()["tags"] == ["latest"]
    assert one.headers["Link"] == '</v2/library/tiny/tags/list?n=1&last=latest>; rel="next"'
    assert client.get("/v2/library/tiny/tags/list", params={"last": "oci"}).json()["tags"] == ["q4_0"]
    zero = client.get("/v2/library/tiny/tags/list", params={"n": 0})
    assert zero.json()["tags"] == [] and "Link" not in zero.headers
    # A one-part name is library/<name>, as Ollama and Docker read it; a host prefix names the store's folder.
    assert client.get("/v2/tiny/tags/list").json() == {
        "name": "tiny",
        "tags": TINY_TAGS,
    }
    assert client.get("/v2/hf.co/acme/coder/tags/list").json()["tags"] == ["q8"]
    assert client.get("/v2/acme/coder/tags/list").json()["tags"] == ["q8"]
    assert _error(client.get("/v2/registry.ollama.ai/acme/coder/tags/list")) == (404, "NAME_UNKNOWN")
    assert _error(client.get("/v2/library/none/tags/list")) == (404, "NAME_UNKNOWN")
    assert _error(client.get("/v2/a/b/c/d/tags/list")) == (404, "NAME_UNKNOWN")
    assert _error(client.get("/v2/library/-bad/tags/list")) == (400, "NAME_INVALID")
    assert _error(client.get("/v2/library%2Ftiny/tags/list")) == (400, "NAME_INVALID")


def test_tags_pages_cover_everything_once(client: httpx.Client) -> None:
    seen: list[str] = []
    url: str | None = "/v2/library/many/tags/list"
    pages = 0
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200
        seen += r.json()["tags"]
        link = r.headers.get("Link")
        url = link.split(">")[0][1:] if link else None
        pages += 1
    assert seen == [f"t{i:05d}" for i in range(MANY)] and pages == 2
    assert len(client.get("/v2/library/many/tags/list", params={"n": 10**6}).json()["tags"]) == MAX_PAGE


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_manifests_by_tag_and_digest(client: httpx.Client, world: dict[str, object], method: str) -> None:
    for name, tag, raw, media_type in [
        ("library/tiny", "latest", world["ollama_manifest"], DOCKER_V2),
        ("tiny", "7b", world["ollama_manifest"], DOCKER_V2),
        ("registry.ollama.ai/library/tiny", "oci", world["oci_manifest"], OCI_MANIFEST),
        ("hf.co/acme/coder", "q8", world["ollama_manifest"], DOCKER_V2),
    ]:
        assert isinstance(raw, bytes)
        for reference in (tag, _digest(raw)):
            r = client.request(method, f"/v2/{name}/manifests/{reference}")
            assert r.status_code == 200, (name, reference, r.text)
            assert r.headers["Content-Type"] == media_type
            assert r.headers["Content-Length"] == str(len(raw))
            assert r.headers["Docker-Content-Digest"] == _digest(raw)
            assert r.content == (raw if method == "GET" else b"")


def test_manifest_errors(client: httpx.Client) -> None:
    assert _error(client.get("/v2/library/tiny/manifests/nope")) == (404, "MANIFEST_UNKNOWN")
    assert _error(client.get(f"/v2/library/tiny/manifests/sha256:{'0' * 64}")) == (404, "MANIFEST_UNKNOWN")
    assert _error(client.get(f"/v2/library/tiny/manifests/sha512:{'0' * 128}")) == (404, "MANIFEST_UNKNOWN")
    assert _error(client.get("/v2/library/tiny/manifests/sha256:xyz")) == (400, "DIGEST_INVALID")
    assert _error(client.get("/v2/hf.co/library/tiny/manifests/latest")) == (404, "MANIFEST_UNKNOWN")
    assert client.head("/v2/library/tiny/manifests/nope").status_code == 404


def test_blobs(client: httpx.Client, world: dict[str, object]) -> None:
    weights = world["weights"]
    assert isinstance(weights, bytes)
    url = f"/v2/library/tiny/blobs/{_digest(weights)}"
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(MODEL_SIZE)
    assert head.headers["Docker-Content-Digest"] == _digest(weights)
    full = client.get(url)
    assert full.content == weights and full.headers["Docker-Content-Digest"] == _digest(weights)
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == weights[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{MODEL_SIZE}"
    assert part.headers["Docker-Content-Digest"] == _digest(weights)
    bad = client.get(url, headers={"Range": f"bytes={MODEL_SIZE}-"})
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{MODEL_SIZE}"
    assert client.get(f"/v2/hf.co/acme/coder/blobs/{_digest(CONFIG)}").content == CONFIG
    assert _error(client.get(f"/v2/library/many/blobs/{_digest(weights)}")) == (404, "BLOB_UNKNOWN")
    assert _error(client.get(f"/v2/registry.ollama.ai/acme/coder/blobs/{_digest(CONFIG)}")) == (
        404,
        "BLOB_UNKNOWN",
    )
    assert _error(client.get(f"/v2/library/tiny/blobs/sha512:{'a' * 128}")) == (404, "BLOB_UNKNOWN")
    assert _error(client.get("/v2/library/tiny/blobs/not-a-digest")) == (400, "DIGEST_INVALID")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/library/tiny/blobs/uploads/"),
        ("POST", f"/v2/library/tiny/blobs/uploads/?mount={_digest(CONFIG)}&from=acme/coder"),
        ("PATCH", "/v2/library/tiny/blobs/uploads/5e1f"),
        ("PUT", f"/v2/library/tiny/blobs/uploads/5e1f?digest={_digest(CONFIG)}"),
        ("PUT", "/v2/library/tiny/manifests/latest"),
        ("DELETE", "/v2/library/tiny/manifests/latest"),
        ("DELETE", f"/v2/library/tiny/blobs/{_digest(CONFIG)}"),
    ],
)
def test_pushes_and_deletes_are_unsupported(client: httpx.Client, method: str, path: str) -> None:
    r = client.request(method, path, content=b"{}")
    assert _error(r) == (405, "UNSUPPORTED") and r.headers["Allow"] == "GET, HEAD"
    assert client.get("/v2/library/tiny/manifests/latest").status_code == 200


def test_other_routes(client: httpx.Client) -> None:
    assert _error(client.get(f"/v2/library/tiny/referrers/{_digest(CONFIG)}")) == (404, "UNSUPPORTED")
    assert _error(client.get("/v2/library/tiny/blobs/uploads/5e1f")) == (404, "NAME_UNKNOWN")
    assert _error(client.get("/v2/library/tiny")) == (404, "NAME_UNKNOWN")


def test_page_is_the_spec_pagination() -> None:
    items = [f"{i:03d}" for i in range(10)]
    assert page(items, None, None) == (items, False)
    assert page(items, 3, None) == (items[:3], True)
    assert page(items, 3, "007") == (["008", "009"], False)
    assert page(items, 2, "007") == (["008", "009"], False)
    assert page(items, 0, None) == ([], False)
    assert page(items, 5, "zzz") == ([], False)
    assert page(items, 5, "0035") == (["004", "005", "006", "007", "008"], True)


# --- unmodified OCI clients -----------------------------------------------------------------------


def _client_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HOME=str(home), NO_PROXY="*", XDG_RUNTIME_DIR=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def _skopeo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("skopeo is not installed (.ci/run installs it)")
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [skopeo, "--insecure-policy", *args],
        env=_client_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_skopeo_lists_tags_across_pages(server: ServerThread, tmp_path: Path) -> None:
    ref = f"docker://127.0.0.1:{server.port}"
    done = _skopeo(tmp_path, "list-tags", "--tls-verify=false", f"{ref}/library/many")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Tags"] == [f"t{i:05d}" for i in range(MANY)]  # followed Link rel="next"
    done = _skopeo(tmp_path, "list-tags", "--tls-verify=false", f"{ref}/library/tiny")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["Tags"]) == TINY_TAGS
    missing = _skopeo(tmp_path, "list-tags", "--tls-verify=false", f"{ref}/library/none")
    assert missing.returncode != 0


def test_skopeo_reads_the_ollama_manifest(
    server: ServerThread, world: dict[str, object], tmp_path: Path
) -> None:
    for name in ("library/tiny:latest", "registry.ollama.ai/library/tiny:q4_0", "hf.co/acme/coder:q8"):
        ref = f"docker://127.0.0.1:{server.port}/{name}"
        done = _skopeo(tmp_path, "inspect", "--raw", "--tls-verify=false", ref)
        assert done.returncode == 0, done.stderr
        assert done.stdout.encode() == world["ollama_manifest"]


def test_skopeo_inspects_and_copies(server: ServerThread, world: dict[str, object], tmp_path: Path) -> None:
    raw = world["oci_manifest"]
    assert isinstance(raw, bytes)
    ref = f"docker://127.0.0.1:{server.port}/library/tiny:oci"
    done = _skopeo(tmp_path, "inspect", "--tls-verify=false", ref)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["Digest"] == _digest(raw)
    assert sorted(info["RepoTags"]) == TINY_TAGS
    assert info["Layers"] == [layer["digest"] for layer in json.loads(raw)["layers"]]
    out = tmp_path / "copy"
    done = _skopeo(tmp_path, "copy", "--src-tls-verify=false", ref, f"dir:{out}")
    assert done.returncode == 0, done.stderr
    assert (out / "manifest.json").read_bytes() == raw
    for blob in (CONFIG, world["weights"], world["template"]):
        assert isinstance(blob, bytes)
        assert (out / _digest(blob).removeprefix("sha256:")).read_bytes() == blob


def test_oras_pulls_the_ollama_model(
    server: ServerThread, world: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oras_client = pytest.importorskip("oras.client")
    for key in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NO_PROXY", "*")
    registry = f"127.0.0.1:{server.port}"
    client = oras_client.OrasClient(hostname=registry, insecure=True, tls_verify=False)
    assert client.get_tags(f"{registry}/library/tiny") == TINY_TAGS
    assert len(client.get_tags(f"{registry}/library/many")) == MANY
    manifest = client.get_manifest(f"{registry}/library/tiny:latest")
    assert manifest == json.loads(world["ollama_manifest"])  # type: ignore[arg-type]
    files = client.pull(target=f"{registry}/library/tiny:latest", outdir=str(tmp_path / "pulled"))
    got = {Path(f).name: Path(f).read_bytes() for f in files}
    assert got == {_digest(b): b for b in (world["weights"], world["template"])}  # type: ignore[arg-type]


def test_a_token_protected_registry(world: dict[str, object], tmp_path: Path) -> None:
    """With ``--token``: the spec's UNAUTHORIZED without it; skopeo sends it as ``--registry-token``."""
    models = index_ollama_store(world["store"])  # type: ignore[arg-type]
    with ServerThread(make_app(ModelIndex(ollama_models=models), token="s3cret")) as srv:
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            r = c.get("/v2/library/tiny/tags/list")
            assert _error(r) == (401, "UNAUTHORIZED") and r.headers["WWW-Authenticate"].startswith("Bearer")
            ok = c.get("/v2/library/tiny/tags/list", headers={"Authorization": "Bearer s3cret"})
            assert ok.json()["tags"] == TINY_TAGS
        ref = f"docker://127.0.0.1:{srv.port}/library/tiny:oci"
        done = _skopeo(tmp_path, "inspect", "--tls-verify=false", "--registry-token", "s3cret", ref)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["Digest"] == _digest(world["oci_manifest"])  # type: ignore[arg-type]
        assert _skopeo(tmp_path, "inspect", "--tls-verify=false", ref).returncode != 0
