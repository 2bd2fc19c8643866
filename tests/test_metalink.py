"""Tests of the Metalink v4 export (`dsmirror._formats.metalink`, ``dsmirror manifest export --meta4``).

The document is parsed back and checked element by element, and then handed to the real aria2c,
which downloads a generated model from two loopback mirrors with it (skipped without aria2c).

What aria2c (1.36/1.37) does with a piece that fails its ``<pieces>`` digest, observed here:
it logs ``Invalid checksum index=K`` and ``Download aborted. URI=...`` (errorCode 1), drops that URI
for that file and fetches the piece from the file's next URI; the final files are correct and the
exit code is 0. When every URI of a file sends bad bytes, aria2c exits 1 and leaves the verified
part of the file under its final name with a ``.aria2`` control file beside it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from dsmirror._formats.catalog import Mirror, plain_url_for
from dsmirror._formats.manifest import FileEntry, Manifest, load_manifest
from dsmirror._formats.metalink import METALINK_NS, to_meta4
from dsmirror._verify.tree import create_manifest
from dsmirror.cli import main
from dsmirror.testing import Faults, MirrorServer, write_random_tree

NS = {"m": METALINK_NS}
PIECE = 1 << 16
ARIA2C = shutil.which("aria2c")
needs_aria2 = pytest.mark.skipif(ARIA2C is None, reason="aria2c is not installed")


def boundary_sizes(piece: int) -> dict[str, int]:
    """Files exactly on, one under and one over 1, 2 and 3 pieces, plus an empty file."""
    sizes = {"empty.bin": 0, "one-byte.bin": 1}
    for k in (1, 2, 3):
        for delta, label in ((-1, "under"), (0, "exact"), (1, "over")):
            sizes[f"shards/{k}-{label}.bin"] = k * piece + delta
    # Names a URL must quote: a space, a percent sign, non-ASCII letters.
    sizes["odd names/naïve 100%.json"] = 123
    return sizes


def manifest_of(files: list[tuple[str, int, bool]], piece_size: int = PIECE) -> Manifest:
    """A manifest with fake digests: (path, size, has piece hashes) per file."""
    entries = []
    for i, (path, size, hashed) in enumerate(files):
        n = -(-size // piece_size)
        pieces = tuple(hashlib.sha256(f"{i}:{k}".encode()).hexdigest() if hashed else "" for k in range(n))
        entries.append(FileEntry(path, size, hashlib.sha256(path.encode()).hexdigest(), pieces))
    return Manifest("model", piece_size, tuple(entries))


def parse(doc: bytes) -> ET.Element:
    assert doc.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.fromstring(doc)
    assert root.tag == f"{{{METALINK_NS}}}metalink"
    return root


# -- structure --------------------------------------------------------------------------------------


def test_document_structure_round_trips() -> None:
    m = manifest_of([("a.bin", 3 * PIECE + 1, True), ("sub/b.json", 10, True), ("empty", 0, True)])
    root = parse(to_meta4(m, [("http://127.0.0.2:8000/m/", "cn", 1), ("http://127.0.0.3:9000/", "us", 5)]))
    assert root.findtext("m:generator", namespaces=NS) == "dsmirror"
    files = root.findall("m:file", NS)
    assert [f.get("name") for f in files] == ["a.bin", "sub/b.json", "empty"]
    for el, entry in zip(files, m.files, strict=True):
        assert el.findtext("m:size", namespaces=NS) == str(entry.size)
        whole = el.findall("m:hash", NS)
        assert [(h.get("type"), h.text) for h in whole] == [("sha-256", entry.sha256)]
        pieces = el.find("m:pieces", NS)
        if entry.size == 0:
            assert pieces is None
        else:
            assert pieces is not None
            assert pieces.get("length") == str(PIECE)
            assert pieces.get("type") == "sha-256"
            assert [h.text for h in pieces.findall("m:hash", NS)] == list(entry.pieces)
        urls = el.findall("m:url", NS)
        assert [(u.get("location"), u.get("priority")) for u in urls] == [("cn", "1"), ("us", "5")]
        assert [u.text for u in urls] == [
            f"http://127.0.0.2:8000/m/{entry.path}",
            f"http://127.0.0.3:9000/{entry.path}",
        ]


def test_pieces_are_left_out_without_piece_hashes() -> None:
    m = manifest_of([("hashed.bin", PIECE + 1, True), ("whole-only.bin", PIECE + 1, False)])
    files = parse(to_meta4(m, [("http://127.0.0.1/", "global", 1)])).findall("m:file", NS)
    assert files[0].find("m:pieces", NS) is not None
    assert files[1].find("m:pieces", NS) is None
    assert files[1].findtext("m:hash", namespaces=NS) == m.files[1].sha256


@pytest.mark.parametrize(
    "path",
    ["with space.bin", "100%.json", "naïve/ünïcode.txt", "q?#&=.bin", "a+b;c,d.bin", "<tag>&'\".bin"],
)
def test_paths_are_quoted_as_dsmirror_requests_them(path: str) -> None:
    m = manifest_of([(path, 5, True)])
    base = "http://127.0.0.1:8000/mirror/"
    el = parse(to_meta4(m, [(base, "global", 1)])).find("m:file", NS)
    assert el is not None
    assert el.get("name") == path  # XML escaping is undone by the parser
    url = el.findtext("m:url", namespaces=NS)
    assert url == plain_url_for(base)(m.files[0])
    assert url is not None and url.startswith(base)
    tail = url[len(base) :]
    assert re.fullmatch(r"(?:[A-Za-z0-9_.~/-]|%[0-9A-F]{2})+", tail)
    assert unquote(tail) == path


def test_catalog_mirrors_only_enabled_http_with_country_locations_and_clamped_priority() -> None:
    mirrors = [
        Mirror("official", "hf", "https://huggingface.co", official=True, priority=1),
        Mirror("near", "http", "http://127.0.0.2:1/", region="cn", priority=3),
        Mirror("off", "http", "http://127.0.0.4:1/", enabled=False),
        Mirror("far", "http", "http://127.0.0.3:1/base", region="global", priority=5_000_000),
        Mirror("lan", "http", "http://127.0.0.5:1/", region="lan", priority=2),
        Mirror("swarm", "bittorrent", "magnet:?xt=urn:btih:" + "0" * 40),
    ]
    m = manifest_of([("x.bin", 1, True)])
    urls = parse(to_meta4(m, mirrors)).findall("m:file/m:url", NS)
    assert [(u.text, u.get("location"), u.get("priority")) for u in urls] == [
        ("http://127.0.0.2:1/x.bin", "cn", "3"),
        ("http://127.0.0.3:1/base/x.bin", None, "999999"),  # no country; RFC maximum
        ("http://127.0.0.5:1/x.bin", None, "2"),
    ]


# -- the command ------------------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["dsmirror", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    code = exit_.value.code
    return code if isinstance(code, int) else 1


def flat(text: str) -> str:
    """Terminal output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_cli_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "model"
    write_random_tree(src, {"a.bin": PIECE + 1, "b.json": 7})
    create_manifest(src, piece_size=PIECE).write(tmp_path / "m.json")
    catalog = tmp_path / "mirrors.yaml"
    catalog.write_text(
        "version: 1\nmirrors:\n"
        "  - {name: one, kind: http, url: 'http://127.0.0.2:8000/', region: cn, priority: 2}\n"
        "  - {name: hf, kind: hf, url: 'https://huggingface.co'}\n"
    )
    out = tmp_path / "out" / "m.meta4"
    assert run_cli(monkeypatch, "manifest", "export", str(tmp_path / "m.json"), "--meta4",
                   "--mirrors", str(catalog), "-o", str(out)) == 0  # fmt: skip
    assert "Metalink v4, 2 files" in flat(capsys.readouterr().out)
    m = load_manifest(tmp_path / "m.json")
    assert out.read_bytes() == to_meta4(m, [("http://127.0.0.2:8000/", "cn", 2)])

    no_http = tmp_path / "hf-only.yaml"
    no_http.write_text("version: 1\nmirrors:\n  - {name: hf, kind: hf, url: 'https://huggingface.co'}\n")
    args = ["manifest", "export", str(tmp_path / "m.json"), "-o", str(tmp_path / "x.meta4")]
    assert run_cli(monkeypatch, *args, "--meta4", "--mirrors", str(no_http)) == 2
    assert "no enabled mirror of kind http" in flat(capsys.readouterr().err)
    assert run_cli(monkeypatch, *args, "--mirrors", str(catalog)) == 2  # no format chosen
    assert "--meta4" in flat(capsys.readouterr().err)
    assert not (tmp_path / "x.meta4").exists()


