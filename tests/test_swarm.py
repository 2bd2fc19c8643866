"""The BitTorrent swarm as a source, and seeding: real libtorrent sessions on loopback.

Seeders are ``dsmirror seed`` processes (or aria2c, or a deliberately corrupt libtorrent peer);
pulls run through the library so the test can read the plan's swarm counters afterwards. Every
session has LSD and DHT off and is told its peers with ``--peer``, so nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from _lan_sched import advance, lan_sched
from conftest import SWARM_PIECE, SWARM_SIZES, CliProcess, Swarmed, addr, free_port
from dsmirror import Event, PieceRejected, PullFinished, PullOptions, SourceTrouble
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.source import SwarmSource
from dsmirror._formats.private import PrivateArea
from dsmirror._pull import resolve, run_plan
from dsmirror._schedule.state import Assignment
from dsmirror._share.seed import seed_after_pull
from dsmirror.testing import MirrorServer

KiB = 1 << 10
MiB = 1 << 20
PIECE = SWARM_PIECE
SIZES = SWARM_SIZES


def _catalog(tmp: Path, mirrors: dict[str, MirrorServer]) -> dsmirror.Catalog:
    lines = ["version: 1", "mirrors:" if mirrors else ""]
    for name, m in mirrors.items():
        lines += [f"  - name: {name}", "    kind: http", f'    url: "{m.url}"']
    fd, name = tempfile.mkstemp(prefix="catalog", suffix=".yaml", dir=tmp)
    path = Path(name)
    os.close(fd)
    path.write_text("\n".join(lines) + "\n")
    return dsmirror.load_default_catalog({}, [path], replace=True)


def pull(
    tmp: Path,
    ref: str | Path,
    dest: Path,
    *,
    mirrors: dict[str, MirrorServer] | None = None,
    swarm: SwarmConfig,
    on_event: Callable[[Event], None] | None = None,
    **options: Any,
) -> tuple[list[Event], list[SwarmSource]]:
    """A library pull; returns its events and the plan's swarm sources (for their counters)."""
    catalog = _catalog(tmp, mirrors or {})
    settings = dsmirror.Settings.from_env({"HOME": str(tmp / "home")})
    opts = PullOptions(dest=dest, reuse=False, swarm=swarm, **options)
    plan = resolve(str(ref), catalog, settings, opts)
    events = []
    for ev in seed_after_pull(run_plan(plan, opts, settings=settings)):  # pull --seed: seeding after it
        events.append(ev)
        if on_event:
            on_event(ev)
    return events, [s for s in plan.swarms if isinstance(s, SwarmSource)]


def finished(events: list[Event]) -> PullFinished:
    done = [e for e in events if isinstance(e, PullFinished)]
    assert done, events[-3:]
    return done[-1]


def swarm_cfg(port: int, *peers: int, **kw: Any) -> SwarmConfig:
    return SwarmConfig(listen=addr(port), peers=tuple(addr(p) for p in peers), lsd=False, **kw)


# -- pulls ---------------------------------------------------------------------------------------
def test_pull_from_two_seeders_without_any_mirror(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(3)]
    seeds = [seeder(swarmed.torrent_path, swarmed.model.root, p) for p in ports[:2]]
    dest = tmp_path / "out"
    events, (sw,) = pull(
        tmp_path,
        swarmed.manifest_path,
        dest,
        swarm=swarm_cfg(ports[2], *ports[:2], torrent=swarmed.torrent_path),
    )
    done = finished(events)
    swarmed.model.assert_identical(dest)
    assert done.delivered_by_source == {"swarm": swarmed.model.total_size}
    assert done.redundant_bytes == 0 and done.corrupt_bytes == 0
    assert sw.stats.downloaded >= swarmed.model.total_size
    # libtorrent's copy is gone; the torrent is kept for `dsmirror seed DEST`.
    assert not any((dest / ".dsmirror" / "partial").glob("*/bt"))
    assert list((dest / ".dsmirror" / "torrents").glob("*.torrent"))
    # Both seeders served: their counters show uploads.
    for s in seeds:
        s.proc.send_signal(signal.SIGTERM)
    ups = []
    for s in seeds:
        assert s.finish(timeout=30) == 0, s.stderr
        stopped = [e for e in s.events if e["event"] == "SeedingStopped"]
        assert stopped, s.stdout[-3:]
        ups.append(stopped[-1]["uploaded"])
    assert all(u > 0 for u in ups) and sum(ups) >= swarmed.model.total_size, ups


