"""``dsmirror serve`` run as a real process, used by the real huggingface_hub client and over raw sockets.

The stores it serves are made the way users' tools leave them: the HF cache is written by the
real client (downloading from a loopback origin), the Ollama store has Ollama's layout. The
client runs in fresh subprocesses (it reads HF_ENDPOINT at import). Everything stays on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dsmirror import create_manifest
from dsmirror._serve import LFS_MIN_SIZE, HfRepo, ModelIndex, OllamaModel, ServerThread, make_app

REPO_ID = "acme/served-model"
LATE_REPO_ID = "acme/late-model"
BIG = LFS_MIN_SIZE + 654_321
SECRET = b"TOP-SECRET-do-not-serve"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DSMIRROR = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()",
]


# --- helpers ---------------------------------------------------------------------------------


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No proxies, no HF settings of the developer's, a private HOME."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING", "OLLAMA", "XDG_")) and "proxy" not in k.lower()
    }
    env.update(HOME=str(home), NO_PROXY="*", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    env.update(HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HOME=str(home / "hf-home-unused"))
    env.update(extra)
    return env


class ServeProcess:
    """``dsmirror serve --port 0 ...`` as a child process; ``url`` is read from its first line."""

    def __init__(self, args: list[str], home: Path, **env: str) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*DSMIRROR, "serve", "--port", "0", *args],
            env=clean_env(home, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self._first_line(timeout=30)
        assert line.startswith("dsmirror serve: listening on "), line + "".join(self.stderr)
        self.url = line.rsplit(" ", 1)[1].strip()
        self.port = int(self.url.rsplit(":", 1)[1])

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _first_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not out:
            self.proc.kill()
            raise AssertionError("dsmirror serve did not start:\n" + "".join(self.stderr))
        return out[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_DOWNLOAD = """
import json, sys
from huggingface_hub import snapshot_download
print(json.dumps({"snapshot": snapshot_download(sys.argv[1], revision=sys.argv[2])}))
"""


def hf_snapshot(home: Path, endpoint: str, repo_id: str, revision: str = "main", **env: str) -> Path:
    """Run the real client in a fresh process; return the snapshot folder it reports."""
    proc = hf_snapshot_start(home, endpoint, repo_id, revision, **env)
    return hf_snapshot_result(proc)


def hf_snapshot_start(
    home: Path, endpoint: str, repo_id: str, revision: str = "main", **env: str
) -> subprocess.Popen[str]:
    script = textwrap.dedent(_DOWNLOAD)
    return subprocess.Popen(
        [sys.executable, "-c", script, repo_id, revision],
        env=clean_env(home, HF_ENDPOINT=endpoint, HF_HOME=str(home), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def hf_snapshot_result(proc: subprocess.Popen[str], timeout: float = 120) -> Path:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return Path(json.loads(out.strip().splitlines()[-1])["snapshot"])


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_hf_cache(hub: Path, repo: HfRepo, folder: Path) -> None:
    """The client's own cache layout: refs, relative snapshot links, blobs named by etag."""
    storage = hub / f"models--{repo.repo_id.replace('/', '--')}"
    assert (storage / "refs" / "main").read_text() == repo.commit
    snapshot = storage / "snapshots" / repo.commit
    assert tree_bytes(snapshot) == tree_bytes(folder)
    assert {p.name for p in (storage / "blobs").iterdir() if not p.name.startswith(".")} == {
        f.etag for f in repo.files.values()
    }
    for path, f in repo.files.items():
        link = snapshot / path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == (storage / "blobs" / f.etag).resolve()


