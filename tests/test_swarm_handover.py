"""A machine that seeds is reachable at once by the machines still pulling.

``pull --seed`` hands its running torrent to the seeder: a peer still pulling keeps its
connection to the machine that finished, and keeps receiving from it, with no gap. And a
``dsmirror seed`` started by hand is in the swarm those pulls are in.

A pulls a model from a mirror with ``--seed``; B, a plain libtorrent session throttled to
1 MB/s, takes the whole model from A alone, so it is far from done when A's pull ends. Before the
hand-over A removed its torrent at the end of the pull and the seeder added it again: B lost the
connection and got nothing until one of them dialled again (1.5-3 s). Both kinds of swarm of the
manifest run: its own torrent with real piece hashes (a session with libtorrent's checks on) and
with placeholder ones (a trusting session; see ``dsmirror._fetch.swarm.session``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

import dsmirror
from _swarm_peer import watch_until_seeding
from conftest import addr, free_port
from dsmirror import Event, PullFinished, PullOptions
from dsmirror._fetch.swarm.config import SeedingStarted, SeedStatus, SwarmConfig
from dsmirror._fetch.swarm.torrent import create_torrent, derived_torrent, with_torrent_hashes
from dsmirror._formats.private import PrivateArea
from dsmirror._pull import resolve, run_plan
from dsmirror._share import seed as seed_mod
from dsmirror._verify.tree import create_manifest
from dsmirror.testing import write_random_tree

KiB, MiB = 1 << 10, 1 << 20
SIZES = {"model.bin": 5 * MiB + 7, "sub/extra.bin": 3 * MiB + 1, "config.json": 500}
B_RATE = 1_000_000  # B's download limit: about 8.4 s for the model; A's pull takes 2-3


def _peer_b(port: int, trusting: bool) -> Any:
    settings = {
        "listen_interfaces": addr(port),
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        "download_rate_limit": B_RATE,
        "tick_interval": 100,  # the rate limiter hands out quota every tick (500 ms by default)
        "alert_mask": lt.alert_category.peer
        | lt.alert_category.connect
        | lt.alert_category.error
        | lt.alert_category.status
        | lt.alert_category.block_progress,
        # the placeholder piece hashes are no SHA-1s of the pieces (dsmirror's own peers check them)
        "disable_hash_checks": trusting,
    }
    ses = lt.session(settings)
    # libtorrent exempts LAN (and loopback) peers from rate limits unless told otherwise
    local = ses.get_peer_class(ses.local_peer_class_id)
    local["download_limit"] = B_RATE
    ses.set_peer_class(ses.local_peer_class_id, local)
    return ses


@pytest.mark.parametrize("sha1", [True, False], ids=["real-hashes", "placeholder-hashes"])
def test_a_peer_keeps_its_connection_and_its_bytes_across_the_seed_hand_over(
    start_mirrors: Any, tmp_path: Path, sha1: bool
) -> None:
    root = tmp_path / "model"
    root.mkdir()
    write_random_tree(root, SIZES, seed=7)
    manifest = create_manifest(root, name="handover", piece_size=256 * KiB, sha1=sha1)
    mpath = tmp_path / "m.json"
    manifest.write(mpath)
    torrent = derived_torrent(manifest)
    assert torrent is not None and bool(torrent.derived) != sha1
    (mirror,) = start_mirrors(root, 1, rate=4_000_000)
    pa, pb = free_port(), free_port()

    ses_b = _peer_b(pb, trusting=not sha1)
    atp = lt.add_torrent_params()
    atp.ti = torrent.info()
    atp.save_path = str(tmp_path / "b")
    atp.renamed_files = torrent.renamed_files()
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    hb = ses_b.add_torrent(atp)

    cat = tmp_path / "cat.yaml"
    cat.write_text(f'version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: "{mirror.url}"\n')
    catalog = dsmirror.load_default_catalog({}, [cat], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "home")})
    swarm = SwarmConfig(listen=addr(pa), peers=(addr(pb),), lsd=False, seed=True)
    opts = PullOptions(dest=tmp_path / "a", reuse=False, swarm=swarm, prefer="p2p")
    plan = resolve(str(mpath), catalog, settings, opts)
    area = PrivateArea(tmp_path / "a").partial(manifest.sha256)

    stop = threading.Event()
    when: dict[str, float] = {}
    states: list[str] = []
    box: dict[str, BaseException] = {}
    real_seed = seed_mod.seed

    def seed_until_stopped(*args: Any, **kw: Any) -> Iterator[Event]:
        return real_seed(*args, **{**kw, "stop": stop, "interval": 0.2})

    def run_a() -> None:
        try:
            for ev in seed_mod.seed_after_pull(run_plan(plan, opts, settings=settings)):
                if isinstance(ev, PullFinished):
                    when["finished"] = time.monotonic()
                elif isinstance(ev, SeedingStarted):
                    when["seeding"] = time.monotonic()
                    when["bt_left"] = float((area / "bt").exists())
                elif isinstance(ev, SeedStatus):
                    states.extend(t.state for t in ev.torrents)
        except BaseException as exc:  # reported below
            box["error"] = exc

    seed_mod.seed = seed_until_stopped  # type: ignore[assignment]
    hb.connect_peer(("127.0.0.1", pa))
    ta = threading.Thread(target=run_a, daemon=True)
    try:
        ta.start()
        blocks, dropped, b_done = watch_until_seeding(ses_b, hb, lambda: "error" in box)
    finally:
        stop.set()
        ta.join(30)
        seed_mod.seed = real_seed  # type: ignore[assignment]
        del ses_b
    assert not ta.is_alive()
    assert "error" not in box, box.get("error")
    assert b_done, f"B did not finish: {len(blocks)} blocks of {manifest.total_size} bytes"
    for rel in SIZES:
        assert (tmp_path / "b" / rel).read_bytes() == (root / rel).read_bytes(), rel
        assert (tmp_path / "a" / rel).read_bytes() == (root / rel).read_bytes(), rel
    finished = when["finished"]
    # Not vacuous: B had at most half the model when A's pull ended, and took the rest from A's
    # seeder (the mirror served the model once).
    assert sum(t <= finished for t in blocks) * 16 * KiB < manifest.total_size / 2
    assert mirror.bytes_served <= manifest.total_size + 256 * KiB
    # The hand-over: B's connection to A never closed (removing the torrent and adding it again
    # broke it, "Broken pipe", and B got nothing until one side dialled again). Not counted: of
    # two connections dialled at once one closes as a "duplicate peer-id", and B closes its own
    # to a seed once it is one too (after its last block).
    lost = [
        f"{t - finished:+.2f} s: {why}"
        for t, why in dropped
        if blocks[0] < t < blocks[-1] and "duplicate peer-id" not in why
    ]
    assert lost == [], lost
    # libtorrent's copy was deleted when the seeder took the torrent over; it seeds the install.
    assert when["bt_left"] == 0.0 and not (area / "bt").exists() and not (area / "bt.resume").exists()
    assert states and set(states) == {"seeding"}, states


def test_a_seed_started_by_hand_is_in_the_swarm_of_pulls_that_know_no_torrent(
    seeder: Any, start_mirrors: Any, tmp_path: Path
) -> None:
    """``dsmirror seed MANIFEST --from DIR`` seeds the published (hybrid) torrent and the
    manifest's own swarm, where pulls that know no torrent meet (every LAN pull of a published
    manifest): such a pull takes the whole model from it. It seeded the hybrid one alone before,
    and was never found: the pull took everything from the mirror."""
    root = tmp_path / "model"
    root.mkdir()
    write_random_tree(root, SIZES, seed=8)
    manifest = create_manifest(root, name="by-hand", piece_size=256 * KiB, sha1=True)
    manifest = with_torrent_hashes(manifest, [create_torrent(manifest, root, verify=False)])
    mpath = tmp_path / "m.json"
    manifest.write(mpath)
    ps, pp = free_port(), free_port()
    seeder(mpath, root, ps)
    (mirror,) = start_mirrors(root, 1)
    cat = tmp_path / "cat.yaml"
    cat.write_text(f'version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: "{mirror.url}"\n')
    catalog = dsmirror.load_default_catalog({}, [cat], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "home")})
    swarm = SwarmConfig(listen=addr(pp), peers=(addr(ps),), lsd=False)
    opts = PullOptions(dest=tmp_path / "out", reuse=False, swarm=swarm)
    plan = resolve(str(mpath), catalog, settings, opts)
    (sw,) = plan.swarms
    assert sw.torrent is not None and sw.torrent.btih == derived_torrent(manifest).btih  # type: ignore[union-attr]
    done = [e for e in run_plan(plan, opts, settings=settings) if isinstance(e, PullFinished)]
    for rel in SIZES:
        assert (tmp_path / "out" / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert done[-1].delivered_by_source.get("swarm") == manifest.total_size, done[-1].delivered_by_source
    assert mirror.bytes_served == 0