def test_a_seeder_on_the_lan_leaves_the_mirror_idle(
    swarmed: Swarmed,
    seeder: Callable[..., CliProcess],
    start_mirrors: Callable[..., list[MirrorServer]],
    tmp_path: Path,
) -> None:
    """Issue 13: a machine that joins after the others finished takes nothing from outside."""
    ports = [free_port() for _ in range(2)]
    seeder(swarmed.torrent_path, swarmed.model.root, ports[0])
    (mirror,) = start_mirrors(swarmed.model.root, 1)
    dest = tmp_path / "out"
    events, _ = pull(
        tmp_path,
        swarmed.manifest_path,
        dest,
        mirrors={"m1": mirror},
        swarm=swarm_cfg(ports[1], ports[0], torrent=swarmed.torrent_path),
    )
    done = finished(events)
    swarmed.model.assert_identical(dest)
    assert done.delivered_by_source.get("swarm") == swarmed.model.total_size, done.delivered_by_source
    assert mirror.bytes_served == 0


def test_seeder_vanishing_mid_pull_leaves_its_pieces_to_the_mirror(
    swarmed: Swarmed,
    seeder: Callable[..., CliProcess],
    start_mirrors: Callable[..., list[MirrorServer]],
    tmp_path: Path,
) -> None:
    # The only peer is killed once the swarm has delivered a little: the spans the swarm holds
    # have no peer any more and go back to the mirror, and the pull completes from it.
    ports = [free_port() for _ in range(2)]
    seed = seeder(swarmed.torrent_path, swarmed.model.root, ports[0], "--upload-rate", "1500KB/s")
    (mirror,) = start_mirrors(swarmed.model.root, 1, rate=2_000_000)
    killed = threading.Event()

    def kill_when_swarm_delivered(ev: Event) -> None:
        if killed.is_set() or not isinstance(ev, dsmirror.Progress):
            return
        if any(s.name == "swarm" and s.delivered >= 2 * MiB for s in ev.sources):
            seed.proc.kill()
            killed.set()

    dest = tmp_path / "out"
    events, _ = pull(
        tmp_path,
        swarmed.manifest_path,
        dest,
        mirrors={"m1": mirror},
        swarm=swarm_cfg(ports[1], ports[0], torrent=swarmed.torrent_path),
        on_event=kill_when_swarm_delivered,
    )
    assert killed.is_set(), "the swarm never delivered 2 MiB"
    done = finished(events)
    swarmed.model.assert_identical(dest)
    by = done.delivered_by_source
    assert by["swarm"] >= 2 * MiB and by["m1"] >= 2 * MiB, by
    assert sum(by.values()) == swarmed.model.total_size


def _pull_a_thread(
    box: dict[str, Any], tmp_path: Path, swarmed: Swarmed, mirror: MirrorServer, swarm: Any
) -> threading.Thread:
    """Machine A's pull from ``mirror`` with ``swarm``, in a thread (not started): its result in
    ``box["a"]``, when it finished (PullFinished) and returned in ``a_done`` and ``a_exit``, or
    the error it raised in ``a_error``."""

    def run_a() -> None:
        try:
            box["a"] = pull(
                tmp_path,
                swarmed.manifest_path,
                tmp_path / "a",
                mirrors={"m1": mirror},
                swarm=swarm,
                on_event=lambda ev: (
                    box.setdefault("a_done", time.monotonic()) if isinstance(ev, PullFinished) else None
                ),
            )
            box["a_exit"] = time.monotonic()
        except BaseException as exc:  # reported by the test
            box["a_error"] = exc

    return threading.Thread(target=run_a, daemon=True)