def raw_get(port: int, target: bytes, headers: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as so:
        so.sendall(
            b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        data = b""
        while chunk := so.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def make_repo_folder(root: Path, seed: int) -> Path:
    (root / "sub").mkdir(parents=True)
    rng = hashlib.shake_128(f"seed {seed}".encode())
    (root / "model.safetensors").write_bytes(rng.digest(BIG))
    (root / "config.json").write_text(json.dumps({"seed": seed}) + "\n")
    (root / "sub" / "nested.txt").write_text(f"nested {seed}\n")
    (root / "empty.txt").write_bytes(b"")
    return root


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An HF cache written by the real client, an Ollama store, a manifest folder, a secret beside them."""
    base = tmp_path_factory.mktemp("serve-cli")
    (base / "secret.txt").write_bytes(SECRET)
    folder = make_repo_folder(base / "origin" / "repo", seed=1)
    late_folder = make_repo_folder(base / "origin" / "late", seed=2)
    repo = HfRepo.from_folder(REPO_ID, folder)
    late = HfRepo.from_folder(LATE_REPO_ID, late_folder)
    with ServerThread(make_app(ModelIndex([repo, late]))) as origin:
        hf_snapshot(base / "user", origin.url, REPO_ID)  # the user's own `hf download`
        hf_snapshot(base / "later", origin.url, LATE_REPO_ID)  # installed after the server starts

    ollama = base / "ollama"
    (ollama / "blobs").mkdir(parents=True)
    gguf = hashlib.shake_128(b"gguf").digest(300_001)
    model = OllamaModel.from_files(
        "library",
        "tiny",
        "latest",
        [("application/vnd.ollama.image.model", _write(base / "m.gguf", gguf))],
        b"{}",
    )
    for digest, blob in model.blobs.items():
        data = blob if isinstance(blob, bytes) else blob.read_bytes()
        (ollama / "blobs" / digest.replace(":", "-")).write_bytes(data)
    manifest_file = ollama / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest_file.parent.mkdir(parents=True)
    manifest_file.write_bytes(model.manifest)

    plain = base / "plain"
    (plain / "weights").mkdir(parents=True)
    (plain / "weights" / "a.bin").write_bytes(hashlib.shake_128(b"a").digest(200_000))
    (plain / "readme.txt").write_text("plain folder\n")
    manifest = create_manifest(plain, name="plain-model", piece_size=64 << 10)
    manifest_path = base / "plain.manifest.json"
    manifest.write(manifest_path)
    (plain / "leak.txt").symlink_to(base / "secret.txt")  # not in the manifest, never served
    return {
        "base": base,
        "repo": repo,
        "late": late,
        "folder": folder,
        "late_folder": late_folder,
        "hub": base / "user" / "hub",
        "later_hub": base / "later" / "hub",
        "ollama": ollama,
        "ollama_model": model,
        "gguf": gguf,
        "plain": plain,
        "manifest": manifest,
        "manifest_path": manifest_path,
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def served(world: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # Serve a copy of the user's cache, so that a model can be "installed" into it mid-test.
    hub = tmp_path_factory.mktemp("served") / "hub"
    shutil.copytree(world["hub"], hub, symlinks=True)  # type: ignore[arg-type]
    world["served_hub"] = hub
    args = [
        "--hf-cache",
        str(hub),
        "--ollama-models",
        str(world["ollama"]),
        "--folder",
        f"{world['manifest_path']}:{world['plain']}",
        "--no-default-catalog",
        "--rescan",
        "0",
    ]
    with ServeProcess(args, tmp_path_factory.mktemp("serve-home")) as srv:
        yield srv


# --- tests -----------------------------------------------------------------------------------


def test_real_client_downloads_snapshot_from_dsmirror_serve(
    served: ServeProcess, world: dict[str, object], tmp_path: Path
) -> None:
    repo, folder = world["repo"], world["folder"]
    assert isinstance(repo, HfRepo) and isinstance(folder, Path)
    start = time.monotonic()
    snap = hf_snapshot(tmp_path / "client", served.url, REPO_ID)
    print(f"snapshot_download from `dsmirror serve`: {time.monotonic() - start:.2f} s")
    assert (
        snap
        == tmp_path / "client" / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / repo.commit
    )
    check_hf_cache(tmp_path / "client" / "hub", repo, folder)
    # And again by commit, in another fresh process.
    by_commit = hf_snapshot(tmp_path / "client2", served.url, REPO_ID, repo.commit)
    assert tree_bytes(by_commit) == tree_bytes(folder)


def test_model_installed_after_start_is_found_on_miss(
    served: ServeProcess, world: dict[str, object], tmp_path: Path
) -> None:
    late, late_folder = world["late"], world["late_folder"]
    assert isinstance(late, HfRepo) and isinstance(late_folder, Path)
    with httpx.Client(base_url=served.url, timeout=10) as c:
        assert c.get(f"/api/models/{LATE_REPO_ID}/revision/main").status_code == 404
        name = f"models--{LATE_REPO_ID.replace('/', '--')}"
        shutil.copytree(
            Path(str(world["later_hub"])) / name, Path(str(world["served_hub"])) / name, symlinks=True
        )
        time.sleep(2.1)  # misses rescan at most every 2 s
        info = c.get(f"/api/models/{LATE_REPO_ID}/revision/main")
        assert info.status_code == 200 and info.json()["sha"] == late.commit
    snap = hf_snapshot(tmp_path / "client", served.url, LATE_REPO_ID)
    assert tree_bytes(snap) == tree_bytes(late_folder)


def test_ollama_flow_against_cli_server(served: ServeProcess, world: dict[str, object]) -> None:
    model = world["ollama_model"]
    assert isinstance(model, OllamaModel)
    with httpx.Client(base_url=served.url, timeout=10) as c:
        r = c.get("/v2/library/tiny/manifests/latest", headers={"Accept": MANIFEST_V2})
        assert r.status_code == 200 and r.content == model.manifest
        assert r.headers["Docker-Content-Digest"] == model.digest
        for layer in model.layers:
            url = f"/v2/library/tiny/blobs/{layer.digest}"
            assert int(c.head(url).headers["Content-Length"]) == layer.size
            data = b""
            while len(data) < layer.size:
                end = min(len(data) + 100_000, layer.size) - 1
                part = c.get(url, headers={"Range": f"bytes={len(data)}-{end}"})
                assert part.status_code == 206
                data += part.content
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
        assert c.get("/v2/library/tiny/manifests/nope").status_code == 404


def test_dsmirror_routes(served: ServeProcess, world: dict[str, object]) -> None:
    manifest, plain = world["manifest"], world["plain"]
    assert isinstance(plain, Path)
    sha = manifest.sha256  # type: ignore[attr-defined]
    with httpx.Client(base_url=served.url, timeout=10) as c:
        status = c.get("/dsmirror/status").json()
        assert status["status"] == "ok" and status["hf_repos"] >= 1 and status["ollama_models"] == 1
        assert status["folders"] == [
            {
                "name": "plain-model",
                "manifest_sha256": sha,
                "files": 2,
                "of_files": 2,
                "hf_repo": "dsmirror/plain-model",
            }
        ]
        assert status["pull_through"] is None
        got = c.get(f"/dsmirror/manifests/{sha}.json")
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == sha
        for key in ("plain-model", sha):
            r = c.get(f"/dsmirror/files/{key}/weights/a.bin")
            assert r.status_code == 200 and r.content == (plain / "weights" / "a.bin").read_bytes()
            assert r.headers["ETag"] == f'"{hashlib.sha256(r.content).hexdigest()}"'
        part = c.get("/dsmirror/files/plain-model/weights/a.bin", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == (plain / "weights" / "a.bin").read_bytes()[10:20]
        assert c.get("/dsmirror/files/plain-model/nope.bin").status_code == 404
        assert c.get(f"/dsmirror/manifests/{'0' * 64}.json").status_code == 404
        # The same folder as a Hugging Face repo.
        info = c.get("/api/models/dsmirror/plain-model/revision/main").json()
        assert {s["rfilename"] for s in info["siblings"]} == {"weights/a.bin", "readme.txt"}


def test_dsmirror_serve_is_a_mirror_for_dsmirror_pull(
    served: ServeProcess, world: dict[str, object], tmp_path: Path
) -> None:
    """Another dsmirror client uses the server's plain-file route as a mirror of kind http."""
    plain = world["plain"]
    assert isinstance(plain, Path)
    catalog = tmp_path / "mirrors.yaml"
    url = f"{served.url}/dsmirror/files/plain-model/"
    catalog.write_text(f"version: 1\nmirrors:\n  - name: office\n    kind: http\n    url: {url}\n")
    dest = tmp_path / "dest"
    options = ["--dest", str(dest), "--mirrors", str(catalog), "--no-default-catalog", "--json"]
    proc = subprocess.run(
        [*DSMIRROR, "pull", str(world["manifest_path"]), *options],
        env=clean_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (dest / "weights" / "a.bin").read_bytes() == (plain / "weights" / "a.bin").read_bytes()
    assert (dest / "readme.txt").read_bytes() == (plain / "readme.txt").read_bytes()


HOSTILE = [
    "/acme/served-model/resolve/main/../../secret.txt",
    "/acme/served-model/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/acme/served-model/resolve/main/..%2f..%2fsecret.txt",
    "/acme/served-model/resolve/main/%2Fetc%2Fpasswd",
    "/acme/served-model/resolve/main//etc/passwd",
    "/acme/served-model/resolve/%2e%2e/config.json",
    "/dsmirror/files/plain-model/../../secret.txt",
    "/dsmirror/files/plain-model/%2e%2e/%2e%2e/secret.txt",
    "/dsmirror/files/plain-model/..%2F..%2Fsecret.txt",
    "/dsmirror/files/plain-model/weights%2Fa.bin",
    "/dsmirror/files/plain-model/leak.txt",
    "/dsmirror/files/plain-model//etc/passwd",
    "/dsmirror/files/plain-model/%2Fetc%2Fpasswd",
    "/dsmirror/files/plain-model/.dsmirror/installed/x.json",
    "/dsmirror/files/plain-model/readme.txt%00",
    "/dsmirror/files/..%2Fplain/readme.txt",
    "/dsmirror/files/%2e%2e/secret.txt",
    "/dsmirror/files/plain-model",
    "/dsmirror/manifests/../../secret.txt",
    "/dsmirror/manifests/..%2F..%2Fsecret.txt",
    "/dsmirror/manifests/%2Fetc%2Fpasswd",
    "/dsmirror/manifests/plain-model.json",
    "/dsmirror/../secret.txt",
    "/dsmirror/%2e%2e/secret.txt",
    "/dsmirror/status/..",
    "/v2/library/tiny/blobs/..%2F..%2Fsecret.txt",
    "/v2/library/tiny/blobs/sha256-..",
    "/v2/%2e%2e/tiny/manifests/latest",
    "/api/v1/models/acme/served-model/repo?FilePath=../../secret.txt",
    "/api/models/acme/served-model/tree/main/..%2F..",
    "/../secret.txt",
    "//etc/passwd",
    "*",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_targets_against_cli_server(served: ServeProcess, target: str) -> None:
    status, data = raw_get(served.port, target.encode())
    assert 400 <= status < 500, data[:300]
    assert SECRET not in data and b"root:" not in data


def test_malformed_requests_against_cli_server(served: ServeProcess) -> None:
    for line in (b"/dsmirror/status\x00", b"/dsmirror/files/plain-model/readme.txt\x00"):
        status, data = raw_get(served.port, line)
        assert status == 400 and SECRET not in data
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as so:
        so.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = so.recv(4096)
        assert reply == b"" or reply.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), reply[:100]
        assert SECRET not in reply
    status, _ = raw_get(served.port, b"/dsmirror/status", b"X-Big: " + b"a" * 20_000 + b"\r\n")
    assert status in (400, 431)
    with httpx.Client(base_url=served.url, timeout=10) as c:
        assert c.post("/dsmirror/status", content=b"x" * (1 << 20)).status_code in (405, 413)
        assert c.delete("/dsmirror/files/plain-model/readme.txt").status_code == 405


def test_file_changed_on_disk_is_not_served(world: dict[str, object], tmp_path: Path) -> None:
    """A folder file that no longer matches its manifest is not served, not even its old size."""
    plain = tmp_path / "plain"
    shutil.copytree(Path(str(world["plain"])), plain, symlinks=True)
    (plain / "readme.txt").write_text("tampered!!!!\n")  # same length, other bytes
    args = [
        "--folder",
        f"{world['manifest_path']}:{plain}",
        "--no-default-catalog",
        "--hf-cache",
        str(tmp_path),
    ]
    with ServeProcess(args, tmp_path / "home") as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert c.get("/dsmirror/files/plain-model/readme.txt").status_code == 404
        assert c.get("/dsmirror/files/plain-model/weights/a.bin").status_code == 200
        assert c.get("/dsmirror/status").json()["folders"][0]["files"] == 1


def test_token_and_binding(world: dict[str, object], tmp_path: Path) -> None:
    args = ["--token", "s3cret", "--no-default-catalog", "--ollama-models", str(world["ollama"])]
    with ServeProcess(args, tmp_path / "home") as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        assert srv.url.startswith("http://127.0.0.1:")
        for url in (
            "/dsmirror/status",
            "/healthz",
            "/v2/library/tiny/manifests/latest",
            "/dsmirror/files/x/y",
        ):
            assert c.get(url).status_code == 401
        ok = c.get("/dsmirror/status", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop(world: dict[str, object], tmp_path: Path, sig: int) -> None:
    srv = ServeProcess(["--no-default-catalog", "--hf-cache", str(tmp_path)], tmp_path / "home")
    # A client that keeps its connection open must not keep the server from stopping.
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /dsmirror/status HTTP/1.1\r\nHost: x\r\n\r\n")
    start = time.monotonic()
    rc = srv.stop(sig)
    stalled.close()
    assert rc == 0, "".join(srv.stderr)
    assert time.monotonic() - start < 10
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_seed_in_the_same_process(world: dict[str, object], tmp_path: Path) -> None:
    """--seed: a complete manifest folder is seeded over BitTorrent by the serving process."""
    args = ["--folder", f"{world['manifest_path']}:{world['plain']}", "--no-default-catalog"]
    args += ["--hf-cache", str(tmp_path / "hub"), "--seed", "--listen", "127.0.0.1:0"]
    srv = ServeProcess(args, tmp_path / "home")
    try:
        deadline = time.monotonic() + 20
        while not any("magnet:?xt=urn:btih:" in line for line in srv.stderr):
            assert time.monotonic() < deadline, "".join(srv.stderr)
            time.sleep(0.1)
        assert any("seeding 1 torrents" in line for line in srv.stderr)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.get("/dsmirror/files/plain-model/readme.txt").status_code == 200
    finally:
        assert srv.stop() == 0
