"""libtorrent's copy of a pull (``bt/``) never fills the disk ("The disk" in
``dsmirror._fetch.swarm.source``): a real pull with a real libtorrent session, on a small tmpfs."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Model, free_port
from dsmirror import Event, SourceTrouble
from dsmirror._fetch.swarm.source import SwarmSource, disk_reserve
from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes
from dsmirror.testing import MirrorServer
from test_swarm import finished, pull, swarm_cfg

MiB = 1 << 20


def _published(model: Model, tmp: Path) -> tuple[Path, Path]:
    """The model's manifest (recording its torrent) and its torrent, written under ``tmp``."""
    torrent = create_torrent(model.manifest, model.root)
    mpath, tpath = tmp / "m.json", tmp / "m.torrent"
    with_torrent_hashes(model.manifest, [torrent]).write(mpath)
    torrent.write(tpath)
    return mpath, tpath


def _pull_on(
    fs: Path, tmp: Path, mpath: Path, tpath: Path, mirror: MirrorServer
) -> tuple[list[Event], SwarmSource, int, int]:
    """Pull into ``fs/dest`` from ``mirror`` with a swarm (no peer); the events, the swarm, and
    the least free and the most used bytes of ``fs`` while it ran (read every 5 ms)."""
    lowest, most = [1 << 62], [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.005):
            st = os.statvfs(fs)
            lowest[0] = min(lowest[0], st.f_bavail * st.f_frsize)
            most[0] = max(most[0], (st.f_blocks - st.f_bfree) * st.f_frsize)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        events, swarms = pull(
            tmp, mpath, fs / "dest", mirrors={"m1": mirror}, swarm=swarm_cfg(free_port(), torrent=tpath)
        )
    finally:
        done.set()
        w.join(5)
    (swarm,) = swarms
    return events, swarm, lowest[0], most[0]


def test_libtorrents_copy_stops_growing_before_the_disk_is_full(
    make_model: Callable[..., Model],
    start_mirrors: Callable[..., list[MirrorServer]],
    small_tmpfs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The store's files take the model (preallocated); libtorrent's copy for LAN peers took as
    much again, so a disk with room for the model and a little more filled up (measured: a pull
    with a swarm peaked at 2.00x the model on disk). Here the disk holds the model, the store's
    margin and 16 MiB: the copy stops with the reserve free, the pull completes from the mirror,
    and nothing is short of space."""
    size = 96 * MiB
    model = make_model({"model.safetensors": size}, piece_size=MiB)
    mpath, tpath = _published(model, tmp_path)
    (mirror,) = start_mirrors(model.root, 1, rate=40_000_000)
    fs = small_tmpfs(f"{(size + 64 * MiB + 16 * MiB) // MiB}m")
    reserve = disk_reserve(os.statvfs(fs).f_blocks * os.statvfs(fs).f_frsize)
    events, swarm, lowest, _ = _pull_on(fs, tmp_path, mpath, tpath, mirror)
    model.assert_identical(fs / "dest")
    assert finished(events).downloaded_bytes == size
    trouble = [e for e in events if isinstance(e, SourceTrouble) and e.source == "swarm"]
    assert any("stops growing" in e.message for e in trouble), trouble
    assert not [e for e in trouble if "space" in e.message.lower()], trouble  # no disk error
    assert 0 < swarm.stats.injected < size // MiB  # it had a copy, and the copy stopped
    # The reserve was kept, give or take a piece or two libtorrent wrote between two turns.
    assert lowest >= reserve - 4 * MiB, (lowest / MiB, reserve / MiB)
    assert not (fs / "dest" / ".dsmirror" / "partial").exists() or not any(
        (fs / "dest" / ".dsmirror" / "partial").rglob("bt")
    )


@pytest.mark.parametrize(
    ("total", "reserve"), [(100 * MiB, 64 * MiB), (10 << 30, 204 * MiB), (1 << 40, 1 << 30)]
)
def test_the_reserve_is_two_percent_between_the_margin_and_1gib(total: int, reserve: int) -> None:
    assert abs(disk_reserve(total) - reserve) < MiB


def test_a_finished_file_is_kept_once_not_twice(
    make_model: Callable[..., Model],
    start_mirrors: Callable[..., list[MirrorServer]],
    small_tmpfs: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """Once the store verified a file and libtorrent holds all of it, libtorrent's copy of it
    becomes a hard link to the store's file ("One copy per finished file"): the disk holds a
    second copy only of the files still in progress. 48 files of 2 MiB, 1 MiB pieces, one mirror at
    24 MB/s: the peak was 2.00x the model before (2 runs), 1.16x and 1.22x with it."""
    sizes = {f"model-{k:02d}-of-48.safetensors": 2 * MiB + k * 4097 for k in range(48)}
    total = sum(sizes.values())
    model = make_model(sizes, piece_size=MiB)
    mpath, tpath = _published(model, tmp_path)
    (mirror,) = start_mirrors(model.root, 1, rate=24_000_000)
    fs = small_tmpfs(f"{(3 * total) // MiB + 128}m")
    base = os.statvfs(fs)
    used0 = (base.f_blocks - base.f_bfree) * base.f_frsize
    _, swarm, _, most = _pull_on(fs, tmp_path, mpath, tpath, mirror)
    model.assert_identical(fs / "dest")
    peak = most - used0
    print(f"peak on disk {peak / total:.2f}x the model; files linked {len(swarm.linked)} of {len(sizes)}")
    assert swarm.stats.injected > 0
    assert len(swarm.linked) >= len(sizes) // 2, swarm.linked  # most files were shared as they finished
    assert peak < 1.5 * total, peak / total


def test_a_resumed_pull_removes_the_files_it_had_linked(
    make_model: Callable[..., Model], tmp_path: Path
) -> None:
    """A killed pull may leave bt/ files linked to the store's: the next run removes them before
    libtorrent opens bt/, so that libtorrent never writes a peer's blocks into the store's file
    (a piece the store no longer trusts at the resume is fetched again). Unlinked files stay."""
    model = make_model({"a.bin": 3 * MiB, "b.bin": 2 * MiB + 1}, piece_size=MiB)
    torrent = create_torrent(model.manifest, model.root)
    manifest = with_torrent_hashes(model.manifest, [torrent])
    store_copy = tmp_path / "data" / "a.bin"
    store_copy.parent.mkdir()
    store_copy.write_bytes((model.root / "a.bin").read_bytes())
    bt = tmp_path / "bt"
    bt.mkdir()
    os.link(store_copy, bt / "a.bin")
    (bt / "b.bin").write_bytes(b"libtorrent's own")
    sw = SwarmSource(manifest, config=swarm_cfg(free_port()), torrent=torrent)
    try:
        sw._unshare(bt)
    finally:
        sw.session.close()
    assert not (bt / "a.bin").exists() and store_copy.read_bytes() == (model.root / "a.bin").read_bytes()
    assert (bt / "b.bin").read_bytes() == b"libtorrent's own"