def test_pieces_fetched_over_http_reach_peers_during_the_pull(
    swarmed: Swarmed, start_mirrors: Callable[..., list[MirrorServer]], tmp_path: Path
) -> None:
    """Two pulls at once: A from a mirror, B from A alone; B gets what A fetched while A pulls."""
    (mirror,) = start_mirrors(swarmed.model.root, 1, rate=8_000_000)
    pa, pb = free_port(), free_port()
    box: dict[str, Any] = {}
    ta = _pull_a_thread(
        box, tmp_path, swarmed, mirror, swarm_cfg(pa, pb, torrent=swarmed.torrent_path, seed=True)
    )

    # A seeds after its pull (pull --seed) until B is done: run it in a thread, stop it with a flag.
    from dsmirror._share import seed as _seed

    stop = threading.Event()
    real_seed = _seed.seed

    def seed_until_stopped(*args: Any, **kw: Any) -> Iterator[Event]:
        return real_seed(*args, **{**kw, "stop": stop})

    _seed.seed = seed_until_stopped  # type: ignore[assignment]
    try:
        ta.start()
        events_b, _ = pull(
            tmp_path,
            swarmed.manifest_path,
            tmp_path / "b",
            swarm=swarm_cfg(pb, pa, torrent=swarmed.torrent_path),
        )
        b_done_at = time.monotonic()
    finally:
        # Also when B failed: A's pull and seeding must not outlive the test (see conftest).
        stop.set()
        ta.join(30)
        _seed.seed = real_seed  # type: ignore[assignment]
    assert not ta.is_alive()
    assert "a_error" not in box, box.get("a_error")
    swarmed.model.assert_identical(tmp_path / "a")
    swarmed.model.assert_identical(tmp_path / "b")
    assert finished(events_b).delivered_by_source == {"swarm": swarmed.model.total_size}
    # The mirror sent the model about once: B's copy came from A, not from the mirror.
    assert mirror.bytes_served <= swarmed.model.total_size + 4 * PIECE
    assert b_done_at > 0


def test_a_pull_without_seed_stays_while_a_peer_still_needs_its_pieces(
    swarmed: Swarmed, start_mirrors: Callable[..., list[MirrorServer]], tmp_path: Path
) -> None:
    """A pulls from a mirror and uploads at half its download rate; B has no mirror, only A. A
    finishes without --seed while B lacks about half the model, which only A holds: A stays
    ("Leaving" in dsmirror._fetch.swarm.source) until B has it (at most 5 s), then exits. The old
    code removed A's torrent at once and B was left with no source."""
    (mirror,) = start_mirrors(swarmed.model.root, 1, rate=8_000_000)
    pa, pb = free_port(), free_port()
    box: dict[str, Any] = {}
    ta = _pull_a_thread(
        box, tmp_path, swarmed, mirror, swarm_cfg(pa, pb, torrent=swarmed.torrent_path, upload_rate=4_000_000)
    )
    deadline = time.monotonic() + 60

    def give_up(ev: Event) -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"B did not finish within 60 s (A exited: {'a_exit' in box}); last {ev}")

    ta.start()
    try:
        events_b, _ = pull(
            tmp_path,
            swarmed.manifest_path,
            tmp_path / "b",
            swarm=swarm_cfg(pb, pa, torrent=swarmed.torrent_path),
            on_event=give_up,
        )
        b_done = time.monotonic()
    finally:
        ta.join(30)
    assert not ta.is_alive()
    assert "a_error" not in box, box.get("a_error")
    swarmed.model.assert_identical(tmp_path / "a")
    swarmed.model.assert_identical(tmp_path / "b")
    assert finished(events_b).delivered_by_source == {"swarm": swarmed.model.total_size}
    (swarm_a,) = box["a"][1]
    assert swarm_a.stats.lingered  # A was still needed when it finished
    assert box["a_done"] < b_done <= box["a_exit"] + 1  # B finished while A stayed; A left then


