"""The HF cache layout's one owner (``dsmirror._formats.hfcache``) and the install records format.

The cache is built by hand here as huggingface_hub lays it out; installing and listing through
``_install`` are in ``test_install.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dsmirror._formats import hfcache
from dsmirror._formats.installs import RECORD_VERSION, read_records, record_bytes, record_path
from dsmirror._formats.manifest import FileEntry, Manifest

C1 = "1" * 40
C2 = "2" * 40
LFS = "a" * 64
GIT = "b" * 40


@pytest.mark.parametrize("repo_id", ["org/name", "deepseek-ai/DeepSeek-R1", "a/b.c-d_e"])
def test_repo_folder_names(tmp_path: Path, repo_id: str) -> None:
    folder = hfcache.repo_folder(tmp_path, repo_id)
    assert folder == tmp_path / ("models--" + repo_id.replace("/", "--"))
    assert hfcache.repo_id_of(folder) == repo_id


@pytest.mark.parametrize("depth", range(4))
def test_link_targets_climb_to_blobs(tmp_path: Path, depth: int) -> None:
    path = "/".join([*(f"d{i}" for i in range(depth)), "f.bin"])
    target = hfcache.link_target(path, LFS)
    link = hfcache.snapshot_dir(tmp_path, C1) / path
    assert os.path.normpath(link.parent / target) == str(tmp_path / "blobs" / LFS)


def test_repo_folders_are_real_model_folders_only(tmp_path: Path) -> None:
    for name in ("models--b--x", "models--a--y", "datasets--c--z", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "models--file").write_text("")
    (tmp_path / "models--linked").symlink_to(tmp_path / "models--a--y")
    assert [p.name for p in hfcache.repo_folders(tmp_path)] == ["models--a--y", "models--b--x"]
    assert hfcache.repo_folders(tmp_path / "missing") == []


def test_refs(tmp_path: Path) -> None:
    refs = hfcache.refs_dir(tmp_path)
    (refs / "pr").mkdir(parents=True)
    (refs / "main").write_text(C1)
    (refs / "pr" / "1").write_text(C2 + "\n")  # a newline is tolerated
    (refs / "junk").write_text("not a commit")
    (refs / "bytes").write_bytes(b"\xff" * 40)
    (refs / "linked").symlink_to(refs / "main")  # never followed
    assert hfcache.read_refs(tmp_path) == {"main": C1, "pr/1": C2}
    assert hfcache.read_ref(tmp_path, "pr/1") == C2
    assert hfcache.read_ref(tmp_path, "linked") is None
    assert hfcache.read_ref(tmp_path, "junk") is None
    assert hfcache.resolve_revision(tmp_path, "main") == C1
    assert hfcache.resolve_revision(tmp_path, C2) == C2  # a commit names itself
    assert hfcache.resolve_revision(tmp_path, "nope") is None
    assert hfcache.read_refs(tmp_path / "missing") == {}


def test_snapshot_links_tell_blobs_from_elsewhere(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snap = hfcache.snapshot_dir(repo, C1)
    (snap / "sub").mkdir(parents=True)
    (snap / "a.bin").symlink_to(hfcache.link_target("a.bin", LFS))
    (snap / "sub" / "b.json").symlink_to(hfcache.link_target("sub/b.json", GIT))
    (snap / "real.txt").write_text("copied cache")
    (snap / "out").symlink_to(tmp_path / "elsewhere")
    (snap / "dirlink").symlink_to(snap / "sub", target_is_directory=True)
    assert list(hfcache.snapshot_links(repo, snap)) == [
        ("a.bin", f"blobs/{LFS}"),
        ("out", ""),
        ("real.txt", None),
        ("dirlink", ""),
        ("sub/b.json", f"blobs/{GIT}"),
    ]
    (repo / "snapshots" / C2).mkdir()
    (repo / "snapshots" / "linked").symlink_to(snap)
    assert hfcache.snapshots(repo) == [snap, repo / "snapshots" / C2]


def test_tree_json_is_huggingface_hubs_format() -> None:
    tree = {"b.json": {"size": 3, "blob_id": GIT}, "a.bin": {"size": 9, "blob_id": GIT, "lfs_sha256": LFS}}
    doc = json.loads(hfcache.tree_json(tree))
    assert doc["format_version"] == hfcache.TREE_FORMAT_VERSION == 1
    assert list(doc["files"]) == ["a.bin", "b.json"]
    assert doc["files"]["a.bin"] == tree["a.bin"]


@pytest.mark.parametrize(("name", "ok"), [(C1, True), (LFS, True), ("A" * 40, False), ("1" * 39, False)])
def test_etags_and_commits(name: str, ok: bool) -> None:
    assert hfcache.is_etag(name) is ok
    assert hfcache.is_commit(name) is (ok and len(name) == 40)


def test_install_records(tmp_path: Path) -> None:
    m = Manifest("demo", 1 << 20, (FileEntry("a.bin", 1, "c" * 64, ("d" * 64,)),), None, {})
    dest = tmp_path / "dest"
    path = record_path(tmp_path / "state", dest, m.name)
    assert path.parent == tmp_path / "state" / "installs"
    assert path != record_path(tmp_path / "state", dest, "other")
    path.parent.mkdir(parents=True)
    path.write_bytes(record_bytes("demo:1b", "dir", m, dest, [("manifests/x", 2, "e" * 64)]))
    (path.parent / "old.json").write_text(json.dumps({"version": RECORD_VERSION + 1}))
    (path.parent / "bad.json").write_text("{")
    ((p, doc),) = read_records(tmp_path / "state")
    assert p == path
    assert doc == {
        "version": 1,
        "format": "dir",
        "ref": "demo:1b",
        "name": "demo",
        "dest": str(dest),
        "manifest_sha256": m.sha256,
        "files": [["a.bin", 1, "c" * 64], ["manifests/x", 2, "e" * 64]],
    }
    assert list(read_records(tmp_path / "missing")) == []
