"""Faults on an office LAN in network namespaces (issue 13, item 5), with real ``dsmirror`` processes.

- a host SIGKILLed mid-pull: the others finish with the right bytes, and the upstream serves at
  most issue 13's 1.05x the model. A kill costs the pieces the killed host had in flight and the
  ones it verified that no peer had copied yet (one connection per machine while others pull,
  ``dsmirror._schedule.lan``: about one or two 1 MiB pieces), so the model is 63 MiB: 1.05x of
  the 15 MiB the other tests use is less than one piece;
- the killed host starts the same command again: it resumes (what it had verified is not fetched
  again) and finishes;
- a host that seeds corrupt pieces (a ``dsmirror seed`` of a folder whose files were damaged on
  disk after they were verified, with their times kept, as bit rot would): the pulling hosts ban
  it by address and install nothing wrong. That is a manifest without ``sha1`` (placeholder piece
  hashes, libtorrent checks nothing, dsmirror checks each finished piece): an honest host may relay
  a bad piece before its own check and be banned for it (an expected failure, when it happens);
- the same with a manifest with ``sha1`` (a real torrent, checked by libtorrent before a piece is
  kept or announced), the liar a plain libtorrent peer serving the damaged folder unchecked
  (``tests/_liar.py``; dsmirror's own seeder would not serve a piece that fails the torrent's
  hash): the liar is banned, no honest host is (asserted), nothing wrong is installed.

Every host finds the others by LSD over the bridge; none is told a peer. Root only (CI); slow.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _lan_hosts import Host, MiB, catalog, make_model, pull_argv, same_files, wait_all
from _liar import LIAR
from dsmirror import Manifest
from dsmirror._fetch.swarm.torrent import derived_torrent
from dsmirror.testing import MirrorServer
from dsmirror.testing.netns import PYTHON_CLI, NetnsLan, leftovers, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

RATE = 4_000_000  # bytes/s the upstream serves, all connections together
KILL_RATE = 8_000_000  # ... in the kill test (its model is bigger)
FLOOR = 1.05  # issue 13: the upstream serves at most this many copies


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Manifest]:
    return make_model(tmp_path_factory.mktemp("lan-faults-model"), 12 * MiB, seed=b"faults")


@pytest.fixture(scope="module")
def kill_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Manifest]:
    return make_model(tmp_path_factory.mktemp("lan-faults-kill"), 60 * MiB, seed=b"faults-kill")


@pytest.fixture(scope="module")
def sha1_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Manifest]:
    return make_model(tmp_path_factory.mktemp("lan-faults-sha1"), 12 * MiB, seed=b"faults-sha1", sha1=True)


@dataclasses.dataclass
class KillRun:
    size: int
    files: Path
    work: Path
    hosts: list[Host]  # hosts 0 and 1 pull on; host 2 is killed
    seen_before_kill: int  # the most verified bytes host 2 reported before the kill
    served_when_done: int  # upstream bytes when hosts 0 and 1 had finished
    again: Host  # host 2, the same command started again
    served_after: int  # upstream bytes when it had finished too


@pytest.fixture(scope="module")
def kill_run(
    kill_model: tuple[Path, Path, Manifest], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KillRun]:
    """Three hosts pull at once; host 2 is SIGKILLed a third of the way, then started again."""
    files, mpath, manifest = kill_model
    size = manifest.total_size
    work = tmp_path_factory.mktemp("lan-kill")
    lan = NetnsLan(3, uplink="200mbit")
    started: list[Host] = []
    try:
        lan.build()
        up = lan.upstream(files, rate=KILL_RATE, stats=work / "stats.json")
        cat = catalog(work / "cat.yaml", up.url)

        def argv(k: int) -> list[str]:  # --seed: a host that finished keeps serving the others
            return pull_argv(mpath, cat, work / f"d{k}", "--seed")

        started += [Host(lan, k, work, f"h{k}", argv(k)) for k in range(3)]
        victim = started[2]
        victim.wait_for(lambda e: e.get("event") == "Progress" and e["verified_bytes"] >= size // 3, 60)
        victim.kill()
        seen = max(e["verified_bytes"] for e in victim.of("Progress"))
        wait_all(started[:2], 120)
        served = up.bytes_served
        for h in started[:2]:  # the restart joins hosts that seed (pull --seed: after its pull)
            if h.finished is not None:
                h.wait_for(lambda e: e.get("event") == "SeedingStarted", 30)
        again = Host(lan, 2, work, "h2-again", argv(2), home="h2")
        started.append(again)
        wait_all([again], 120)
        yield KillRun(size, files, work, started[:3], seen, served, again, up.bytes_served)
    finally:
        for h in started:
            h.stop()
        lan.close()
        assert leftovers(lan.tag) == []  # no namespace, veth or bridge left behind


def test_a_host_killed_mid_pull_leaves_the_others_to_finish(kill_run: KillRun) -> None:
    run = kill_run
    h0, h1, victim = run.hosts
    assert victim.finished is None and victim.proc.returncode == -9  # it died mid-pull
    for h in (h0, h1):
        assert h.finished is not None, (h.name, h.proc.returncode, h.stderr_tail())
        assert same_files(run.files, run.work / f"d{h.name[1]}")
    ratio = run.served_when_done / run.size
    print(
        f"host 2 killed at {run.seen_before_kill / run.size:.0%} verified; the others took "
        f"{h0.seconds:.1f} s and {h1.seconds:.1f} s (one copy over the uplink: "
        f"{run.size / KILL_RATE:.1f} s); "
        f"upstream served {ratio:.3f}x the model by then"
    )
    assert ratio <= FLOOR, f"upstream served {ratio:.3f}x the model with a host killed (floor {FLOOR}x)"


def test_a_killed_host_restarts_and_resumes(kill_run: KillRun) -> None:
    run = kill_run
    again = run.again
    assert again.finished is not None, (again.proc.returncode, again.stderr_tail())
    assert same_files(run.files, run.work / "d2")
    (start,) = again.of("PullStarted")
    assert run.seen_before_kill >= run.size // 3
    # Every piece verified before the SIGKILL is verified at the restart, and not fetched again.
    assert start["verified_bytes"] >= run.seen_before_kill
    assert again.result is not None
    assert again.result["downloaded_bytes"] <= run.size - start["verified_bytes"]
    assert again.result["corrupt_bytes"] == 0
    late = run.served_after - run.served_when_done
    print(
        f"restarted with {start['verified_bytes'] / run.size:.0%} verified (had reported "
        f"{run.seen_before_kill / run.size:.0%}); fetched {again.result['downloaded_bytes'] / MiB:.1f} MiB "
        f"in {again.seconds:.1f} s, by source {again.result['delivered_by_source']}; "
        f"the upstream served {late / MiB:.1f} MiB of it (the others were seeding)"
    )
    dropped = [e["reason"] for e in again.of("SourceDropped") if e["source"] == "swarm"]
    assert not dropped, dropped  # was: "libtorrent cannot use its storage: ... partfile_read ..."
    # Issue 13 item 2: a host that joins while the others seed takes nothing from the upstream.
    # (The upstream's counters are rewritten every 0.1 s: what it served just before the others
    # finished may be counted late, hence the slack on its figure, not on the host's own.)
    assert again.result["delivered_by_source"].get("upstream", 0) == 0, again.result["delivered_by_source"]
    assert late <= 1 * MiB, late


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_host_seeding_corrupt_pieces_is_banned_and_nothing_wrong_is_installed(
    model: tuple[Path, Path, Manifest], tmp_path: Path
) -> None:
    files, mpath, manifest = model
    # The bad host's copy: a real pull (in the root namespace, from a loopback mirror, no LSD),
    # which keeps the manifest's torrent for `dsmirror seed`; then its bytes rot on disk.
    bad = tmp_path / "bad"
    with MirrorServer(files, host="127.0.0.1") as local:
        cat = catalog(tmp_path / "local.yaml", local.url)
        argv = pull_argv(
            mpath, cat, bad, "--prefer", "p2p", "--no-lsd", "--listen", f"127.0.0.1:{_free_port()}"
        )
        env = {x: v for x, v in os.environ.items() if "proxy" not in x.lower()}
        env["XDG_STATE_HOME"] = env["XDG_CONFIG_HOME"] = env["XDG_CACHE_HOME"] = str(tmp_path / "prep")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
    target = bad / "model.bin"
    st = target.stat()
    data = bytearray(target.read_bytes())
    for off in range(0, len(data), manifest.piece_size):  # one byte of every piece of the big file
        data[off + 1000] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # as bit rot: size and time unchanged

    lan = NetnsLan(3, uplink="200mbit")
    hosts: list[Host] = []
    try:
        lan.build()
        up = lan.upstream(files, rate=RATE, stats=tmp_path / "stats.json")
        cat = catalog(tmp_path / "cat.yaml", up.url)
        seeder = Host(lan, 2, tmp_path, "bad", [*PYTHON_CLI, "seed", str(bad), "--json"])
        hosts.append(seeder)
        seeder.wait_for(lambda e: e.get("event") == "SeedingStarted", 60)
        hosts += [
            Host(lan, k, tmp_path, f"h{k}", pull_argv(mpath, cat, tmp_path / f"d{k}", "--seed"))
            for k in (0, 1)
        ]
        pullers = hosts[1:]
        wait_all(pullers, 120)
        served = up.bytes_served
    finally:
        for h in hosts:
            h.stop()
        lan.close()
        assert leftovers(lan.tag) == []
    bad_addr, honest = lan.addresses[2], lan.addresses[:2]
    rejected, bans = [], []
    for h in pullers:
        assert h.finished is not None and h.result is not None, (h.name, h.proc.returncode, h.stderr_tail())
        assert same_files(files, tmp_path / f"d{h.name[1]}")  # nothing wrong installed
        assert h.result["corrupt_bytes"] == 0  # no bad piece reached the store
        rejected += [e["reason"] for e in h.of("PieceRejected")]
        bans += [(h.name, e["message"]) for e in h.of("SourceTrouble") if "banned peer" in e["message"]]
    assert rejected, "no host received a corrupt piece: the test proved nothing"
    assert any(f"banned peer {bad_addr}" in m for _, m in bans), bans
    uploaded = max((e.get("uploaded", 0) for e in seeder.of("SeedStatus")), default=0)
    honest_bans = [(n, m) for n, m in bans if any(f"banned peer {a}" in m for a in honest)]
    print(
        f"{len(rejected)} corrupt pieces rejected; bans {bans}; "
        f"the bad seeder uploaded {uploaded / MiB:.1f} MiB; "
        f"honest hosts banned (a piece relayed before its check): {honest_bans}; "
        f"upstream served {served / manifest.total_size:.3f}x the model; "
        f"by source {[h.result['delivered_by_source'] for h in pullers if h.result]}"
    )
    if honest_bans:  # docs/design/swarm.md, known gaps: served on in the moment before our check
        pytest.xfail(f"an honest host was banned: it relayed a corrupt piece before its check: {honest_bans}")


def test_with_sha1_a_liar_is_banned_and_no_honest_host_is(
    sha1_model: tuple[Path, Path, Manifest], tmp_path: Path
) -> None:
    files, mpath, manifest = sha1_model
    assert manifest.has_sha1
    torrent = derived_torrent(manifest)
    assert torrent is not None and torrent.derived is None  # a real torrent: libtorrent checks it
    tpath = tmp_path / "derived.torrent"
    torrent.write(tpath)
    bad = tmp_path / "bad"
    shutil.copytree(files, bad)
    target = bad / "model.bin"
    data = bytearray(target.read_bytes())
    for off in range(0, len(data), manifest.piece_size):  # one byte of every piece of the big file
        data[off + 1000] ^= 0xFF
    target.write_bytes(bytes(data))

    lan = NetnsLan(3, uplink="200mbit")
    hosts: list[Host] = []
    try:
        lan.build()
        up = lan.upstream(files, rate=RATE, stats=tmp_path / "stats.json")
        cat = catalog(tmp_path / "cat.yaml", up.url)
        liar = Host(
            lan, 2, tmp_path, "liar", [sys.executable, LIAR, str(tpath), str(bad), "0.0.0.0:6881", "--lsd"]
        )
        hosts.append(liar)
        liar.wait_for(lambda e: e.get("event") == "LiarReady", 60)
        hosts += [
            Host(lan, k, tmp_path, f"h{k}", pull_argv(mpath, cat, tmp_path / f"d{k}", "--seed"))
            for k in (0, 1)
        ]
        pullers = hosts[1:]
        wait_all(pullers, 120)
        served = up.bytes_served
    finally:
        for h in hosts:
            h.stop()
        lan.close()
        assert leftovers(lan.tag) == []
    bad_addr, honest = lan.addresses[2], lan.addresses[:2]
    rejected, bans = [], []
    for h in pullers:
        assert h.finished is not None and h.result is not None, (h.name, h.proc.returncode, h.stderr_tail())
        assert same_files(files, tmp_path / f"d{h.name[1]}")  # nothing wrong installed
        assert h.result["corrupt_bytes"] == 0  # libtorrent threw the bad pieces away
        rejected += [e["reason"] for e in h.of("PieceRejected")]
        bans += [(h.name, e["message"]) for e in h.of("SourceTrouble") if "banned peer" in e["message"]]
        dropped = [e["reason"] for e in h.of("SourceDropped") if e["source"] == "swarm"]
        assert not dropped, dropped
    uploaded = max((e.get("uploaded", 0) for e in liar.of("LiarStatus")), default=0)
    honest_bans = [(n, m) for n, m in bans if any(f"banned peer {a}:" in m for a in honest)]
    print(
        f"{len(rejected)} corrupt pieces rejected; bans {bans}; "
        f"the liar uploaded {uploaded / MiB:.1f} MiB; honest hosts banned: {honest_bans}; "
        f"upstream served {served / manifest.total_size:.3f}x the model; "
        f"by source {[h.result['delivered_by_source'] for h in pullers if h.result]}; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    assert rejected and uploaded > 0, "no host received a corrupt piece: the test proved nothing"
    assert any(f"banned peer {bad_addr}:" in m for _, m in bans), bans
    assert not honest_bans, honest_bans  # nobody relays a piece before libtorrent checked it