BAD_SEEDER = textwrap.dedent(
    """
    import sys, time, libtorrent as lt
    torrent, folder, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ses = lt.session({"listen_interfaces": f"127.0.0.1:{port}", "enable_dht": False, "enable_lsd": False,
                      "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
                      "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True})
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = folder
    fs = atp.ti.layout()
    name = atp.ti.name()
    atp.renamed_files = {i: fs.file_path(i)[len(name) + 1:] for i in range(fs.num_files())
                         if not fs.file_flags(i) & lt.file_storage.flag_pad_file}
    # Claims every piece without checking (like trusted resume data over a damaged file).
    atp.have_pieces = [True] * atp.ti.num_pieces()
    atp.flags |= lt.torrent_flags.no_verify_files
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    ses.add_torrent(atp)
    print("ready", flush=True)
    while True:
        time.sleep(1)
    """
)


def test_corrupt_peer_is_banned_and_the_pull_completes(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    bad_root = tmp_path / "bad"
    shutil.copytree(swarmed.model.root, bad_root)
    for rel in SIZES:  # flip one byte in every piece of every file
        data = bytearray((bad_root / rel).read_bytes())
        for off in range(0, len(data), PIECE):
            data[off + min(100, len(data) - off - 1)] ^= 0xFF
        (bad_root / rel).write_bytes(bytes(data))
    bad_port, good_port, me = free_port(), free_port(), free_port()
    bad = subprocess.Popen(
        [sys.executable, "-c", BAD_SEEDER, str(swarmed.torrent_path), str(bad_root), str(bad_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert bad.stdout is not None and bad.stdout.readline().strip() == "ready"
        started = threading.Event()

        def start_good(ev: Event) -> None:
            # The good seeder comes up after the pull started, so the bad one serves first.
            if isinstance(ev, (PieceRejected, SourceTrouble)) and not started.is_set():
                started.set()
                seeder(swarmed.torrent_path, swarmed.model.root, good_port)

        events, (sw,) = pull(
            tmp_path,
            swarmed.manifest_path,
            tmp_path / "out",
            swarm=swarm_cfg(me, bad_port, good_port, torrent=swarmed.torrent_path),
            on_event=start_good,
        )
    finally:
        bad.kill()
        bad.wait(10)
    swarmed.model.assert_identical(tmp_path / "out")
    troubles = [e for e in events if isinstance(e, SourceTrouble) and "banned peer" in e.message]
    assert troubles and addr(bad_port) in troubles[0].message
    assert [e for e in events if isinstance(e, PieceRejected)]
    assert sw.stats.banned_peers >= 1 and sw.stats.failed > 0
    assert finished(events).corrupt_bytes == 0  # libtorrent threw them away; none reached the store


# -- interop -------------------------------------------------------------------------------------
ARIA2 = shutil.which("aria2c")
ARIA2_BASE = [
    "--no-conf=true",
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--file-allocation=none",
]


@pytest.mark.slow
@pytest.mark.skipif(ARIA2 is None, reason="aria2c is not installed")
def test_aria2c_downloads_a_v1_torrent_from_dsmirror_seed(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    aria_port, seed_port = free_port(), free_port()
    # aria2 cannot be told a peer: the seeder dials aria2's listen port.
    seeder(swarmed.v1_path, swarmed.model.root, seed_port, "--peer", addr(aria_port))
    out = tmp_path / "aria"
    r = subprocess.run(
        [
            ARIA2 or "aria2c",
            *ARIA2_BASE,
            f"--listen-port={aria_port}",
            "--seed-time=0",
            "-d",
            str(out),
            str(swarmed.v1_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    swarmed.model.assert_identical(out / swarmed.v1.name)


@pytest.mark.slow
@pytest.mark.skipif(ARIA2 is None, reason="aria2c is not installed")
def test_pull_from_a_seeding_aria2c(swarmed: Swarmed, tmp_path: Path) -> None:
    aria_port, me = free_port(), free_port()
    # aria2 keeps BEP 47 pad files as plain zero-filled files; lay the folder out as it would.
    seed_dir = tmp_path / "aria-seed"
    shutil.copytree(swarmed.model.root, seed_dir / swarmed.v1.name)
    for f in swarmed.v1.files:
        if f.pad:
            p = seed_dir / swarmed.v1.name / f.path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(bytes(f.size))
    aria = subprocess.Popen(
        [
            ARIA2 or "aria2c",
            *ARIA2_BASE,
            f"--listen-port={aria_port}",
            "--check-integrity=true",
            "--seed-ratio=0.0",
            "--seed-time=5",
            "-d",
            str(seed_dir),
            str(swarmed.v1_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        events, _ = pull(
            tmp_path,
            swarmed.manifest_path,
            tmp_path / "out",
            swarm=swarm_cfg(me, aria_port, torrent=swarmed.v1_path),
        )
    finally:
        aria.kill()
        aria.wait(10)
    swarmed.model.assert_identical(tmp_path / "out")
    assert finished(events).delivered_by_source == {"swarm": swarmed.model.total_size}


# -- references and the command line ------------------------------------------------------------
def test_magnet_of_a_catalog_model_gets_metadata_from_the_swarm(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    sp, me = free_port(), free_port()
    seeder(swarmed.torrent_path, swarmed.model.root, sp)
    cat = tmp_path / "models.yaml"
    cat.write_text(
        "version: 1\nmodels:\n  tiny:\n"
        f'    manifest: {swarmed.manifest_path}\n    magnet: "{swarmed.hybrid.magnet}"\n'
    )
    catalog = dsmirror.load_default_catalog({}, [cat], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp_path / "home")})
    opts = PullOptions(dest=tmp_path / "out", reuse=False, swarm=swarm_cfg(me, sp))
    events = list(dsmirror.pull(swarmed.hybrid.magnet, catalog=catalog, settings=settings, options=opts))
    swarmed.model.assert_identical(tmp_path / "out")
    assert finished(events).delivered_by_source == {"swarm": swarmed.model.total_size}
    # A magnet the catalog does not know is pulled from peers alone (test_swarm_only); with
    # --no-p2p there is no source for it at all.
    other = swarmed.v1.magnet.replace(swarmed.v1.btih or "", "1" * 40)
    plan = resolve(other, catalog, settings, opts)
    assert plan.swarm_only is not None and not plan.swarms and not plan.sources
    with pytest.raises(dsmirror.UsageError, match="no manifest"):
        resolve(other, catalog, settings, PullOptions(swarm=SwarmConfig(enabled=False)))


def test_pull_seed_serves_the_next_pull_and_stops_cleanly(
    swarmed: Swarmed,
    spawn_cli: Callable[..., CliProcess],
    start_mirrors: Callable[..., list[MirrorServer]],
    tmp_path: Path,
) -> None:
    (mirror,) = start_mirrors(swarmed.model.root, 1)
    cat = tmp_path / "m.yaml"
    cat.write_text(f'version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: "{mirror.url}"\n')
    pa, pb = free_port(), free_port()
    a = spawn_cli(
        "pull",
        swarmed.manifest_path,
        "-d",
        tmp_path / "a",
        "--mirrors",
        cat,
        "--no-default-catalog",
        "--torrent",
        swarmed.torrent_path,
        "--listen",
        addr(pa),
        "--no-lsd",
        "--seed",
        "--json",
        "--no-reuse",
    )
    a.wait_event("PullFinished", timeout=60)
    a.wait_event("SeedingStarted", timeout=30)
    served = mirror.bytes_served
    events, _ = pull(tmp_path, swarmed.manifest_path, tmp_path / "b", swarm=swarm_cfg(pb, pa))
    swarmed.model.assert_identical(tmp_path / "b")
    assert finished(events).delivered_by_source == {"swarm": swarmed.model.total_size}
    assert mirror.bytes_served == served
    a.proc.send_signal(signal.SIGTERM)
    assert a.finish(timeout=30) == 0, a.stderr
    assert a.events[-1]["event"] == "SeedingStopped" and a.events[-1]["uploaded"] >= swarmed.model.total_size
    # `dsmirror seed DEST` finds the torrent the pull saved.
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dsmirror._share.seed import seed_targets_in; from pathlib import Path; "
            f"print([t.name for t in seed_targets_in(Path({str(tmp_path / 'a')!r}))])",
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=30,
    )
    assert swarmed.hybrid.name in r.stdout


def test_seed_refuses_a_folder_that_does_not_hold_the_files(
    swarmed: Swarmed,
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    one_line_error: Callable[..., str],
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("seed", swarmed.torrent_path, "--from", empty, "--no-lsd", "--listen", addr(free_port()))
    assert r.returncode == 7
    one_line_error(r, "missing")
    r = run_cli("seed", empty)
    assert r.returncode == 2
    r = run_cli("pull", swarmed.manifest_path, "--peer", "nonsense")
    assert r.returncode == 2
    one_line_error(r, "cannot read address")


@pytest.mark.slow
def test_interrupted_swarm_pull_resumes(
    swarmed: Swarmed, seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    sp, me = free_port(), free_port()
    seeder(swarmed.torrent_path, swarmed.model.root, sp, "--upload-rate", "4MB/s")
    dest = tmp_path / "out"

    class Enough(Exception):
        pass

    def stop_halfway(ev: Event) -> None:
        if isinstance(ev, dsmirror.Progress) and ev.verified_bytes > swarmed.model.total_size // 3:
            raise Enough

    with pytest.raises(Enough):
        pull(
            tmp_path,
            swarmed.manifest_path,
            dest,
            swarm=swarm_cfg(me, sp, torrent=swarmed.torrent_path),
            on_event=stop_halfway,
        )
    area = next((dest / ".dsmirror" / "partial").iterdir())
    assert (area / "bt.resume").is_file() and (area / "bt").is_dir()
    events, (sw,) = pull(
        tmp_path, swarmed.manifest_path, dest, swarm=swarm_cfg(me, sp, torrent=swarmed.torrent_path)
    )
    done = finished(events)
    swarmed.model.assert_identical(dest)
    assert done.reused_bytes > 0 and done.downloaded_bytes < swarmed.model.total_size
    assert sw.stats.downloaded < swarmed.model.total_size


def test_a_pull_whose_libtorrent_copy_is_complete_takes_it_with_no_peer_and_no_mirror(
    swarmed: Swarmed, tmp_path: Path
) -> None:
    """libtorrent holds every piece (its bt/ copy) while the store holds none: the pull takes them.

    A torrent with every piece is a seed, and a seed has no piece picker, so libtorrent reports no
    availability. Its own copy must still reach the scheduler's view of what the swarm can get;
    otherwise a pull with no mirror never hands the swarm a piece and gives up. The same stall hit
    a pull whose last piece made libtorrent a seed between two peer scans, now and then: B in
    test_pieces_fetched_over_http_reach_peers_during_the_pull.
    """
    dest = tmp_path / "out"
    bt = PrivateArea(dest).partial(swarmed.manifest.sha256) / "bt"  # no bt.resume: libtorrent checks it
    for rel in swarmed.model.sizes:
        (bt / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(swarmed.model.root / rel, bt / rel)
    events, (sw,) = pull(
        tmp_path,
        swarmed.manifest_path,
        dest,
        swarm=swarm_cfg(free_port(), torrent=swarmed.torrent_path),
        give_up_after=15,
    )
    done = finished(events)
    swarmed.model.assert_identical(dest)
    assert done.delivered_by_source == {"swarm": swarmed.model.total_size}
    assert sw.stats.downloaded == 0  # from its own copy: there was no peer


# -- the scheduler's view of the swarm (Scheduler.set_peer_pieces) ---------------------


def _sched(
    n: int, prefer: str = "auto", *, clock: dsmirror.FakeClock | None = None
) -> tuple[dsmirror.Scheduler, bytearray]:
    return lan_sched(n, prefer=prefer, clock=clock)


_advance = advance


def _met(s: dsmirror.Scheduler, me: str, others: list[str], peers: int | None = None) -> None:
    """The swarm met its peers and the set held still (``lan_settle``)."""
    s.set_lan_hosts("swarm", me, others, len(others) if peers is None else peers)
    _advance(s, 0.5)


def _take_all(s: dsmirror.Scheduler, name: str, limit: int = 400) -> set[int]:
    """Acquire and finish spans of ``name`` until it gets no more work; the pieces it got."""
    got: set[int] = set()
    for _ in range(limit):
        a = s.acquire(name)
        if not isinstance(a, Assignment):
            break
        for k in range(a.start, a.end):
            _advance(s, 0.1)
            s.progress(a, MiB)
            got.add(k)
            if not s.piece_verified(a, k):
                break
        s.release(a)
    return got


IDS = ["-DS0200-Maaaaaaaaaaa", "-DS0200-Mbbbbbbbbbbb", "-DS0200-Mccccccccccc"]


@pytest.mark.parametrize("prefer", ["auto", "p2p"])
def test_machines_of_a_lan_fetch_disjoint_blocks_from_outside(prefer: str) -> None:
    """Three machines that see each other split the model with no message between them: each
    mirror fetches only its own machine's blocks, and together they cover every piece once."""
    fetched = []
    for me in IDS:
        s, _ = _sched(192, prefer)
        _met(s, me, [x for x in IDS if x != me])
        fetched.append(_take_all(s, "upstream"))
    assert all(30 < len(f) < 100 for f in fetched), [len(f) for f in fetched]
    assert set().union(*fetched) == set(range(192))
    assert sum(len(f) for f in fetched) == 192  # disjoint


def test_mirrors_of_a_lan_pull_wait_to_meet_the_peers() -> None:
    s, _ = _sched(32)  # 32 blocks: a machine alone waits lan_grace
    _advance(s, 1.0)
    s.set_lan_hosts("swarm", IDS[0], [], 0)  # the swarm is ready (its copy checked), no peer yet
    assert isinstance(s.acquire("upstream"), float)
    _advance(s, 1.5)
    assert isinstance(s.acquire("upstream"), float)
    _advance(s, 0.6)  # lan_grace after it was ready: alone on its LAN, it goes ahead
    assert isinstance(s.acquire("upstream"), Assignment)
    # 64 blocks or more: alone, one connection starts at once, in the machine's best block
    s1, _ = _sched(64)
    s1.set_lan_hosts("swarm", IDS[0], [], 0)
    assert isinstance(s1.acquire("upstream"), float)  # seeders announce every second
    _advance(s1, 1.0)
    assert isinstance(s1.acquire("upstream"), float)  # a seeder may not have announced yet
    _advance(s1, 0.12)  # a second and a tenth (was a second and a quarter)
    first = s1.acquire("upstream")
    assert isinstance(first, Assignment) and first.end - first.start == 1
    assert isinstance(s1.acquire("upstream"), float)  # the others wait for lan_grace
    _advance(s1, 0.9)
    assert isinstance(s1.acquire("upstream"), Assignment)
    other = _sched(64)[0]
    other.set_lan_hosts("swarm", IDS[1], [], 0)
    _advance(other, 1.12)
    second = other.acquire("upstream")
    assert isinstance(second, Assignment) and second.start != first.start  # another machine, elsewhere
    s2, _ = _sched(64)
    s2.set_lan_hosts("swarm", IDS[0], IDS[1:2], 1)
    met = s2.acquire("upstream")  # met a machine pulling too: one connection before the set holds still
    assert isinstance(met, Assignment) and met.end - met.start == 1
    _advance(s2, 0.5)
    assert isinstance(s2.acquire("upstream"), float)  # one connection each while both pull


def test_mirrors_wait_for_a_swarm_that_checks_its_copy_but_not_forever() -> None:
    """A resumed pull's swarm checks libtorrent's copy before it is ready; mirrors that started
    meanwhile would fetch what seeders of the LAN have. A swarm never ready is not waited for."""
    s, _ = _sched(64)
    _advance(s, 9.0)
    assert isinstance(s.acquire("upstream"), float)
    _advance(s, 1.5)  # lan_ready_wait
    assert isinstance(s.acquire("upstream"), Assignment)


def test_a_mirror_leaves_what_peers_have_to_the_swarm_until_the_swarm_stalls() -> None:
    s, have = _sched(32)
    have[:] = b"\x01" * 32  # a seed on the LAN has everything
    _met(s, IDS[0], [], peers=1)
    assert isinstance(s.acquire("upstream"), float)  # nothing for the uplink
    assert isinstance(s.acquire("swarm"), Assignment)
    _advance(s, 3.0)
    s.tick()
    assert isinstance(s.acquire("upstream"), float)  # a LAN piece late for 3 s: still the LAN's
    _advance(s, 6.0)
    s.tick()  # nothing from the swarm for lan_stall s while it held work: mirrors may help
    assert isinstance(s.acquire("upstream"), Assignment)


def test_a_machine_that_leaves_hands_its_blocks_to_the_others() -> None:
    s, _ = _sched(192)
    _met(s, IDS[0], IDS[1:])
    first = _take_all(s, "upstream")
    s.set_lan_hosts("swarm", IDS[0], IDS[1:2], 1)  # c is gone (killed, or turning into a seed)
    assert not _take_all(s, "upstream")  # its blocks stay its own for lan_handover s
    _advance(s, 3.1)
    more = _take_all(s, "upstream")
    assert more and not (first & more)
    # b's view of the two machines left agrees on who takes which.
    b, _ = _sched(192)
    _met(b, IDS[1], IDS[:1])
    assert not (_take_all(b, "upstream") & (first | more))


def test_a_quiet_owner_does_not_hold_the_pull_forever() -> None:
    """A machine counted as pulling whose uplink broke: once this one's blocks are done and
    nothing was verified for lan_stall s, its mirror takes the others' pieces, from the far end."""
    s, _ = _sched(64)
    _met(s, IDS[0], IDS[1:2])
    mine = _take_all(s, "upstream")
    assert len(mine) < 64 and isinstance(s.acquire("upstream"), float)
    _advance(s, 9.0)
    a = s.acquire("upstream")
    assert isinstance(a, Assignment) and a.start == max(set(range(64)) - mine)


def test_a_mirror_span_stops_where_peers_got_the_pieces() -> None:
    s, have = _sched(64, "p2p")
    _met(s, IDS[0], [], peers=1)
    m = s.acquire("upstream")
    assert isinstance(m, Assignment)
    s.progress(m, 1)
    _advance(s, 1.1)
    s.progress(m, MiB - 1)  # measured: spans of several pieces from now on
    s.piece_verified(m, m.start)
    s.release(m)
    m2 = s.acquire("upstream")  # in this machine's best block left (blocks of one piece here)
    assert isinstance(m2, Assignment)
    assert m2.end - m2.start >= 2
    have[m2.start + 1] = 1  # another machine delivered the next piece meanwhile
    s.progress(m2, MiB)
    assert s.piece_verified(m2, m2.start) is False
    s.release(m2)
    sw = s.acquire("swarm")
    assert isinstance(sw, Assignment) and sw.start == m2.start + 1


def test_mirrors_take_what_peers_have_when_the_swarm_stops_asking() -> None:
    """A swarm whose loop ended (it neither holds work nor asks for any) must not leave the
    pieces its peers have to nobody: after lan_stall s the mirrors take them."""
    s, have = _sched(16)
    have[:] = b"\x01" * 16
    _met(s, IDS[0], [], peers=1)
    assert isinstance(s.acquire("upstream"), float)
    _advance(s, 5.0)
    s.tick()
    assert isinstance(s.acquire("upstream"), float)  # not yet
    _advance(s, 4.0)
    s.tick()
    assert isinstance(s.acquire("upstream"), Assignment)


def test_a_slow_looking_swarm_still_gets_the_last_pieces_its_peers_have() -> None:
    """The tail rule refuses a piece to a source that would decide the finishing time; in a LAN
    pull nobody else takes a piece peers have, so refusing it to the swarm stalled the pull."""
    s, have = _sched(8)
    _met(s, IDS[0], [], peers=1)
    m = s.acquire("upstream")  # the mirror measures 10 MiB/s on a piece of its own
    assert isinstance(m, Assignment)
    s.progress(m, 1)
    _advance(s, 1.1)
    s.progress(m, 10 * MiB)
    s.piece_verified(m, m.start)
    s.release(m)
    s.set_prior("swarm", 100e3)  # a swarm that looked slow (pieces trickled in from its peers)
    have[:] = b"\x01" * 8
    assert isinstance(s.acquire("upstream"), float)  # what peers have is the LAN's
    got = s.acquire("swarm")
    assert isinstance(got, Assignment), got
