"""Torrents no manifest describes, pulled from peers alone; seeding the Ollama store and the HF cache.

Real libtorrent sessions (``dsmirror seed`` processes, or ``seed`` in a thread) and a real
``transmission-cli`` on loopback, each told its peers with ``--peer``; LSD and DHT are off.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

import dsmirror
from conftest import SWARM_PIECE, CliProcess, Swarmed, addr, collect, free_port
from dsmirror import Event, Manifest, PullFinished, PullOptions, PullStarted
from dsmirror._fetch.reuse import recorded_models
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.torrent import check_torrent, file_aligned, load_torrent
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, load_manifest
from dsmirror._install.listing import list_installed
from dsmirror._install.store_model import find_store_model
from dsmirror._serve import index_manifest_folder
from dsmirror._share.seed import seed, seed_targets_in, store_seed_target

MiB = 1 << 20


def swarm_cfg(port: int, *peers: int) -> SwarmConfig:
    return SwarmConfig(listen=addr(port), peers=tuple(addr(p) for p in peers), lsd=False)


def pull(
    tmp: Path, ref: str | Path, dest: Path, swarm: SwarmConfig, *, deadline: float = 60, **options: Any
) -> list[Event]:
    """A library pull with an empty catalog (no manifest is known anywhere)."""
    return collect(start_pull(tmp, ref, dest, swarm, **options), deadline)


def start_pull(tmp: Path, ref: str | Path, dest: Path, swarm: SwarmConfig, **options: Any) -> Iterator[Event]:
    catalog = dsmirror.load_default_catalog({}, [], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp / "home")})
    opts = PullOptions(dest=dest, reuse=False, swarm=swarm, **options)
    return dsmirror.pull(str(ref), catalog=catalog, settings=settings, options=opts)


def finished(events: list[Event]) -> PullFinished:
    done = [e for e in events if isinstance(e, PullFinished)]
    assert done, events[-3:]
    return done[-1]


def installed_manifest(dest: Path) -> Manifest:
    """The manifest a swarm-only pull recorded (exactly one)."""
    (path,) = (dest / ".dsmirror" / "installed").glob("*.manifest.json")
    m = load_manifest(path, expected_sha256=path.name.removesuffix(".manifest.json"))
    record = json.loads(path.with_name(f"{m.sha256}.json").read_bytes())
    assert sorted(record) == sorted(f.path for f in m.files)
    return m


def same_bytes(a: Path, b: Path, paths: list[str]) -> None:
    for rel in paths:
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel


def plain_v1_torrent(root: Path, name: str, piece_size: int) -> bytes:
    """A v1 torrent as most tools make it: no pad files, so pieces run across file boundaries."""
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    entries = [lt.create_file_entry(f"{name}/{p}", (root / p).stat().st_size) for p in paths]
    ct = lt.create_torrent(entries, piece_size, lt.create_torrent.v1_only)
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(root.resolve(), Path(tmp) / name)
        lt.set_piece_hashes(ct, tmp)
    return bytes(lt.bencode(ct.generate()))


# -- 1. a magnet or .torrent with no manifest -----------------------------------------------------
def test_magnet_without_manifest_is_pulled_from_two_seeders_and_recorded(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(3)]
    for p in ports[:2]:
        seeder(swarmed.torrent_path, swarmed.model.root, p)
    dest = tmp_path / "out"
    events = pull(tmp_path, swarmed.hybrid.magnet, dest, swarm_cfg(ports[2], *ports[:2]))
    total = swarmed.model.total_size
    done = finished(events)
    swarmed.model.assert_identical(dest)
    assert done.delivered_by_source == {"swarm": total} and done.reused_bytes == 0
    (started,) = [e for e in events if isinstance(e, PullStarted)]
    assert started.total_bytes == total and started.sources == ("swarm",)
    # The manifest made from the installed files: the hybrid torrent is file-aligned, so its pieces
    # are the manifest's, and the manifest records the torrent's info-hashes.
    m = installed_manifest(dest)
    assert m.piece_size == SWARM_PIECE and m.meta["bittorrent"]["pieces"] == "torrent"
    assert dict(m.torrent or {}) == swarmed.hybrid.manifest_fields()
    assert sorted(m.files, key=lambda f: f.path) == sorted(swarmed.model.manifest.files, key=lambda f: f.path)
    assert check_torrent(m, swarmed.hybrid).pinned
    assert dsmirror.verify_tree(m, dest).ok
    # Nothing left in the partial area; `dsmirror seed DEST` finds the torrent, `dsmirror serve`
    # serves the files on the strength of the install record, later pulls reuse them.
    assert not list((dest / ".dsmirror" / "partial").iterdir())
    assert [t.torrent.btih for t in seed_targets_in(dest)] == [swarmed.hybrid.btih]
    assert sorted(index_manifest_folder(m, dest).files) == sorted(f.path for f in m.files)
    assert [r.manifest.sha256 for r in recorded_models(dest)] == [m.sha256]
    # Pulling it again is a no-op (no peer needed).
    again = finished(pull(tmp_path, swarmed.hybrid.magnet, dest, swarm_cfg(ports[2])))
    assert again.reused_bytes == total and again.downloaded_bytes == 0


def test_cli_pull_of_a_v1_torrent_whose_pieces_span_files(
    swarmed: Swarmed,
    seeder: Callable[..., CliProcess],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    torrent_path = tmp_path / "plain.torrent"
    torrent_path.write_bytes(plain_v1_torrent(swarmed.model.root, "plain", 64 << 10))
    torrent = load_torrent(torrent_path)
    assert not file_aligned(torrent)
    sp, me = free_port(), free_port()
    seeder(torrent_path, swarmed.model.root, sp)
    dest = tmp_path / "out"
    r = run_cli(
        "pull", torrent_path, "-d", dest, "--peer", addr(sp), "--listen", addr(me), "--no-lsd",
        "--no-default-catalog", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "PullFinished" and events[-1]["total_bytes"] == swarmed.model.total_size
    swarmed.model.assert_identical(dest)
    # Pieces span files in the torrent: the manifest has dsmirror's own piece size, pieces hashed
    # here, and does not claim to be this torrent's (it could not be checked against it).
    m = installed_manifest(dest)
    assert m.piece_size == DEFAULT_PIECE_SIZE and m.torrent is None
    assert m.meta["bittorrent"] == {
        "btih": torrent.btih,
        "format": "v1",
        "piece_size": 64 << 10,
        "pieces": "derived locally",
    }
    assert dsmirror.verify_tree(m, dest).ok


@pytest.mark.slow
def test_interrupted_swarm_only_pull_resumes(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    sp, me = free_port(), free_port()
    seeder(swarmed.torrent_path, swarmed.model.root, sp, "--upload-rate", "4MB/s")
    dest, total = tmp_path / "out", swarmed.model.total_size
    events = start_pull(tmp_path, swarmed.hybrid.magnet, dest, swarm_cfg(me, sp))
    for ev in events:
        if isinstance(ev, dsmirror.Progress) and ev.verified_bytes > total // 3:
            break
    events.close()  # what Ctrl-C does to the CLI's pull: the generator is closed mid-way
    area = next((dest / ".dsmirror" / "partial").iterdir())
    assert (area / "bt.resume").is_file() and (area / "torrent").is_file()
    assert not (dest / "config.json").exists()  # nothing installed before everything is in
    resumed = pull(tmp_path, swarmed.hybrid.magnet, dest, swarm_cfg(me, sp))
    (started,) = [e for e in resumed if isinstance(e, PullStarted)]
    done = finished(resumed)
    assert started.verified_bytes > total // 3  # the resume data was trusted: no re-download
    assert done.reused_bytes == started.verified_bytes and done.downloaded_bytes < total
    swarmed.model.assert_identical(dest)


# -- 2. seeding the Ollama store and the Hugging Face cache without copying --------------------------
def make_ollama_store(models: Path) -> list[str]:
    """An Ollama store holding library/tiny:1b; returns its files (relative to the store)."""
    rng = random.Random(5)
    blobs = {
        "application/vnd.ollama.image.model": rng.randbytes(5 * MiB + 3),
        "application/vnd.ollama.image.projector": rng.randbytes(2 * MiB),
        "application/vnd.ollama.image.template": b"{{ .Prompt }}",
    }
    config = json.dumps({"model_format": "gguf", "model_family": "tiny"}).encode()

    def put(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (models / "blobs").mkdir(parents=True, exist_ok=True)
        (models / "blobs" / f"sha256-{digest}").write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": put(config, "application/vnd.docker.container.image.v1+json"),
        "layers": [put(data, media_type) for media_type, data in blobs.items()],
    }
    path = models / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "1b"
    path.parent.mkdir(parents=True)
    path.write_bytes(json.dumps(manifest).encode())
    return sorted(p.relative_to(models).as_posix() for p in models.rglob("*") if p.is_file())


def test_seed_an_ollama_model_in_place_and_pull_it_by_magnet(
    seeder: Callable[..., CliProcess], cli_env: dict[str, str], tmp_path: Path
) -> None:
    store = tmp_path / "ollama-models"
    files = make_ollama_store(store)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "h"), "OLLAMA_MODELS": str(store)})
    for spelling in ("tiny:1b", "ollama://library/tiny:1b", "ollama://registry.ollama.ai/library/tiny:1b"):
        model = find_store_model(settings, spelling)
        assert (model.root, sorted(f.path for f in model.files)) == (store, files)
    cli_env["OLLAMA_MODELS"] = str(store)
    sp, me = free_port(), free_port()
    seeding = seeder("tiny:1b", None, sp)
    (magnet,) = seeding.events[-1]["magnets"]
    dest = tmp_path / "pulled"
    done = finished(pull(tmp_path, magnet, dest, swarm_cfg(me, sp)))
    assert done.delivered_by_source == {"swarm": sum((store / f).stat().st_size for f in files)}
    same_bytes(store, dest, files)
    # Nothing was copied into (or written to) the store; the pulled folder is an Ollama store.
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()) == files
    pulled = [m for m in list_installed(dsmirror.Settings.from_env({"HOME": str(tmp_path / "h"),
              "OLLAMA_MODELS": str(dest)})) if m.kind == "ollama"]  # fmt: skip
    assert [(m.name, m.status) for m in pulled] == [("tiny:1b", "verified")]
    seeding.proc.send_signal(signal.SIGTERM)
    assert seeding.finish(timeout=30) == 0, seeding.stderr
    assert seeding.events[-1]["event"] == "SeedingStopped" and seeding.events[-1]["uploaded"] > 0


def test_seed_refuses_models_that_are_not_installed(
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    cli_env: dict[str, str],
    tmp_path: Path,
    one_line_error: Callable[..., str],
) -> None:
    make_ollama_store(tmp_path / "models")
    cli_env["OLLAMA_MODELS"] = str(tmp_path / "models")
    blob = next((tmp_path / "models" / "blobs").iterdir())
    cases = [
        ("nothere:1b", "is not in the Ollama store"),
        ("ollama://library/tiny:2b", "is not in the Ollama store"),
        ("hf://org/none", "is not in the Hugging Face cache"),
    ]
    for target, message in cases:
        r = run_cli("seed", target, "--no-lsd", "--listen", addr(free_port()))
        assert r.returncode == 2, (target, r.stderr)
        one_line_error(r, message)
    blob.write_bytes(blob.read_bytes()[:-1])  # a truncated blob: the model is not complete
    r = run_cli("seed", "tiny:1b", "--no-lsd", "--listen", addr(free_port()))
    assert r.returncode == 2
    one_line_error(r, "the manifest says")


def make_hf_cache(hub: Path) -> tuple[str, dict[str, bytes]]:
    """models--org--tiny with one LFS file, two small git blobs (one shared by two paths)."""
    rng = random.Random(7)
    files = {
        "model.safetensors": rng.randbytes(3 * MiB + 11),
        "config.json": b'{"architectures": ["Tiny"]}',
        "sub/tokenizer.json": b'{"vocab": {}}',
        "copy-of-config.json": b'{"architectures": ["Tiny"]}',
    }
    repo = hub / "models--org--tiny"
    commit = "c0ffee" * 6 + "abcd"
    for path, data in files.items():
        etag = (
            hashlib.sha256(data).hexdigest()
            if len(data) > 1000
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / etag).write_bytes(data)
        link = repo / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("../" * (path.count("/") + 2) + f"blobs/{etag}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit, files


def test_seed_a_hugging_face_snapshot_from_its_blobs(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    commit, files = make_hf_cache(hub)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "home"), "HF_HUB_CACHE": str(hub)})
    model = find_store_model(settings, "hf://org/tiny")
    assert model.ref == f"hf://org/tiny@{commit}"
    target = store_seed_target(model, cache=tmp_path / "torrents")
    assert sorted(f.path for f in target.torrent.content_files) == sorted(files)
    sp, me = free_port(), free_port()
    stop = threading.Event()
    seeding = threading.Thread(
        target=lambda: list(seed([target], swarm_cfg(sp), stop=stop, interval=0.2)), daemon=True
    )
    seeding.start()
    try:
        dest = tmp_path / "out"
        finished(pull(tmp_path, target.torrent.magnet, dest, swarm_cfg(me, sp)))
    finally:
        stop.set()
        seeding.join(10)
    for path, data in files.items():
        assert (dest / path).read_bytes() == data, path
        assert not (dest / path).is_symlink()
    # The torrent was made once: the same model gives the same torrent, from the cache.
    assert store_seed_target(model, cache=tmp_path / "torrents").torrent.data == target.torrent.data
    # A damaged blob (no dsmirror record vouches for it) is refused when the torrent is made.
    blob = next(p for p in (hub / "models--org--tiny" / "blobs").iterdir() if p.stat().st_size > MiB)
    with blob.open("r+b") as fh:
        fh.write(b"X")
    with pytest.raises(dsmirror.IntegrityError, match="does not match"):
        store_seed_target(model, cache=tmp_path / "other-cache")


# -- 3. interop: pulling from a seeding transmission-cli ------------------------------------------------
TRANSMISSION = shutil.which("transmission-cli")


@pytest.mark.slow
@pytest.mark.skipif(
    TRANSMISSION is None, reason="transmission-cli is not installed (apt install transmission-cli)"
)
def test_pull_from_a_seeding_transmission_cli(swarmed: Swarmed, tmp_path: Path) -> None:
    """transmission-cli 3.00 seeds a plain v1 torrent; dsmirror pulls it with no manifest.

    Observed: transmission 3 accepts our TCP connection at once but unchokes new peers only on its
    rechoke timer (every 10 s), so the first bytes arrive after up to ~10 s: hence slow.
    """
    torrent_path = tmp_path / "plain.torrent"
    torrent_path.write_bytes(plain_v1_torrent(swarmed.model.root, "plain", 256 << 10))
    seed_dir, config_dir = tmp_path / "tx-data", tmp_path / "tx-config"
    shutil.copytree(swarmed.model.root, seed_dir / "plain")
    config_dir.mkdir()
    # A fresh config folder: transmission trusts its own resume files, and verifies (then seeds)
    # only a torrent it has not seen. Nothing that would leave loopback.
    settings = {
        "dht-enabled": False,
        "lpd-enabled": False,
        "pex-enabled": False,
        "utp-enabled": False,
        "port-forwarding-enabled": False,
        "rpc-enabled": False,
        "blocklist-enabled": False,
    }
    (config_dir / "settings.json").write_text(json.dumps(settings))
    tx_port, me = free_port(), free_port()
    tx = subprocess.Popen(
        [TRANSMISSION or "transmission-cli", "-g", str(config_dir), "-w", str(seed_dir), "-p", str(tx_port),
         "-D", "-U", "-M", "-ep", str(torrent_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        done = finished(pull(tmp_path, torrent_path, tmp_path / "out", swarm_cfg(me, tx_port), deadline=90))
    finally:
        tx.terminate()
        try:
            tx.wait(10)
        except subprocess.TimeoutExpired:
            tx.kill()
            tx.wait(10)
    swarmed.model.assert_identical(tmp_path / "out")
    assert done.delivered_by_source == {"swarm": swarmed.model.total_size}
    assert installed_manifest(tmp_path / "out").meta["bittorrent"]["pieces"] == "derived locally"
