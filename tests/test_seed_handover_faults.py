"""Faults around ``pull --seed``'s hand-over (``dsmirror._share.seed``, "The hand-over").

- An installed file changed while it is seeded: the torrent the seeder took over from the pull
  holds every piece as checked and libtorrent never reads them again, so it served the changed
  bytes (a peer's hash check failed and it banned the seeder). The seeder now notices the change
  (size, mtime, inode) and adds the torrent again in seed mode, where libtorrent checks each
  piece before it first serves it: the changed piece is never sent, the others still are.
- A process killed between the install and the take-over leaves libtorrent's copy (``bt/``, a
  whole copy of the model) in the partial area, and nothing removed it: the next pull of the
  installed model is a no-op. It is removed by the next pull now, unless a seeder still uses it.
- A magnet pull (task 2b): handed over like a pull that knows its torrent.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libtorrent as lt

import dsmirror
from _swarm_peer import watch_until_seeding
from conftest import addr, free_port
from dsmirror import Event, PullFinished, PullOptions
from dsmirror._fetch.swarm.config import SeedingStarted, SeedStatus, SwarmConfig
from dsmirror._fetch.swarm.source import SwarmSource
from dsmirror._fetch.swarm.torrent import create_torrent, derived_torrent
from dsmirror._formats.private import PrivateArea
from dsmirror._pull import resolve, run_plan
from dsmirror._share import seed as seed_mod
from dsmirror._verify.tree import create_manifest
from dsmirror.testing import write_random_tree

KiB, MiB = 1 << 10, 1 << 20
SIZES = {"model.bin": 3 * MiB + 7, "config.json": 500}
PIECE = 256 * KiB


def _peer(port: int) -> Any:
    return lt.session(
        {
            "listen_interfaces": addr(port),
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "alert_mask": lt.alert_category.peer
            | lt.alert_category.connect
            | lt.alert_category.error
            | lt.alert_category.status
            | lt.alert_category.block_progress,
        }
    )


def _pull_and_seed(tmp_path: Path, start_mirrors: Any, peers: tuple[str, ...] = ()) -> Any:
    root = tmp_path / "model"
    root.mkdir()
    write_random_tree(root, SIZES, seed=11)
    manifest = create_manifest(root, name="faults", piece_size=PIECE, sha1=True)
    mpath = tmp_path / "m.json"
    manifest.write(mpath)
    (mirror,) = start_mirrors(root, 1)
    cat = tmp_path / "cat.yaml"
    cat.write_text(f'version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: "{mirror.url}"\n')
    catalog = dsmirror.load_default_catalog({}, [cat], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "home")})
    pa = free_port()
    # a peer address nobody listens on: the pull has a swarm (its torrent runs) and no peer
    swarm = SwarmConfig(listen=addr(pa), peers=peers or (addr(free_port()),), lsd=False, seed=True)
    opts = PullOptions(dest=tmp_path / "a", reuse=False, swarm=swarm, prefer="p2p")
    plan = resolve(str(mpath), catalog, settings, opts)
    return root, manifest, plan, opts, settings, pa


def test_a_changed_installed_file_is_never_served(start_mirrors: Any, tmp_path: Path) -> None:
    _root, manifest, plan, opts, settings, pa = _pull_and_seed(tmp_path, start_mirrors)
    stop = threading.Event()
    seen: dict[str, Any] = {}
    states: list[str] = []
    real_seed = seed_mod.seed

    def seed_until_stopped(*args: Any, **kw: Any) -> Iterator[Event]:
        return real_seed(*args, **{**kw, "stop": stop, "interval": 0.1})

    def run_a() -> None:
        try:
            for ev in seed_mod.seed_after_pull(run_plan(plan, opts, settings=settings)):
                if isinstance(ev, SeedingStarted):
                    seen["seeding"] = True
                elif isinstance(ev, SeedStatus):
                    states.extend(t.state for t in ev.torrents)
        except BaseException as exc:  # reported below
            seen["error"] = exc

    seed_mod.seed = seed_until_stopped  # type: ignore[assignment]
    ta = threading.Thread(target=run_a, daemon=True)
    ta.start()
    failed: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while "seeding" not in seen and "error" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "seeding" in seen, seen
        # Someone changes one byte of the installed model (same size) while it is seeded.
        with open(tmp_path / "a" / "model.bin", "r+b") as fh:
            fh.seek(5 * PIECE + 100)
            old = fh.read(1)
            fh.seek(5 * PIECE + 100)
            fh.write(bytes([old[0] ^ 0xFF]))
        time.sleep(1.0)
        torrent = derived_torrent(manifest)
        assert torrent is not None
        ti = torrent.info()
        k = next(k for k, f in enumerate(torrent.files) if f.path == "model.bin")
        bad = int(ti.map_file(k, 5 * PIECE + 100, 1).piece)  # the torrent piece changed
        pb = free_port()
        ses_b = _peer(pb)
        atp = lt.add_torrent_params()
        atp.ti = torrent.info()
        atp.save_path = str(tmp_path / "b")
        atp.renamed_files = torrent.renamed_files()
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        hb = ses_b.add_torrent(atp)
        hb.connect_peer(("127.0.0.1", pa))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ses_b.wait_for_alert(50)
            for a in ses_b.pop_alerts():
                if isinstance(a, lt.hash_failed_alert):
                    failed.append(int(a.piece_index))
            if hb.status().num_pieces >= torrent.num_pieces - 1:
                deadline = min(deadline, time.monotonic() + 1.0)  # time to be sent the last one
        have = hb.status(lt.status_flags_t.query_pieces).pieces
    finally:
        stop.set()
        ta.join(30)
        seed_mod.seed = real_seed  # type: ignore[assignment]
    assert "error" not in seen, seen.get("error")
    assert failed == [], f"the seeder sent the changed piece(s) {failed}"
    # Not vacuous: the other pieces were served.
    assert sum(have) >= len(have) - 1, have
    assert not have[bad]


def test_a_copy_left_by_a_kill_after_the_install_is_removed_by_the_next_pull(
    start_mirrors: Any, tmp_path: Path
) -> None:
    root, manifest, unused, opts, settings, _ = _pull_and_seed(tmp_path, start_mirrors)
    for sw in unused.swarms:
        sw.close()
    opts = PullOptions(dest=opts.dest, reuse=False, swarm=SwarmConfig(enabled=False))
    catalog = dsmirror.load_default_catalog({}, [tmp_path / "cat.yaml"], replace=True)
    list(run_plan(resolve(str(tmp_path / "m.json"), catalog, settings, opts), opts, settings=settings))
    area = PrivateArea(tmp_path / "a").partial(manifest.sha256)
    # What a kill -9 between the install and the seeder's take-over leaves: libtorrent's copy.
    (area / "bt").mkdir(parents=True)
    (area / "bt" / "model.bin").write_bytes((root / "model.bin").read_bytes())
    (area / "bt.resume").write_bytes(b"d4:infoe")
    # While a seeder still uses it (it holds bt.lock), a pull leaves it alone.
    fd = os.open(area / "bt.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    again = resolve(str(tmp_path / "m.json"), catalog, settings, opts)
    assert any(isinstance(e, PullFinished) for e in run_plan(again, opts, settings=settings))
    assert (area / "bt" / "model.bin").is_file()
    os.close(fd)
    again = resolve(str(tmp_path / "m.json"), catalog, settings, opts)
    assert any(isinstance(e, PullFinished) for e in run_plan(again, opts, settings=settings))
    assert not (area / "bt").exists() and not (area / "bt.resume").exists()
    assert (tmp_path / "a" / "model.bin").read_bytes() == (root / "model.bin").read_bytes()


def test_a_magnet_pull_hands_its_torrent_over_too(start_mirrors: Any, tmp_path: Path) -> None:
    """A pull that knows only the info-hash (the metadata came from a peer) kept its copy in
    libtorrent's part file, so its torrent was removed and added again at the end of the pull:
    the peer lost its connection. Its copy is in plain files now, and it is handed over."""
    root = tmp_path / "model"
    root.mkdir()
    write_random_tree(root, {"model.bin": 5 * MiB + 7, "config.json": 500}, seed=12)
    manifest = create_manifest(root, name="magnet", piece_size=PIECE, sha1=True)
    torrent = create_torrent(manifest, root, verify=False)
    mpath = tmp_path / "m.json"
    manifest.write(mpath)
    (mirror,) = start_mirrors(root, 1, rate=4_000_000)
    cat = tmp_path / "cat.yaml"
    cat.write_text(f'version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: "{mirror.url}"\n')
    catalog = dsmirror.load_default_catalog({}, [cat], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "home")})
    pa, pb = free_port(), free_port()
    swarm = SwarmConfig(listen=addr(pa), peers=(addr(pb),), lsd=False, seed=True)
    opts = PullOptions(dest=tmp_path / "a", reuse=False, swarm=swarm, prefer="p2p")
    plan = resolve(str(mpath), catalog, settings, opts)
    for sw in plan.swarms:
        sw.close()
    plan.swarms[:] = [SwarmSource(manifest, config=swarm, magnet=torrent.magnet)]
    area = PrivateArea(tmp_path / "a").partial(manifest.sha256)

    # B: a libtorrent peer with the metadata and no piece, 1 MB/s: far from done at A's end.
    ses_b = _peer(pb)
    local = ses_b.get_peer_class(ses_b.local_peer_class_id)
    local["download_limit"] = 1_000_000
    ses_b.set_peer_class(ses_b.local_peer_class_id, local)
    atp = lt.add_torrent_params()
    atp.ti = torrent.info()
    atp.save_path = str(tmp_path / "b")
    atp.renamed_files = torrent.renamed_files()
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    hb = ses_b.add_torrent(atp)

    stop = threading.Event()
    when: dict[str, Any] = {}
    real_seed = seed_mod.seed

    def seed_until_stopped(*args: Any, **kw: Any) -> Iterator[Event]:
        return real_seed(*args, **{**kw, "stop": stop, "interval": 0.2})

    def run_a() -> None:
        try:
            for ev in seed_mod.seed_after_pull(run_plan(plan, opts, settings=settings)):
                if isinstance(ev, PullFinished):
                    when["finished"] = time.monotonic()
                elif isinstance(ev, SeedingStarted):
                    when["bt_left"] = (area / "bt").exists()
        except BaseException as exc:  # reported below
            when["error"] = exc

    seed_mod.seed = seed_until_stopped  # type: ignore[assignment]
    hb.connect_peer(("127.0.0.1", pa))
    ta = threading.Thread(target=run_a, daemon=True)
    try:
        ta.start()
        blocks, dropped, b_done = watch_until_seeding(ses_b, hb, lambda: "error" in when)
    finally:
        stop.set()
        ta.join(30)
        seed_mod.seed = real_seed  # type: ignore[assignment]
    assert "error" not in when, when.get("error")
    assert b_done
    assert (tmp_path / "b" / "model.bin").read_bytes() == (root / "model.bin").read_bytes()
    assert sum(t <= when["finished"] for t in blocks) * 16 * KiB < manifest.total_size / 2
    # Not counted: one of two connections dialled at once ("duplicate peer-id"), and A's dials
    # for the manifest's own swarm, which B is not in ("invalid info-hash").
    ignored = ("duplicate peer-id", "invalid info-hash")
    lost = [why for t, why in dropped if blocks[0] < t < blocks[-1] and not any(x in why for x in ignored)]
    assert lost == [], lost
    assert when["bt_left"] is False and not (area / "bt").exists()