# -- interop with the real aria2c -------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("model")
    write_random_tree(root, boundary_sizes(PIECE), seed=7)
    return root, create_manifest(root, piece_size=PIECE, name="boundary")


@pytest.fixture
def mirrors(model: tuple[Path, Manifest]) -> Iterator[tuple[MirrorServer, MirrorServer]]:
    root, _ = model
    with MirrorServer(root, host="127.0.0.2") as a, MirrorServer(root, host="127.0.0.3") as b:
        yield a, b


def aria2c(meta4: Path, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert ARIA2C is not None
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # loopback only
    argv = [
        ARIA2C, "--no-conf=true", f"--metalink-file={meta4}", "-d", str(dest),
        "--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn",
        "--summary-interval=0", "--retry-wait=1", "--max-tries=5", *extra,
    ]  # fmt: skip
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def same_files(manifest: Manifest, src: Path, dest: Path) -> list[str]:
    """Paths whose copy under ``dest`` differs from ``src`` (or is missing)."""
    return [
        f.path
        for f in manifest.files
        if not (dest / f.path).is_file() or (dest / f.path).read_bytes() != (src / f.path).read_bytes()
    ]


@needs_aria2
def test_aria2c_downloads_the_exported_model(
    tmp_path: Path, model: tuple[Path, Manifest], mirrors: tuple[MirrorServer, MirrorServer]
) -> None:
    root, m = model
    a, b = mirrors
    meta4 = tmp_path / "model.meta4"
    meta4.write_bytes(to_meta4(m, [(a.url, "cn", 1), (b.url, "us", 2)]))
    result = aria2c(meta4, tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert same_files(m, root, tmp_path / "out") == []
    assert (tmp_path / "out" / "empty.bin").stat().st_size == 0
    assert a.bytes_served + b.bytes_served >= m.total_size


@needs_aria2
def test_aria2c_rejects_corrupt_pieces_and_refetches_them(
    tmp_path: Path, model: tuple[Path, Manifest], mirrors: tuple[MirrorServer, MirrorServer]
) -> None:
    root, m = model
    bad, good = mirrors
    bad.set_faults(Faults(corrupt=True))  # flips a byte in the middle of every body it sends
    meta4 = tmp_path / "model.meta4"
    meta4.write_bytes(to_meta4(m, [(bad.url, "cn", 1), (good.url, "us", 2)]))
    # inorder: every file is tried on the corrupting mirror first.
    result = aria2c(meta4, tmp_path / "out", "--uri-selector=inorder")
    assert bad.faults_applied > 0
    assert "Invalid checksum" in result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert same_files(m, root, tmp_path / "out") == []


@needs_aria2
def test_aria2c_fails_when_every_mirror_corrupts_a_file(
    tmp_path: Path, model: tuple[Path, Manifest], mirrors: tuple[MirrorServer, MirrorServer]
) -> None:
    root, m = model
    victim = "shards/3-over.bin"
    for mirror in mirrors:
        mirror.set_faults(Faults(corrupt=True, paths={victim}))
    meta4 = tmp_path / "model.meta4"
    meta4.write_bytes(to_meta4(m, [(mirror.url, "global", 1) for mirror in mirrors]))
    result = aria2c(meta4, tmp_path / "out", "--max-tries=2")
    assert result.returncode != 0
    assert same_files(m, root, tmp_path / "out") == [victim]
    # The unverified file stays under its final name, with aria2's control file beside it.
    assert (tmp_path / "out" / f"{victim}.aria2").exists()
