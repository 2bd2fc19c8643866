"""Offline bundles: export/import round trips, tampered and truncated bundles, folder and store imports."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import IntegrityError, ManifestMismatch, PullFinished
from dsmirror._bundle import BundleOpened, export_source, import_bundle, import_folder, write_bundle_file
from dsmirror._core.errors import ImportRejected
from dsmirror.testing import write_random_tree

KiB = 1 << 10
PIECE = 64 * KiB
# On, one below and one above a piece boundary; empty; one byte; a sub-folder; a bigger file.
SIZES = {
    "exact.bin": PIECE,
    "over.bin": PIECE + 1,
    "under.bin": PIECE - 1,
    "empty.bin": 0,
    "one.bin": 1,
    "sub/two-exact.bin": 2 * PIECE,
    "sub/deeper/big.bin": 3 * PIECE + PIECE // 3,
}


class Model:
    def __init__(self, tmp_path: Path, sizes: dict[str, int] = SIZES, name: str = "bundle-model") -> None:
        self.root = tmp_path / "model"
        write_random_tree(self.root, sizes, seed=7)
        self.manifest = dsmirror.create_manifest(self.root, name=name, piece_size=PIECE)
        self.manifest_path = tmp_path / "model.manifest.json"
        self.manifest.write(self.manifest_path)
        self.sizes = sizes

    def assert_identical(self, dest: Path) -> None:
        for rel in self.sizes:
            assert (dest / rel).read_bytes() == (self.root / rel).read_bytes(), rel
        assert dsmirror.verify_tree(self.manifest, dest).ok


@pytest.fixture
def model(tmp_path: Path) -> Model:
    return Model(tmp_path)


@pytest.fixture
def bundle(tmp_path: Path, model: Model) -> Path:
    out = tmp_path / "model.tar"
    write_bundle_file(export_source(str(model.manifest_path), from_dir=model.root), out)
    return out


def _settings(tmp_path: Path) -> dsmirror.Settings:
    home = tmp_path / "home"
    return dsmirror.Settings.from_env({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")})


def _import(path: Path, **kw: Any) -> list[dsmirror.Event]:
    with open(path, "rb") as fh:
        return list(import_bundle(fh, origin=str(path), **kw))


def _final_names(dest: Path) -> list[str]:
    """Everything under dest except dsmirror's private folder."""
    if not dest.exists():
        return []
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if ".dsmirror" not in p.parts)


def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


# -- format ----------------------------------------------------------------------------------------
def test_bundle_is_a_plain_tar_manifest_first_then_files_in_order(bundle: Path, model: Model) -> None:
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
        assert members[0].name == "manifest.json"
        manifest_bytes = tar.extractfile(members[0]).read()  # type: ignore[union-attr]
    assert manifest_bytes == model.manifest.canonical_bytes
    assert [m.name for m in members[1:]] == [f"files/{f.path}" for f in model.manifest.files]
    assert all(m.isfile() and m.mode == 0o644 and m.mtime == 0 and m.uid == 0 for m in members)


def test_export_is_deterministic(tmp_path: Path, bundle: Path, model: Model) -> None:
    again = tmp_path / "again.tar"
    write_bundle_file(export_source(str(model.manifest_path), from_dir=model.root), again)
    assert again.read_bytes() == bundle.read_bytes()


# -- round trip ------------------------------------------------------------------------------------
def test_round_trip_is_byte_identical(tmp_path: Path, bundle: Path, model: Model) -> None:
    dest = tmp_path / "dest"
    events = _import(bundle, dest=dest, expected_sha256=model.manifest.sha256)
    opened = next(e for e in events if isinstance(e, BundleOpened))
    assert opened.pinned_by == "--manifest-sha256" and opened.manifest_sha256 == model.manifest.sha256
    fin = next(e for e in events if isinstance(e, PullFinished))
    assert fin.downloaded_bytes == sum(SIZES.values())
    model.assert_identical(dest)
    assert _final_names(dest) == _final_names(model.root)
    # the installed folder can be exported again, to the same bytes
    again = tmp_path / "again.tar"
    write_bundle_file(export_source(str(dest)), again)
    assert again.read_bytes() == bundle.read_bytes()
    # importing again is a no-op that still checks every piece
    events = _import(bundle, dest=dest)
    assert next(e for e in events if isinstance(e, PullFinished)).downloaded_bytes == 0


