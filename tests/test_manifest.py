"""The piece manifest: layout of pieces over files, identity, strict validation, create and verify.

Boundary cases are generated the way torf's tests do it: file sizes exactly on a piece boundary,
one byte under, one byte over, empty and one byte, over several piece sizes and file counts, and
every piece is checked against hashlib on the file's own bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import InputError, Manifest, ManifestError, ManifestMismatch
from dsmirror.testing import write_random_tree

KiB = 1 << 10
MiB = 1 << 20

PIECE_SIZES = [16 * KiB, 64 * KiB, 1 * MiB]
FILE_COUNTS = [1, 2, 4, 7]


def _sizes(piece_size: int, count: int) -> dict[str, int]:
    """``count`` files cycling through on / under / over a boundary, empty, one byte, multi-piece."""
    deltas = [
        piece_size,
        piece_size - 1,
        piece_size + 1,
        0,
        1,
        2 * piece_size,
        3 * piece_size - 1,
    ]
    # Names do not sort like the sizes, and some sit in folders.
    names = ["m.bin", "a/z.bin", "b.bin", "a/b/empty.bin", "zz.bin", "a/c.bin", "c.bin"]
    return {names[i]: deltas[i] for i in range(count)}


def _expected_pieces(data: bytes, piece_size: int) -> list[str]:
    return [hashlib.sha256(data[o : o + piece_size]).hexdigest() for o in range(0, len(data), piece_size)]


@pytest.mark.parametrize("count", FILE_COUNTS)
@pytest.mark.parametrize("piece_size", PIECE_SIZES, ids=lambda p: f"{p // KiB}KiB")
def test_pieces_follow_file_boundaries(tmp_path: Path, piece_size: int, count: int) -> None:
    sizes = _sizes(piece_size, count)
    write_random_tree(tmp_path / "m", sizes, seed=piece_size + count)
    m = dsmirror.create_manifest(tmp_path / "m", name="boundaries", piece_size=piece_size)

    assert m.piece_size == piece_size
    assert sorted(f.path for f in m.files) == sorted(sizes)
    assert m.total_size == sum(sizes.values())
    next_index = 0
    for fi, f in enumerate(m.files):
        data = (tmp_path / "m" / f.path).read_bytes()
        assert f.size == sizes[f.path] == len(data)
        assert f.sha256 == hashlib.sha256(data).hexdigest()
        assert list(f.pieces) == _expected_pieces(data, piece_size)
        assert len(f.pieces) == -(-f.size // piece_size)  # ceil; 0 for an empty file

        # Every file starts on a fresh piece; its pieces tile exactly its bytes.
        rng = m.file_piece_ranges[fi]
        assert rng == range(next_index, next_index + len(f.pieces))
        next_index = rng.stop
        covered = 0
        for k, gi in enumerate(rng):
            p = m.pieces[gi]
            assert (p.index, p.file_index, p.path) == (gi, fi, f.path)
            assert p.offset == k * piece_size == covered
            assert 0 < p.length <= piece_size
            assert p.offset + p.length <= f.size  # a piece never spans two files
            assert p.length == piece_size or gi == rng.stop - 1  # only the last piece may be short
            assert p.sha256 == hashlib.sha256(data[p.offset : p.offset + p.length]).hexdigest()
            covered += p.length
        assert covered == f.size
    assert next_index == m.num_pieces == len(m.pieces)


@pytest.mark.parametrize("piece_size", PIECE_SIZES, ids=lambda p: f"{p // KiB}KiB")
def test_identity_is_sha256_of_written_bytes(tmp_path: Path, piece_size: int) -> None:
    write_random_tree(tmp_path / "m", _sizes(piece_size, 4))
    m = dsmirror.create_manifest(tmp_path / "m", name="ident", piece_size=piece_size, meta={"rev": "abc"})
    out = tmp_path / "ident.manifest.json"
    m.write(out)
    raw = out.read_bytes()

    assert hashlib.sha256(raw).hexdigest() == m.sha256
    assert raw == m.canonical_bytes
    assert not raw.endswith(b"\n")
    # Canonical: sorted keys, no insignificant white space.
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    if shutil.which("sha256sum"):
        printed = subprocess.run(["sha256sum", str(out)], capture_output=True, text=True, check=True).stdout
        assert printed.split()[0] == m.sha256

    again = dsmirror.load_manifest(out)
    assert again == m
    assert again.sha256 == m.sha256
    # Pinning the identity is accepted, in either case of hex digits.
    assert dsmirror.load_manifest(out, expected_sha256=m.sha256.upper()).sha256 == m.sha256


def test_identity_changes_with_any_field(tmp_path: Path) -> None:
    write_random_tree(tmp_path / "m", {"a.bin": 40_000})
    base = dsmirror.create_manifest(tmp_path / "m", name="x", piece_size=16 * KiB)
    variants = {
        "name": Manifest("y", base.piece_size, base.files),
        "meta": Manifest("x", base.piece_size, base.files, meta={"k": "v"}),
        "size": dsmirror.parse_manifest(
            json.dumps(_edit(base.to_dict(), _set("a.bin", size=40_001))).encode()
        ),
    }
    for why, other in variants.items():
        assert other.sha256 != base.sha256, why


def test_pin_mismatch_is_refused(tmp_path: Path) -> None:
    write_random_tree(tmp_path / "m", {"a.bin": 70_000})
    m = dsmirror.create_manifest(tmp_path / "m", piece_size=16 * KiB)
    path = tmp_path / "m.json"
    m.write(path)
    wrong = hashlib.sha256(b"some other manifest").hexdigest()

    with pytest.raises(ManifestMismatch) as info:
        dsmirror.load_manifest(path, expected_sha256=wrong)
    assert info.value.expected == wrong
    assert info.value.actual == m.sha256
    assert info.value.exit_code == 3
    with pytest.raises(ManifestMismatch):
        dsmirror.parse_manifest(m.canonical_bytes, expected_sha256=wrong)


def test_cli_create_show_and_sha256sum_agree(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    folder = tmp_path / "cli-model"
    write_random_tree(folder, _sizes(64 * KiB, 5))
    out = tmp_path / "cli.manifest.json"

    r = run_cli("manifest", "create", folder, "-o", out, "--piece-size", "64KiB")
    assert r.returncode == 0, r.stderr
    lib = dsmirror.create_manifest(folder, piece_size=64 * KiB, sha1=True)  # as the CLI makes it
    assert out.read_bytes() == lib.canonical_bytes
    assert hashlib.sha256(out.read_bytes()).hexdigest() == lib.sha256
    assert lib.name == "cli-model"

    shown = run_cli("manifest", "show", out, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["manifest_sha256"] == lib.sha256


# -- strict validation ------------------------------------------------------------------------------
def _edit(d: dict[str, Any], change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    change(d)
    return d


@pytest.fixture(scope="module")
def valid_dict(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("valid")
    write_random_tree(root, {"a.bin": 40_000, "dir/b.bin": 16 * KiB, "e.bin": 0})
    return dsmirror.create_manifest(root, name="valid", piece_size=16 * KiB).to_dict()


def _file(path: str, size: int = 10, pieces: list[str] | None = None) -> dict[str, Any]:
    return {
        "path": path,
        "size": size,
        "sha256": "a" * 64,
        "pieces": pieces if pieces is not None else ["b" * 64],
    }


def _f(d: dict[str, Any], path: str) -> dict[str, Any]:
    """The file entry of ``path`` in manifest dict ``d``."""
    return next(f for f in d["files"] if f["path"] == path)


def _set(which: str, /, **fields: Any) -> Callable[[dict[str, Any]], object]:
    return lambda d: _f(d, which).update(fields)


def _append(*files: dict[str, Any]) -> Callable[[dict[str, Any]], object]:
    return lambda d: d["files"].extend(files)


UNSAFE: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "absolute path": (_set("a.bin", path="/etc/passwd"), "absolute"),
    "windows drive": (_set("a.bin", path="C:/Windows/x.bin"), "absolute"),
    "dotdot first": (_set("a.bin", path="../outside.bin"), "'..'"),
    "dotdot inside": (_set("dir/b.bin", path="dir/../../outside.bin"), "'..'"),
    "dotdot last": (_set("dir/b.bin", path="dir/.."), "'..'"),
    "dot component": (_set("a.bin", path="./a.bin"), "'.'"),
    "empty component": (_set("dir/b.bin", path="dir//b.bin"), "empty"),
    "trailing slash": (_set("dir/b.bin", path="dir/"), "empty"),
    "empty path": (_set("a.bin", path=""), "non-empty"),
    "backslash": (_set("a.bin", path="..\\a.bin"), "backslash"),
    "nul byte": (_set("a.bin", path="a\x00.bin"), "NUL"),
    "private folder": (_set("a.bin", path=".dsmirror/a.bin"), ".dsmirror"),
    "path not a string": (_set("a.bin", path=7), "string"),  # type: ignore[arg-type]
    "duplicate path": (_append(_file("a.bin")), "twice"),
    "case duplicate": (_append(_file("A.BIN")), "case"),
    "case duplicate in folder": (_append(_file("DIR/b.bin")), "case"),
    "file is also a folder": (_append(_file("a.bin/inner.bin")), "both a file and a folder"),
    "folder is also a file": (_append(_file("dir")), "both a file and a folder"),
    "absurd size": (_set("e.bin", size=1 << 51), "plausible size"),
    "negative size": (_set("e.bin", size=-1), "plausible size"),
    "boolean size": (_set("e.bin", size=True), "plausible size"),
    "float size": (_set("e.bin", size=10.0), "plausible size"),
    "one piece too many": (lambda d: _f(d, "a.bin")["pieces"].append("c" * 64), "piece hashes"),
    "one piece too few": (lambda d: _f(d, "a.bin")["pieces"].pop(), "piece hashes"),
    "pieces for an empty file": (_set("e.bin", pieces=["c" * 64]), "piece hashes"),
    "no pieces for a file": (_set("dir/b.bin", pieces=[]), "piece hashes"),
    "size grown under the pieces": (_set("dir/b.bin", size=16 * KiB + 1), "piece hashes"),
    "uppercase piece hex": (_set("dir/b.bin", pieces=["C" * 64]), "bad digest"),
    "short piece hex": (_set("dir/b.bin", pieces=["c" * 63]), "bad digest"),
    "non-hex piece": (_set("dir/b.bin", pieces=["g" * 64]), "bad digest"),
    "piece not a string": (_set("dir/b.bin", pieces=[1]), "bad digest"),
    "bad file digest": (_set("a.bin", sha256="xyz"), "sha256"),
    "uppercase file digest": (_set("a.bin", sha256="A" * 64), "sha256"),
    "pieces not a list": (_set("dir/b.bin", pieces="c" * 64), "list or null"),
    "unknown top field": (lambda d: d.update(extra=1), "unknown manifest field"),
    "unknown file field": (_set("a.bin", mode=0o755), "exactly path, size, sha256, pieces"),
    "missing file field": (lambda d: _f(d, "a.bin").pop("sha256"), "exactly path, size, sha256, pieces"),
    "wrong format": (lambda d: d.update(format="torrent"), "not a dsmirror manifest"),
    "missing format": (lambda d: d.pop("format"), "not a dsmirror manifest"),
    "future version": (lambda d: d.update(version=2), "version"),
    "version as string": (lambda d: d.update(version="1"), "version"),
    "piece size not a power of two": (lambda d: d.update(piece_size=3 * 16 * KiB), "power of two"),
    "piece size too small": (lambda d: d.update(piece_size=8 * KiB), "power of two"),
    "piece size too large": (lambda d: d.update(piece_size=2 << 30), "power of two"),
    "empty name": (lambda d: d.update(name=""), "name"),
    "name too long": (lambda d: d.update(name="n" * 201), "name"),
    "files not a list": (lambda d: d.update(files={}), "files must be a list"),
    "file not an object": (lambda d: d["files"].append("a.bin"), "must be an object"),
    "torrent bad hash": (lambda d: d.update(torrent={"btih": "zz"}), "torrent"),
    "meta not an object": (lambda d: d.update(meta=[1]), "meta"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_or_malformed_manifest_is_rejected(valid_dict: dict[str, Any], case: str) -> None:
    change, fragment = UNSAFE[case]
    data = json.dumps(_edit(valid_dict, change)).encode()
    with pytest.raises(ManifestError) as info:
        dsmirror.parse_manifest(data, origin="bad.json")
    assert isinstance(info.value, InputError) and info.value.exit_code == 7
    assert fragment in str(info.value)
    assert str(info.value).startswith("bad.json: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'"manifest"', b"\xff\xfe{}", b"null"],
    ids=["empty", "truncated", "array", "string", "not utf8", "null"],
)
def test_not_a_manifest_at_all(data: bytes) -> None:
    with pytest.raises(ManifestError):
        dsmirror.parse_manifest(data)


def test_valid_dict_itself_parses(valid_dict: dict[str, Any]) -> None:
    # Guards the table above: each case fails because of its one change only.
    m = dsmirror.parse_manifest(json.dumps(valid_dict).encode())
    assert [f.path for f in m.files] == ["a.bin", "e.bin", "dir/b.bin"]


def test_pieces_null_is_allowed(valid_dict: dict[str, Any]) -> None:
    d = _edit(valid_dict, _set("a.bin", pieces=None))
    m = dsmirror.parse_manifest(json.dumps(d).encode())
    f = m.files[0]
    assert f.size == 40_000 and len(f.pieces) == 3
    assert not m.has_piece_hashes
    pieces = [m.pieces[i] for i in m.file_piece_ranges[0]]
    assert [p.sha256 for p in pieces] == ["", "", ""]
    assert [p.length for p in pieces] == [16 * KiB, 16 * KiB, 40_000 - 32 * KiB]
    # Null survives the round trip and is part of the identity.
    assert m.to_dict()["files"][0]["pieces"] is None
    assert dsmirror.parse_manifest(m.canonical_bytes) == m
    assert m.sha256 != dsmirror.parse_manifest(json.dumps(valid_dict).encode()).sha256


def test_pieces_null_with_absurd_piece_count_is_rejected_cleanly(tmp_path: Path) -> None:
    # 2**50 bytes in 16 KiB pieces is 2**36 pieces: far above MAX_PIECES. The check must come
    # before anything is allocated per piece. Run in a child with a 1 GiB address-space limit so a
    # regression cannot hurt the machine that runs the tests.
    forged = {
        "format": "dsmirror-manifest",
        "version": 1,
        "name": "forged",
        "piece_size": 16 * KiB,
        "files": [{"path": "a.bin", "size": 1 << 50, "sha256": "a" * 64, "pieces": None}],
    }
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    code = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        import dsmirror
        try:
            dsmirror.load_manifest(__import__("pathlib").Path({str(path)!r}))
        except dsmirror.ManifestError as exc:
            print("ManifestError:", exc)
        except BaseException as exc:
            print(type(exc).__name__)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("ManifestError:"), r.stdout + r.stderr
    assert "too many pieces" in r.stdout


@pytest.mark.parametrize("name", ["../escaped", "/absolute/elsewhere", "a/../../b"])
def test_manifest_name_cannot_move_the_default_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, valid_dict: dict[str, Any], name: str
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(_edit(valid_dict, lambda d: d.update(name=name))))
    catalog = tmp_path / "c.yaml"
    catalog.write_text("version: 1\nmirrors:\n  - name: m\n    kind: http\n    url: http://127.0.0.1:9/\n")
    cat = dsmirror.load_default_catalog({}, [catalog], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path)})
    try:
        plan = dsmirror.resolve(str(manifest), cat, settings, dsmirror.PullOptions())
    except ManifestError:
        return  # refusing such a name is a fine answer too
    assert plan.dest.resolve().is_relative_to(cwd.resolve()), plan.dest


# -- create ---------------------------------------------------------------------------------------
def test_create_refuses_symlinked_file(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_random_tree(root, {"a.bin": 100})
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "link.bin").symlink_to(tmp_path / "secret")
    with pytest.raises(ManifestError, match=r"link\.bin"):
        dsmirror.create_manifest(root, piece_size=16 * KiB)


def test_create_refuses_symlinked_folder(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_random_tree(root, {"a.bin": 100})
    write_random_tree(tmp_path / "elsewhere", {"x.bin": 100})
    (root / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ManifestError, match="symlink"):
        dsmirror.create_manifest(root, piece_size=16 * KiB)


def test_create_refuses_special_files(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_random_tree(root, {"a.bin": 100})
    os.mkfifo(root / "pipe")
    with pytest.raises(ManifestError, match="not a regular file"):
        dsmirror.create_manifest(root, piece_size=16 * KiB)


def test_create_skips_private_area_and_refuses_non_folder(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_random_tree(root, {"a.bin": 100, ".dsmirror/partial/x/journal": 44})
    m = dsmirror.create_manifest(root, piece_size=16 * KiB)
    assert [f.path for f in m.files] == ["a.bin"]
    with pytest.raises(ManifestError):
        dsmirror.create_manifest(root / "a.bin", piece_size=16 * KiB)


def test_cli_create_with_symlink_is_one_line_error(
    tmp_path: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    root = tmp_path / "m"
    write_random_tree(root, {"a.bin": 100})
    (root / "link.bin").symlink_to(root / "a.bin")
    r = run_cli("manifest", "create", root, "-o", tmp_path / "out.json", "--piece-size", "16KiB")
    assert r.returncode == 7
    one_line_error(r, "link.bin")
    assert not (tmp_path / "out.json").exists()


# -- verify ---------------------------------------------------------------------------------------
VERIFY_PS = 16 * KiB
VERIFY_SIZES = {"a.bin": 3 * VERIFY_PS + 5, "b/c.bin": VERIFY_PS, "d.bin": VERIFY_PS - 1, "e.bin": 0}


@pytest.fixture
def verify_model(tmp_path: Path) -> tuple[Path, Manifest]:
    root = tmp_path / "vm"
    write_random_tree(root, VERIFY_SIZES, seed=3)
    return root, dsmirror.create_manifest(root, name="vm", piece_size=VERIFY_PS)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


# (file, byte offset) -> index of the piece within that file that must be reported
FLIPS = [
    ("a.bin", 0, 0),
    ("a.bin", VERIFY_PS - 1, 0),
    ("a.bin", VERIFY_PS, 1),
    ("a.bin", 3 * VERIFY_PS, 3),
    ("a.bin", 3 * VERIFY_PS + 4, 3),
    ("b/c.bin", VERIFY_PS - 1, 0),
    ("d.bin", 0, 0),
    ("d.bin", VERIFY_PS - 2, 0),
]


def test_verify_clean_tree(verify_model: tuple[Path, Manifest]) -> None:
    root, m = verify_model
    report = dsmirror.verify_tree(m, root)
    assert report.ok
    assert report.checked_bytes == m.total_size


@pytest.mark.parametrize(("rel", "offset", "k"), FLIPS)
def test_verify_reports_the_exact_bad_piece(
    verify_model: tuple[Path, Manifest], rel: str, offset: int, k: int
) -> None:
    root, m = verify_model
    _flip(root / rel, offset)
    report = dsmirror.verify_tree(m, root)
    fi = [f.path for f in m.files].index(rel)
    expected = m.pieces[m.file_piece_ranges[fi][k]]
    assert report.bad_pieces == [expected]
    assert expected.offset <= offset < expected.offset + expected.length
    assert report.bad_files == [rel]
    assert not report.missing_files and not report.wrong_size


def test_verify_missing_and_wrong_size(verify_model: tuple[Path, Manifest]) -> None:
    root, m = verify_model
    (root / "d.bin").unlink()
    with open(root / "b/c.bin", "ab") as fh:
        fh.write(b"x")
    report = dsmirror.verify_tree(m, root)
    assert report.missing_files == ["d.bin"]
    assert report.wrong_size == ["b/c.bin"]
    assert not report.bad_pieces and not report.ok


def test_verify_does_not_follow_a_symlinked_file(verify_model: tuple[Path, Manifest], tmp_path: Path) -> None:
    root, m = verify_model
    good = tmp_path / "good-copy.bin"
    shutil.copy(root / "d.bin", good)
    (root / "d.bin").unlink()
    (root / "d.bin").symlink_to(good)
    assert dsmirror.verify_tree(m, root).missing_files == ["d.bin"]


def test_cli_verify_names_the_bad_piece(
    verify_model: tuple[Path, Manifest],
    tmp_path: Path,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    root, m = verify_model
    mpath = tmp_path / "vm.json"
    m.write(mpath)
    ok = run_cli("verify", mpath, root)
    assert ok.returncode == 0, ok.stderr

    _flip(root / "a.bin", VERIFY_PS + 7)
    bad = run_cli("verify", mpath, root)
    assert bad.returncode == 3
    piece = m.pieces[m.file_piece_ranges[0][1]]
    assert (
        f"bad piece   {piece.index} (a.bin bytes {piece.offset}-{piece.offset + piece.length - 1})"
        in bad.stdout
    )
    assert "bad file    a.bin" in bad.stdout
    one_line_error(bad, "do not match")
