"""Torrents made from manifests: layout, piece map, pinning, errors; generated boundary cases.

The strongest check here reads every piece the way the swarm hands it to libtorrent (the manifest
piece plus the zero bytes of the pad file after it) and compares its SHA-1 with the v1 hash the
torrent carries, for both formats and for file sizes on, one below and one above piece boundaries.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt
import pytest

from conftest import Model, boundary_sizes
from dsmirror import InputError, IntegrityError, UsageError, create_manifest
from dsmirror._fetch.swarm.torrent import (
    check_torrent,
    create_torrent,
    load_torrent,
    magnet_for,
    parse_magnet,
    torrent_root_name,
    with_torrent_hashes,
)

KiB = 1 << 10


def _piece_bytes(model: Model, index: int, padded: int) -> bytes:
    p = model.manifest.pieces[index]
    with open(model.root / p.path, "rb") as fh:
        fh.seek(p.offset)
        data = fh.read(p.length)
    return data + bytes(padded - len(data))


@pytest.mark.parametrize(
    ("piece_size", "fmt"), list(itertools.product([16 * KiB, 32 * KiB, 64 * KiB], ["hybrid", "v1"]))
)
def test_pieces_map_onto_torrent_pieces(make_model: Callable[..., Model], piece_size: int, fmt: str) -> None:
    model = make_model(boundary_sizes(piece_size), piece_size=piece_size)
    t = create_torrent(model.manifest, model.root, format=fmt)
    assert t.format == fmt and t.piece_size == piece_size
    assert t.num_pieces == model.manifest.num_pieces  # file-aligned, no tail padding
    pm = check_torrent(model.manifest, t)
    assert not pm.missing_files and sorted(pm.to_torrent) == list(range(t.num_pieces))
    ti = t.info()
    for i in range(model.manifest.num_pieces):
        tp = pm.to_torrent[i]
        assert pm.padded[i] == ti.piece_size(tp)
        data = _piece_bytes(model, i, pm.padded[i])
        assert hashlib.sha1(data).digest() == bytes(ti.hash_for_piece(tp)), (i, tp)
    # The paths below the root are the manifest's, whatever order the torrent keeps them in.
    assert {f.path for f in t.content_files} == {f.path for f in model.manifest.files if f.size} | {
        f.path for f in model.manifest.files if not f.size
    }


@pytest.mark.parametrize("count", [1, 2, 5])
def test_file_counts_and_single_files(make_model: Callable[..., Model], count: int) -> None:
    ps = 16 * KiB
    sizes = {f"f{k}.bin": ps * (k + 1) + k for k in range(count)}
    model = make_model(sizes, piece_size=ps)
    for fmt in ("hybrid", "v1"):
        t = create_torrent(model.manifest, model.root, format=fmt)
        assert t.name == "test-model"
        assert {f.path for f in t.content_files} == set(sizes)
        check_torrent(model.manifest, t)


def test_reproducible_and_recorded_in_manifest(make_model: Callable[..., Model]) -> None:
    model = make_model({"a.bin": 100_000, "b/c.bin": 40_000}, piece_size=16 * KiB)
    one = create_torrent(model.manifest, model.root)
    two = create_torrent(model.manifest, model.root)
    assert one.data == two.data  # no creation date, no file times
    v1 = create_torrent(model.manifest, model.root, format="v1")
    assert v1.btih != one.btih and v1.btmh is None and one.btmh
    m = with_torrent_hashes(model.manifest, [one, v1])
    assert m.torrent == {"btih": one.btih, "btmh": one.btmh, "btih_v1only": v1.btih}
    assert check_torrent(m, one).pinned and check_torrent(m, v1).pinned
    assert not check_torrent(model.manifest, one).pinned
    # The recorded hashes survive the manifest's round trip and name the same swarm.
    magnet = magnet_for(m)
    assert magnet is not None and parse_magnet(magnet) == (one.btih, one.btmh)
    assert parse_magnet(one.magnet) == (one.btih, one.btmh)
    assert load_torrent(one.data).btmh == one.btmh


def test_a_torrent_the_manifest_does_not_record_is_refused(make_model: Callable[..., Model]) -> None:
    model = make_model({"a.bin": 50_000}, piece_size=16 * KiB)
    other = make_model({"a.bin": 50_000}, piece_size=16 * KiB, seed=1)
    theirs = create_torrent(other.manifest, other.root)
    mine = with_torrent_hashes(model.manifest, [create_torrent(model.manifest, model.root)])
    with pytest.raises(IntegrityError, match="not the one manifest"):
        check_torrent(mine, theirs)


def test_other_piece_size_size_or_unaligned_layout_is_refused(
    make_model: Callable[..., Model], tmp_path: Path
) -> None:
    model = make_model({"a.bin": 40_000, "b.bin": 30_000}, piece_size=16 * KiB)
    bigger = create_manifest(model.root, name="test-model", piece_size=32 * KiB)
    with pytest.raises(IntegrityError, match="pieces"):
        check_torrent(model.manifest, create_torrent(bigger, model.root))
    # A plain v1 torrent without pad files: b.bin starts inside a piece.
    files = [lt.create_file_entry(f"test-model/{n}", s) for n, s in (("a.bin", 40_000), ("b.bin", 30_000))]
    ct = lt.create_torrent(files, 16 * KiB, lt.create_torrent.v1_only)
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "test-model").symlink_to(model.root)
    lt.set_piece_hashes(ct, str(tmp_path / "h"))
    plain = load_torrent(bytes(lt.bencode(ct.generate())))
    with pytest.raises(IntegrityError, match=r"piece boundary|last piece"):
        check_torrent(model.manifest, plain)


def test_partial_torrent_lists_missing_files(make_model: Callable[..., Model]) -> None:
    model = make_model({"a.bin": 40_000, "b.bin": 30_000}, piece_size=16 * KiB)
    only_a = create_manifest(model.root, name="test-model", piece_size=16 * KiB, files=["a.bin"])
    pm = check_torrent(model.manifest, create_torrent(only_a, model.root))
    assert pm.missing_files == {1}
    assert all(pm.to_torrent[i] == -1 for i in model.manifest.file_piece_ranges[1])
    with pytest.raises(IntegrityError, match="lacks"):
        check_torrent(model.manifest, create_torrent(only_a, model.root), require_all_files=True)


def test_create_refuses_a_folder_that_differs(make_model: Callable[..., Model]) -> None:
    model = make_model({"a.bin": 40_000}, piece_size=16 * KiB)
    data = bytearray((model.root / "a.bin").read_bytes())
    data[20_000] ^= 0xFF
    (model.root / "a.bin").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="does not match"):
        create_torrent(model.manifest, model.root)
    (model.root / "a.bin").write_bytes(bytes(data[:100]))
    with pytest.raises(InputError, match="100 bytes"):
        create_torrent(model.manifest, model.root, verify=False)
    with pytest.raises(UsageError):
        create_torrent(model.manifest, model.root, format="v2")


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="not a valid torrent"):
        load_torrent(b"d4:infoi3ee")
    with pytest.raises(InputError):
        parse_magnet("magnet:?dn=nothing")
    assert torrent_root_name("deepseek-r1:7b") == "deepseek-r1-7b"
    assert torrent_root_name("../..") == "model"


def test_cli_manifest_and_torrent_create_and_check(
    make_model: Callable[..., Model], run_cli: Callable[..., object], tmp_path: Path
) -> None:
    import subprocess

    model = make_model({"a.bin": 70_000, "sub/b.bin": 20_000}, piece_size=16 * KiB)
    out = tmp_path / "m.manifest.json"
    r = run_cli(
        "manifest",
        "create",
        model.root,
        "-o",
        out,
        "--piece-size",
        "16KiB",
        "--torrent",
        tmp_path / "m.torrent",
    )
    assert isinstance(r, subprocess.CompletedProcess) and r.returncode == 0, r.stderr
    assert "magnet:?xt=urn:btih:" in r.stdout
    from dsmirror import load_manifest

    m = load_manifest(out)
    t = load_torrent(tmp_path / "m.torrent")
    assert m.torrent == {"btih": t.btih, "btmh": t.btmh}
    r = run_cli(
        "torrent",
        "create",
        out,
        model.root,
        "-o",
        tmp_path / "v1.torrent",
        "--torrent-format",
        "v1",
        "--update-manifest",
    )
    assert isinstance(r, subprocess.CompletedProcess) and r.returncode == 0, r.stderr
    assert set(load_manifest(out).torrent or {}) == {"btih", "btmh", "btih_v1only"}
    r = run_cli("torrent", "check", tmp_path / "v1.torrent", out)
    assert (
        isinstance(r, subprocess.CompletedProcess)
        and r.returncode == 0
        and "records its info-hash" in r.stdout
    )
    other = make_model({"a.bin": 70_000}, piece_size=16 * KiB, seed=5)
    r = run_cli("torrent", "create", other.manifest_path, other.root, "-o", tmp_path / "o.torrent")
    r = run_cli("torrent", "check", tmp_path / "o.torrent", out)
    assert isinstance(r, subprocess.CompletedProcess) and r.returncode == 3, r.stdout + r.stderr
    r = run_cli("torrent", "show", tmp_path / "v1.torrent")
    assert isinstance(r, subprocess.CompletedProcess) and "format      v1" in r.stdout