def test_cli_round_trip_through_a_pipe(
    tmp_path: Path, model: Model, cli_env: dict[str, str], run_cli: Callable[..., Any]
) -> None:
    from conftest import CLI

    dest = tmp_path / "piped"
    exporter = subprocess.Popen(
        [*CLI, "export", str(model.manifest_path), "--from", str(model.root), "-o", "-"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    importer = subprocess.run(
        [*CLI, "import", "-", "--dest", str(dest), "--manifest-sha256", model.manifest.sha256],
        env=cli_env,
        stdin=exporter.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exporter.wait(30) == 0
    assert exporter.stderr is not None and model.manifest.sha256 in exporter.stderr.read().decode()
    assert importer.returncode == 0, importer.stderr
    assert "imported" in importer.stdout
    model.assert_identical(dest)


def test_cli_export_prints_the_manifest_sha256(
    tmp_path: Path, model: Model, run_cli: Callable[..., Any]
) -> None:
    out = tmp_path / "b.tar"
    r = run_cli("export", model.manifest_path, "--from", model.root, "-o", out)
    assert r.returncode == 0, r.stderr
    assert model.manifest.sha256 in r.stdout
    r = run_cli("import", out, "--dest", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "not pinned" in r.stderr  # a warning, with the digest to compare
    model.assert_identical(tmp_path / "d")


# -- tampering and truncation ----------------------------------------------------------------------
def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


@pytest.mark.parametrize(
    ("rel", "where"),
    [("exact.bin", 0), ("over.bin", PIECE), ("under.bin", PIECE - 2), ("sub/deeper/big.bin", 2 * PIECE + 17)],
)
def test_one_flipped_byte_is_rejected_naming_file_and_piece(
    tmp_path: Path, bundle: Path, model: Model, rel: str, where: int
) -> None:
    data_at, _ = _member_offsets(bundle)[f"files/{rel}"]
    _flip(bundle, data_at + where)
    dest = tmp_path / "dest"
    with pytest.raises(ImportRejected) as info:
        _import(bundle, dest=dest)
    fi = [f.path for f in model.manifest.files].index(rel)
    piece = model.manifest.file_piece_ranges[fi][where // PIECE]
    assert info.value.path == rel and info.value.piece == piece
    assert f"piece {piece} of {rel}" in str(info.value)
    assert isinstance(info.value, IntegrityError) and info.value.exit_code == 3
    # Nothing under a final name: not the bad file, not the good files before it.
    assert _final_names(dest) == []


def test_cli_tampered_bundle_exits_3_with_one_line(
    tmp_path: Path,
    bundle: Path,
    model: Model,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    data_at, _ = _member_offsets(bundle)["files/sub/two-exact.bin"]
    _flip(bundle, data_at + PIECE + 5)
    r = run_cli("import", bundle, "--dest", tmp_path / "dest", "--manifest-sha256", model.manifest.sha256)
    assert r.returncode == 3
    one_line_error(r, "sub/two-exact.bin", "piece")
    assert _final_names(tmp_path / "dest") == []


def _cut_points(bundle: Path) -> Iterator[tuple[str, int]]:
    offsets = _member_offsets(bundle)
    m_at, m_size = offsets["manifest.json"]
    yield "inside the manifest", m_at + m_size // 2
    at, size = offsets["files/sub/deeper/big.bin"]
    yield "inside a file", at + size // 2
    yield "one byte short of a file", at + size - 1
    yield "at a member boundary", offsets["files/sub/deeper/big.bin"][0] - 512
    last = f"files/{max(offsets, key=lambda k: offsets[k][0])[len('files/') :]}"
    yield "one byte short of the last file", offsets[last][0] + offsets[last][1] - 1


@pytest.mark.parametrize("case", range(5))
def test_truncated_bundle_is_rejected_and_resumes(
    tmp_path: Path, bundle: Path, model: Model, case: int
) -> None:
    what, cut = list(_cut_points(bundle))[case]
    short = tmp_path / "short.tar"
    short.write_bytes(bundle.read_bytes()[:cut])
    dest = tmp_path / "dest"
    with pytest.raises(ImportRejected) as info:
        _import(short, dest=dest)
    assert "truncated" in str(info.value) or "damaged" in str(info.value), what
    assert _final_names(dest) == [], what
    # The full bundle afterwards: verified pieces from the first attempt are kept, the rest written.
    _import(bundle, dest=dest)
    model.assert_identical(dest)


def test_wrong_pin_is_refused_before_anything_is_written(
    tmp_path: Path, bundle: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(ManifestMismatch):
        _import(bundle, dest=dest, expected_sha256="0" * 64)
    assert not dest.exists()
    r = run_cli("import", bundle, "--dest", dest, "--manifest-sha256", "1" * 64)
    assert r.returncode == 3
    one_line_error(r, "1" * 64)
    assert not dest.exists()


def test_catalog_alias_pins_the_manifest(
    tmp_path: Path, bundle: Path, model: Model, run_cli: Callable[..., Any]
) -> None:
    cat = tmp_path / "cat.yaml"
    cat.write_text(
        "version: 1\nmodels:\n"
        f'  "tiny:1b":\n    manifest: {model.manifest_path}\n    manifest_sha256: "{model.manifest.sha256}"\n'
        f'  "other:1b":\n    manifest: {model.manifest_path}\n    manifest_sha256: "{"2" * 64}"\n'
    )
    r = run_cli("import", bundle, "--dest", tmp_path / "a", "--mirrors", cat, "--alias", "tiny:1b")
    assert r.returncode == 0, r.stderr
    assert "pinned by catalog alias tiny:1b" in r.stdout
    r = run_cli("import", bundle, "--dest", tmp_path / "b", "--mirrors", cat, "--alias", "other:1b")
    assert r.returncode == 3
    assert not (tmp_path / "b").exists()
    # without --alias, a bundle whose digest a catalog alias pins is recognised
    r = run_cli("import", bundle, "--dest", tmp_path / "c", "--mirrors", cat)
    assert r.returncode == 0 and "pinned by catalog alias tiny:1b" in r.stdout


def test_reordered_or_extra_members_are_rejected(tmp_path: Path, bundle: Path, model: Model) -> None:
    with tarfile.open(bundle) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    swapped = [members[0], members[2], members[1], *members[3:]]
    extra_info = tarfile.TarInfo("files/evil.sh")
    extra_info.size = 3
    for variant, items in (("swapped", swapped), ("extra", [*members, (extra_info, b"rm\n")])):
        path = tmp_path / f"{variant}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
            for info, data in items:
                out.addfile(info, io.BytesIO(data))
        with pytest.raises(ImportRejected):
            _import(path, dest=tmp_path / variant)
        assert _final_names(tmp_path / variant) == []


def test_export_refuses_a_damaged_local_copy(
    tmp_path: Path, model: Model, run_cli: Callable[..., Any]
) -> None:
    _flip(model.root / "over.bin", PIECE)
    out = tmp_path / "b.tar"
    r = run_cli("export", model.manifest_path, "--from", model.root, "-o", out)
    assert r.returncode == 3
    assert "over.bin" in r.stderr and "piece" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".b.tar.*"))


# -- folders, Ollama store, Hugging Face cache -----------------------------------------------------
def test_import_from_a_folder(tmp_path: Path, model: Model, run_cli: Callable[..., Any]) -> None:
    usb = tmp_path / "usb"
    shutil.copytree(model.root, usb)
    dest = tmp_path / "dest"
    r = run_cli("import", usb, "--manifest", model.manifest_path, "--dest", dest)
    assert r.returncode == 0, r.stderr
    model.assert_identical(dest)
    # a damaged copy: rejected, naming the piece; nothing installed
    _flip(usb / "sub" / "two-exact.bin", PIECE + 3)
    with pytest.raises(ImportRejected) as info:
        list(import_folder(usb, model.manifest, dest=tmp_path / "dest2"))
    assert info.value.path == "sub/two-exact.bin" and info.value.piece is not None
    assert _final_names(tmp_path / "dest2") == []
    # a missing file
    (usb / "one.bin").unlink()
    with pytest.raises(ImportRejected, match=r"one\.bin"):
        list(import_folder(usb, model.manifest, dest=tmp_path / "dest3"))


def _fake_ollama_store(root: Path) -> tuple[bytes, dict[str, bytes]]:
    blobs: dict[str, bytes] = {}
    for i, size in enumerate((3 * PIECE + 5, 700, 1)):
        data = hashlib.shake_128(f"blob{i}".encode()).digest(size)
        blobs[hashlib.sha256(data).hexdigest()] = data
    (root / "blobs").mkdir(parents=True)
    for sha, data in blobs.items():
        (root / "blobs" / f"sha256-{sha}").write_bytes(data)
    digests = list(blobs)
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": f"sha256:{digests[1]}",
                "size": 700,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.ollama.image.model",
                    "digest": f"sha256:{digests[0]}",
                    "size": 3 * PIECE + 5,
                },
                {
                    "mediaType": "application/vnd.ollama.image.params",
                    "digest": f"sha256:{digests[2]}",
                    "size": 1,
                },
            ],
        }
    ).encode()
    mpath = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    mpath.parent.mkdir(parents=True)
    mpath.write_bytes(raw)
    return raw, blobs


def test_ollama_store_export_and_import_into_a_folder_for_docker(
    tmp_path: Path, run_cli: Callable[..., Any]
) -> None:
    store = tmp_path / "ollama-a"
    raw, blobs = _fake_ollama_store(store)
    out = tmp_path / "tiny.tar"
    r = run_cli("export", "ollama://tiny:latest", "--from", store, "-o", out)
    assert r.returncode == 0, r.stderr
    image_dir = tmp_path / "image" / "ollama-models"
    r = run_cli("import", out, "--format", "ollama", "--dest", image_dir)
    assert r.returncode == 0, r.stderr
    assert (image_dir / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes() == raw
    for sha, data in blobs.items():
        assert (image_dir / "blobs" / f"sha256-{sha}").read_bytes() == data
    # A USB copy of the store, imported as a folder with the bundle's manifest.
    with tarfile.open(out) as tar:
        mbytes = tar.extractfile("manifest.json").read()  # type: ignore[union-attr]
    manifest = dsmirror.parse_manifest(mbytes)
    usb = tmp_path / "usb"
    shutil.copytree(store, usb)
    second = tmp_path / "ollama-b"
    list(import_folder(usb, manifest, fmt="ollama", dest=second, settings=_settings(tmp_path)))
    assert (second / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes() == raw
    # The same USB copy, read as an Ollama store by model name (no manifest needed).
    third = tmp_path / "ollama-c"
    r = run_cli("import", usb, "--model", "ollama://tiny:latest", "--format", "ollama", "--dest", third)
    assert r.returncode == 0, r.stderr
    assert (third / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes() == raw
    # A store dsmirror installed into exports again, with its Ollama manifest.
    again = tmp_path / "again.tar"
    write_bundle_file(export_source(str(image_dir)), again)
    assert again.read_bytes() == out.read_bytes()
    # --format hf of an Ollama model is refused with a hint
    with pytest.raises(dsmirror.UsageError, match="Hugging Face"):
        list(import_folder(usb, manifest, fmt="hf", dest=tmp_path / "x"))


def test_ollama_manifest_sidecar_is_pinned(tmp_path: Path) -> None:
    store = tmp_path / "ollama"
    _fake_ollama_store(store)
    out = tmp_path / "tiny.tar"
    write_bundle_file(export_source("ollama://tiny:latest", from_dir=store), out)
    at, _ = _member_offsets(out)["sidecar/ollama-manifest"]
    _flip(out, at + 2)
    with pytest.raises(ImportRejected, match="Ollama manifest"):
        _import(out, dest=tmp_path / "dest", fmt="ollama")
    assert _final_names(tmp_path / "dest") == []


def test_hf_cache_export_and_import(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    cache = tmp_path / "hf"
    repo = cache / "models--org--tiny"
    commit = "a" * 40
    files = {"config.json": b'{"x": 1}', "model.safetensors": hashlib.shake_128(b"w").digest(2 * PIECE + 9)}
    for rel, data in files.items():
        sha = hashlib.sha256(data).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / sha).write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../blobs/{sha}", link)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "tiny.tar"
    r = run_cli("export", "hf://org/tiny", "--from", cache, "-o", out)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "hf2"
    r = run_cli("import", out, "--format", "hf", "--dest", other)
    assert r.returncode == 0, r.stderr
    snap = other / "models--org--tiny" / "snapshots" / commit
    for rel, data in files.items():
        assert (snap / rel).is_symlink() and (snap / rel).read_bytes() == data
    assert (other / "models--org--tiny" / "refs" / "main").read_text() == commit
    # A copied cache, read by model name.
    third = tmp_path / "hf3"
    r = run_cli("import", cache, "--model", "hf://org/tiny", "--format", "hf", "--dest", third)
    assert r.returncode == 0, r.stderr
    assert (third / "models--org--tiny" / "snapshots" / commit / "config.json").read_bytes() == files[
        "config.json"
    ]
