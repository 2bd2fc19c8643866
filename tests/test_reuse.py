"""Incremental updates: a new revision is pulled by reusing every local piece, fetching only changes.

Bytes fetched are counted where they leave: at the loopback mirrors (``bytes_served``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import Manifest, PullFinished
from dsmirror._bundle import export_source
from dsmirror._fetch.reuse import LocalReuse, PullDryRun
from dsmirror.testing import MirrorServer, write_random_tree

KiB = 1 << 10
PIECE = 64 * KiB
SIZES = {"config.json": 700, "a.bin": 3 * PIECE + 123, "sub/b.bin": 10 * PIECE + 5, "c.bin": 2 * PIECE}
CHANGED_PIECES = (2, 7)  # of sub/b.bin


def _write_manifest(root: Path, path: Path, name: str = "m") -> Manifest:
    m = dsmirror.create_manifest(root, name=name, piece_size=PIECE)
    m.write(path)
    return m


def _revisions(tmp_path: Path) -> tuple[Path, Path, Path, Path, int]:
    """rev1 and rev2 folders and manifests; rev2 changes all of a.bin and two pieces of sub/b.bin.

    Returns (rev1 root, rev1 manifest, rev2 root, rev2 manifest, bytes that differ).
    """
    r1, r2 = tmp_path / "rev1", tmp_path / "rev2"
    write_random_tree(r1, SIZES, seed=1)
    shutil.copytree(r1, r2)
    write_random_tree(r2, {"a.bin": SIZES["a.bin"]}, seed=2)  # the whole file changes
    with open(r2 / "sub" / "b.bin", "r+b") as fh:
        for k in CHANGED_PIECES:
            fh.seek(k * PIECE + 100)
            fh.write(b"revision two")
    m1 = tmp_path / "rev1.manifest.json"
    m2 = tmp_path / "rev2.manifest.json"
    _write_manifest(r1, m1)
    _write_manifest(r2, m2)
    changed = SIZES["a.bin"] + len(CHANGED_PIECES) * PIECE
    return r1, m1, r2, m2, changed


def _pull(manifest: Path, catalog: Path, dest: Path, home: Path, **options: Any) -> list[dsmirror.Event]:
    catalog_obj = dsmirror.load_default_catalog({}, [catalog], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")})
    opts = dsmirror.PullOptions(dest=dest, **options)
    return list(dsmirror.pull(str(manifest), catalog=catalog_obj, settings=settings, options=opts))


def _finished(events: list[dsmirror.Event]) -> PullFinished:
    return next(e for e in events if isinstance(e, PullFinished))


def _same_tree(a: Path, b: Path) -> None:
    for rel in SIZES:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def test_update_in_place_fetches_only_what_changed(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    r1, m1, r2, m2, changed = _revisions(tmp_path)
    dest = tmp_path / "dest"
    (old,) = start_mirrors(r1)
    _pull(m1, catalog_file([old]), dest, home)
    assert old.bytes_served == sum(SIZES.values())

    (new,) = start_mirrors(r2)
    # One connection: with several, the engine's tail race may ask for a last piece twice.
    events = _pull(m2, catalog_file([new]), dest, home, connections=1)
    fin = _finished(events)
    assert new.bytes_served == changed  # one whole file and two pieces: nothing else
    _same_tree(dest, r2)
    assert fin.reused_bytes == sum(SIZES.values()) - changed
    assert fin.downloaded_bytes == changed
    reuse = next(e for e in events if isinstance(e, LocalReuse))
    # unchanged files are recognised by the store itself; reuse fills in b.bin's unchanged pieces
    assert reuse.reused_bytes == SIZES["sub/b.bin"] - len(CHANGED_PIECES) * PIECE
    assert dsmirror.verify_tree(dsmirror.load_manifest(m2), dest).ok
    assert not list((dest / ".dsmirror" / "partial").glob("*/data/*"))
    # Both revisions have records in dest now; export picks the one whose files are in place.
    assert export_source(str(dest)).manifest.sha256 == dsmirror.load_manifest(m2).sha256


def test_new_revision_next_to_the_old_one_reuses_its_pieces(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    r1, m1, r2, m2, changed = _revisions(tmp_path)
    models = tmp_path / "models"
    (old,) = start_mirrors(r1)
    _pull(m1, catalog_file([old]), models / "v1", home)
    # c.bin moves away: its recorded location is gone, so it is fetched again
    os.rename(models / "v1" / "c.bin", models / "v1" / "renamed.bin")
    (new,) = start_mirrors(r2)
    events = _pull(m2, catalog_file([new]), models / "v2", home, connections=1)
    assert new.bytes_served == changed + SIZES["c.bin"]
    fin = _finished(events)
    assert fin.reused_bytes == sum(SIZES.values()) - changed - SIZES["c.bin"]
    reuse = next(e for e in events if isinstance(e, LocalReuse))
    assert set(reuse.by_origin) == {f"m in {models / 'v1'}"}
    _same_tree(models / "v2", r2)


def test_same_path_copy_without_any_record_is_used(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    r1, _, r2, m2, changed = _revisions(tmp_path)
    dest = tmp_path / "dest"
    shutil.copytree(r1, dest)  # a user's copy of revision 1, no .dsmirror at all
    (new,) = start_mirrors(r2)
    events = _pull(m2, catalog_file([new]), dest, home, connections=1)
    assert new.bytes_served == changed
    _same_tree(dest, r2)
    assert _finished(events).reused_bytes == sum(SIZES.values()) - changed


def test_a_damaged_local_copy_is_not_trusted(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    r1, m1, r2, m2, changed = _revisions(tmp_path)
    dest = tmp_path / "dest"
    (old,) = start_mirrors(r1)
    _pull(m1, catalog_file([old]), dest, home)
    # flip a byte of an unchanged piece of the old b.bin behind dsmirror's back (record now stale)
    with open(dest / "sub" / "b.bin", "r+b") as fh:
        fh.seek(4 * PIECE + 1)
        b = fh.read(1)
        fh.seek(4 * PIECE + 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    (new,) = start_mirrors(r2)
    _pull(m2, catalog_file([new]), dest, home, connections=1)
    assert new.bytes_served == changed + PIECE  # the damaged piece is fetched, not copied
    _same_tree(dest, r2)


def test_whole_file_reuse_for_files_without_piece_hashes(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    # A registry-style manifest (whole-file digests only) and an Ollama-store-like blob folder.
    root = tmp_path / "root"
    write_random_tree(root, {"w.bin": 5 * PIECE + 7, "x.bin": PIECE}, seed=3)
    full = dsmirror.create_manifest(root, name="w", piece_size=PIECE)
    files = tuple(dsmirror.FileEntry(f.path, f.size, f.sha256, ("",) * len(f.pieces)) for f in full.files)
    bare = dsmirror.parse_manifest(Manifest("w", PIECE, files).canonical_bytes)
    mpath = tmp_path / "w.manifest.json"
    bare.write(mpath)
    store = tmp_path / "usb-ollama"
    (store / "blobs").mkdir(parents=True)
    w = bare.file("w.bin")
    shutil.copy(root / "w.bin", store / "blobs" / f"sha256-{w.sha256}")
    (mirror,) = start_mirrors(root)
    events = _pull(mpath, catalog_file([mirror]), tmp_path / "dest", home, reuse_from=(store,), connections=1)
    assert mirror.bytes_served == PIECE  # only x.bin
    fin = _finished(events)
    assert fin.reused_bytes == w.size
    assert (tmp_path / "dest" / "w.bin").read_bytes() == (root / "w.bin").read_bytes()


def test_dry_run_reports_reuse_and_fetch_and_writes_nothing(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    r1, m1, r2, m2, changed = _revisions(tmp_path)
    dest = tmp_path / "dest"
    (old,) = start_mirrors(r1)
    _pull(m1, catalog_file([old]), dest, home)
    before = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    new = start_mirrors(r2, 2)
    events = _pull(m2, catalog_file(new), dest, home, dry_run=True)
    assert [type(e) for e in events] == [PullDryRun]
    plan = events[0]
    assert isinstance(plan, PullDryRun)
    assert plan.fetch_bytes == changed
    assert plan.present_bytes == SIZES["config.json"] + SIZES["c.bin"]  # unchanged files stay
    assert plan.present_bytes + plan.reuse_bytes == sum(SIZES.values()) - changed
    rows = {r.path: r for r in plan.files}
    assert rows["a.bin"].fetch_bytes == SIZES["a.bin"] and rows["a.bin"].fetch_from == ("m1", "m2")
    assert rows["sub/b.bin"].fetch_bytes == len(CHANGED_PIECES) * PIECE
    assert rows["sub/b.bin"].reuse_from == {
        "m in this folder": SIZES["sub/b.bin"] - len(CHANGED_PIECES) * PIECE
    }
    assert rows["c.bin"].fetch_bytes == 0
    assert sum(s.bytes_served for s in new) == 0
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == before


def test_no_reuse_fetches_everything_that_changed_files_hold(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    r1, m1, r2, m2, _ = _revisions(tmp_path)
    dest = tmp_path / "dest"
    (old,) = start_mirrors(r1)
    _pull(m1, catalog_file([old]), dest, home)
    (new,) = start_mirrors(r2)
    _pull(m2, catalog_file([new]), dest, home, reuse=False, connections=1)
    assert new.bytes_served == SIZES["a.bin"] + SIZES["sub/b.bin"]
    _same_tree(dest, r2)


def test_dry_run_cli(
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    run_cli: Callable[..., Any],
) -> None:
    r1, m1, r2, m2, changed = _revisions(tmp_path)
    dest = tmp_path / "dest"
    (old,) = start_mirrors(r1)
    _pull(m1, catalog_file([old]), dest, tmp_path / "home")
    (new,) = start_mirrors(r2)
    cat2 = catalog_file({"newmirror": new})
    r = run_cli("pull", m2, "--mirrors", cat2, "--no-default-catalog", "--dest", dest, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "a.bin" in r.stdout and "newmirror" in r.stdout and "this folder" in r.stdout
    assert new.bytes_served == 0
    r = run_cli("pull", m2, "--mirrors", cat2, "--no-default-catalog", "--dest", dest, "--connections", "1")
    assert r.returncode == 0, r.stderr
    assert new.bytes_served == changed
    assert "reused" in r.stdout


def test_an_unrelated_file_with_the_same_name_is_given_up_quickly(
    tmp_path: Path,
    home: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    _, _, r2, m2, _ = _revisions(tmp_path)
    other = tmp_path / "other"
    write_random_tree(other, {"sub/b.bin": SIZES["sub/b.bin"]}, seed=99)  # same name, other bytes
    (new,) = start_mirrors(r2)
    events = _pull(m2, catalog_file([new]), tmp_path / "dest", home, reuse_from=(other,), connections=1)
    reuse = next(e for e in events if isinstance(e, LocalReuse))
    assert reuse.reused_bytes == 0 and reuse.checked_bytes <= 8 * PIECE
    assert new.bytes_served == sum(SIZES.values())
