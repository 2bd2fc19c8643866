"""Install layouts (HF cache snapshots, Ollama manifests), ``dsmirror ls`` and ``dsmirror rm``."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsmirror import AlreadyInProgress, Settings, StorageError, UsageError
from dsmirror._formats.hfcache import repo_folder as hf_repo_folder
from dsmirror._install.hf import install_hf_snapshot
from dsmirror._install.listing import list_installed
from dsmirror._install.records import record_dir_install
from dsmirror._install.removal import remove_installed
from dsmirror._verify.tree import create_manifest
from dsmirror.cli import app

C1 = "1" * 40
C2 = "2" * 40


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _etag(data: bytes) -> str:
    """As the Hub: LFS (SHA-256) for big files, git blob SHA-1 for small ones (threshold lowered)."""
    return hashlib.sha256(data).hexdigest() if len(data) >= 1000 else _git_sha1(data)


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "OLLAMA_MODELS": str(tmp_path / "ollama"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_HOME", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    return Settings.from_env(env)


def _hf_install(
    settings: Settings, repo_id: str, commit: str, files: dict[str, bytes], revision: str
) -> Path:
    repo = hf_repo_folder(settings.hf_cache, repo_id)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for data in files.values():
        (repo / "blobs" / _etag(data)).write_bytes(data)
    tree = {p: {"size": len(d), "blob_id": _git_sha1(d)} for p, d in files.items()}
    install_hf_snapshot(
        repo, commit=commit, revision=revision, files=[(p, _etag(d)) for p, d in files.items()], tree=tree
    )
    return repo


BIG = os.urandom(2 << 20)  # over ls's cheap-check size: only a record or --check vouches for it


# -- HF cache layout ---------------------------------------------------------------------------------
def test_snapshot_links_refs_and_tree(settings: Settings) -> None:
    files = {"config.json": b"{}", "a/b/deep.bin": b"x" * 2000, "model.bin": BIG}
    repo = _hf_install(settings, "org/name", C1, files, "refs/pr/1")
    snap = repo / "snapshots" / C1
    assert os.readlink(snap / "config.json") == f"../../blobs/{_git_sha1(b'{}')}"
    assert os.readlink(snap / "a" / "b" / "deep.bin") == f"../../../../blobs/{_etag(b'x' * 2000)}"
    for p, data in files.items():
        assert (snap / p).read_bytes() == data
    assert (repo / "refs" / "refs" / "pr" / "1").read_bytes() == C1.encode()  # no newline
    tree = json.loads((repo / "trees" / f"{C1}.json").read_text())
    assert tree["format_version"] == 1 and set(tree["files"]) == set(files)
    # Idempotent, and a wrong link is replaced.
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to("../../blobs/elsewhere")
    _hf_install(settings, "org/name", C1, files, C1)
    assert os.readlink(snap / "config.json") == f"../../blobs/{_git_sha1(b'{}')}"


def test_snapshot_refuses_unsafe_layouts(settings: Settings, tmp_path: Path) -> None:
    repo = _hf_install(settings, "org/name", C1, {"config.json": b"{}"}, "main")
    with pytest.raises(StorageError, match="not an installed blob"):
        install_hf_snapshot(repo, commit=C1, revision="main", files=[("x.bin", "f" * 64)])
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "snapshots" / C1 / "sub").symlink_to(outside)
    with pytest.raises(StorageError, match="symlink"):
        install_hf_snapshot(repo, commit=C1, revision="main", files=[("sub/config.json", _git_sha1(b"{}"))])
    assert list(outside.iterdir()) == []
    with pytest.raises(StorageError):
        install_hf_snapshot(repo, commit="main", revision="main", files=[])


# -- ls ------------------------------------------------------------------------------------------------
def _ollama_install(models: Path, tag: str, blobs: dict[str, bytes]) -> Path:
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    entries = []
    for data in blobs.values():
        h = hashlib.sha256(data).hexdigest()
        (models / "blobs" / f"sha256-{h}").write_bytes(data)
        entries.append({"mediaType": "x", "digest": f"sha256:{h}", "size": len(data)})
    doc = {"schemaVersion": 2, "config": entries[0], "layers": entries[1:]}
    path = models / "manifests" / "registry.ollama.ai" / "library" / "tiny" / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(doc).encode())
    return path


def test_ls_statuses(settings: Settings) -> None:
    repo = _hf_install(settings, "org/name", C1, {"config.json": b"{}", "model.bin": BIG}, "main")
    _ollama_install(settings.ollama_models, "latest", {"config": b"cfg", "model": b"weights"})
    models = {m.ref: m for m in list_installed(settings)}
    hf = models["hf://org/name@main"]
    assert (hf.kind, hf.name, hf.files, hf.size) == ("hf", "org/name", 2, len(BIG) + 2)
    assert hf.status == "unverified"  # the big blob: nobody vouches for it without --check
    ol = models["ollama://registry.ollama.ai/library/tiny:latest"]
    assert (ol.name, ol.status, ol.files) == ("tiny:latest", "verified", 2)  # small: hashed at once
    assert {m.ref: m.status for m in list_installed(settings, check=True)}["hf://org/name@main"] == "verified"

    blob = repo / "blobs" / _etag(BIG)
    blob.write_bytes(bytes([BIG[0] ^ 0xFF]) + BIG[1:])
    assert {m.ref: m.status for m in list_installed(settings, check=True)}["hf://org/name@main"] == "corrupt"
    blob.unlink()
    (hf_now,) = [m for m in list_installed(settings) if m.kind == "hf"]
    assert hf_now.status == "incomplete" and "missing" in hf_now.detail


def test_ls_trusts_the_stores_install_records(settings: Settings) -> None:
    repo = _hf_install(settings, "org/name", C1, {"model.bin": BIG}, "main")
    rel = f"blobs/{_etag(BIG)}"
    st = (repo / rel).stat()
    record = repo / ".dsmirror" / "installed" / f"{'a' * 64}.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({rel: [st.st_size, st.st_mtime_ns, st.st_ino]}))
    (record.parent / f"{'a' * 64}.pieces.json").write_text(json.dumps({"files": [1, 2, 3]}))
    assert [m.status for m in list_installed(settings)] == ["verified"]
    os.utime(repo / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # changed since: no longer vouched for
    assert [m.status for m in list_installed(settings)] == ["unverified"]


# -- rm ------------------------------------------------------------------------------------------------
def test_rm_snapshot_keeps_blobs_other_snapshots_use(settings: Settings) -> None:
    shared, old, new = b"s" * 3000, b"o" * 3000, b"n" * 3000
    repo = _hf_install(settings, "org/name", C1, {"shared.bin": shared, "w.bin": old}, "v1")
    _hf_install(settings, "org/name", C2, {"shared.bin": shared, "w.bin": new}, "main")
    r = remove_installed(settings, "hf://org/name@v1")
    assert not (repo / "snapshots" / C1).exists() and not (repo / "refs" / "v1").exists()
    assert not (repo / "blobs" / _etag(old)).exists() and not (repo / "trees" / f"{C1}.json").exists()
    assert (repo / "blobs" / _etag(shared)).exists() and r.kept_shared == [repo / "blobs" / _etag(shared)]
    assert r.freed >= len(old)
    assert [m.ref for m in list_installed(settings)] == ["hf://org/name@main"]
    remove_installed(settings, "hf://org/name@main")
    assert not repo.exists()  # the last snapshot: the whole repo folder goes


def test_rm_never_follows_symlinks(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    repo = _hf_install(settings, "org/name", C1, {"config.json": b"{}"}, "main")
    snap = repo / "snapshots" / C1
    (snap / "evil-file").symlink_to(outside / "keep.txt")
    (snap / "evil-dir").symlink_to(outside)
    (repo / "blobs" / "evil").symlink_to(outside)
    remove_installed(settings, "hf://org/name")
    assert not repo.exists()
    assert (outside / "keep.txt").read_text() == "mine"

    linked = hf_repo_folder(settings.hf_cache, "org/linked")
    linked.symlink_to(outside)
    with pytest.raises(StorageError, match="symlink"):
        remove_installed(settings, "hf://org/linked")
    assert (outside / "keep.txt").exists()


def test_rm_ollama_keeps_shared_blobs(settings: Settings) -> None:
    models = settings.ollama_models
    a = _ollama_install(models, "a", {"config": b"cfg", "model": b"weights-a"})
    _ollama_install(models, "b", {"config": b"cfg", "model": b"weights-b"})
    r = remove_installed(settings, "tiny:a")
    assert not a.exists()
    blobs = {p.name for p in (models / "blobs").iterdir()}
    assert f"sha256-{hashlib.sha256(b'cfg').hexdigest()}" in blobs
    assert f"sha256-{hashlib.sha256(b'weights-a').hexdigest()}" not in blobs
    assert len(r.kept_shared) == 1
    remove_installed(settings, "ollama://registry.ollama.ai/library/tiny:b")
    assert (
        list((models / "blobs").iterdir()) == []
        and not (models / "manifests" / "registry.ollama.ai").exists()
    )
    with pytest.raises(UsageError):
        remove_installed(settings, "tiny:b")


def test_rm_refuses_while_a_pull_runs(settings: Settings) -> None:
    repo = _hf_install(settings, "org/name", C1, {"config.json": b"{}"}, "main")
    lock = repo / ".dsmirror" / "partial" / ("0" * 64) / "lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AlreadyInProgress):
            remove_installed(settings, "hf://org/name@main")
    finally:
        os.close(fd)
    remove_installed(settings, "hf://org/name@main")
    assert not repo.exists()


def test_dir_install_listed_and_removed(settings: Settings, tmp_path: Path) -> None:
    dest = tmp_path / "plain"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "a.bin").write_bytes(b"a" * 100)
    (dest / "b.json").write_bytes(b"{}")
    manifest = create_manifest(dest, name="plain-model")
    record_dir_install(settings, "plain-model", "dir", manifest, dest)
    (dest / "unrelated.txt").write_text("not ours")
    (found,) = [m for m in list_installed(settings) if m.kind == "dir"]
    assert (found.name, found.files, found.status, found.where) == ("plain-model", 2, "verified", dest)

    dry = remove_installed(settings, str(dest), dry_run=True)
    assert {p.name for p in dry.removed} >= {"a.bin", "b.json"} and (dest / "sub" / "a.bin").exists()
    remove_installed(settings, str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["unrelated.txt"]  # only what dsmirror put there
    assert [m for m in list_installed(settings) if m.kind == "dir"] == []


# -- CLI -----------------------------------------------------------------------------------------------
def test_cli_ls_and_rm(settings: Settings) -> None:
    _hf_install(settings, "org/name", C1, {"config.json": b"{}"}, "main")
    _ollama_install(settings.ollama_models, "latest", {"config": b"cfg"})
    runner = CliRunner()
    out = runner.invoke(app, ["ls"])
    assert out.exit_code == 0, out.output
    assert "hf://org/name@main" in out.output and "tiny:latest" in out.output
    js = runner.invoke(app, ["ls", "--json", "--check"])
    assert js.exit_code == 0 and '"status": "verified"' in js.output
    dry = runner.invoke(app, ["rm", "--dry-run", "tiny:latest"])
    assert dry.exit_code == 0 and "would remove" in dry.output
    assert (settings.ollama_models / "manifests").exists()
    done = runner.invoke(app, ["rm", "hf://org/name"])
    assert done.exit_code == 0 and "removed" in done.output
    assert not hf_repo_folder(settings.hf_cache, "org/name").exists()
