"""An office LAN in network namespaces (dsmirror.testing.netns): zero-configuration sharing.

Every host runs a real ``dsmirror pull`` with no ``--peer``, ``--listen`` or ``--torrent``: the
hosts find each other by LSD over the bridge and join the manifest's own swarm (the torrent derived
from the manifest). The upstream mirror is in its own namespace behind a shaped link; what it
served is read from its counters. Root only (CI); slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes
from dsmirror._verify.tree import create_manifest
from dsmirror.testing.netns import PYTHON_CLI, NetnsLan, leftovers, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

MiB = 1 << 20
RATE = 4_000_000  # bytes/s the upstream serves, all connections together


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    root = tmp_path_factory.mktemp("lan-model")
    files = root / "files"
    (files / "sub").mkdir(parents=True)
    rnd = hashlib.sha256(b"lan").digest()
    for name, size in (("model.bin", 20 * MiB), ("sub/extra.bin", 3 * MiB + 12345), ("config.json", 900)):
        with open(files / name, "wb") as f:
            block = rnd * (MiB // 32)
            left = size
            while left:
                f.write(block[: min(left, len(block))])
                block = hashlib.sha256(block[:64]).digest() * (MiB // 32)
                left -= min(left, len(block))
    m = create_manifest(files, name="lan-model", piece_size=MiB)
    m = with_torrent_hashes(m, [create_torrent(m, files, verify=False)])  # published for sharing
    mpath = root / "m.json"
    m.write(mpath)
    return files, mpath, m.total_size


def _outputs_ok(files: Path, dest: Path) -> bool:
    for p in files.rglob("*"):
        if p.is_file() and (dest / p.relative_to(files)).read_bytes() != p.read_bytes():
            return False
    return True


class Host:
    def __init__(self, lan: NetnsLan, k: int, work: Path, argv: list[str]) -> None:
        home = work / f"home{k}"
        env = {x: v for x, v in os.environ.items() if "proxy" not in x.lower()}
        for var, sub in (("XDG_CONFIG_HOME", "c"), ("XDG_STATE_HOME", "s"), ("XDG_CACHE_HOME", "k")):
            env[var] = str(home / sub)
        self.started = time.monotonic()
        self.finished: float | None = None
        self.result: dict[str, object] | None = None
        self.err = open(work / f"stderr{k}.txt", "w")  # noqa: SIM115 - closed by stop()
        self.proc = lan.popen(k, argv, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("event") == "PullFinished":
                self.finished = time.monotonic()
                self.result = ev

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()


@pytest.fixture
def lan3(tmp_path: Path) -> Iterator[NetnsLan]:
    lan = NetnsLan(3, uplink="200mbit")
    try:
        lan.build()
        yield lan
    finally:
        lan.close()
        assert leftovers(lan.tag) == []  # no namespace, veth or bridge left behind


def _pull_argv(mpath: Path | str, catalog: Path, dest: Path, *extra: str) -> list[str]:
    return [*PYTHON_CLI, "pull", str(mpath), "--mirrors", str(catalog), "--no-default-catalog",
            "--no-reuse", "--dest", str(dest), "--json", "--seed", *extra]  # fmt: skip


def _run(hosts: list[Host], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(h.finished is None for h in hosts):
        time.sleep(0.1)


@pytest.mark.parametrize(("prefer", "ref"), [("auto", "manifest"), ("p2p", "manifest"), ("auto", "alias")])
def test_three_hosts_share_with_no_configuration(
    lan3: NetnsLan, model: tuple[Path, Path, int], tmp_path: Path, prefer: str, ref: str
) -> None:
    """``dsmirror pull MANIFEST`` and ``dsmirror pull ALIAS`` (a catalog entry with a published
    manifest and an HTTP mirror), with the default ``--prefer auto`` and with ``p2p``."""
    files, mpath, size = model
    up = lan3.upstream(files, rate=RATE, stats=tmp_path / "stats.json")
    catalog = tmp_path / "cat.yaml"
    text = f'version: 1\nmirrors:\n  - name: upstream\n    kind: http\n    url: "{up.url}"\n'
    if ref == "alias":
        text += f'models:\n  "lan-model:1b":\n    manifest: "{mpath}"\n'
    catalog.write_text(text)
    what: Path | str = mpath if ref == "manifest" else "lan-model:1b"
    hosts = [
        Host(lan3, k, tmp_path, _pull_argv(what, catalog, tmp_path / f"d{k}", "--prefer", prefer))
        for k in range(3)
    ]
    try:
        _run(hosts, 120)
        served = up.bytes_served
    finally:
        for h in hosts:
            h.stop()
    times = [(h.finished or float("nan")) - h.started for h in hosts]
    print(f"upstream {served / size:.3f}x the model; one copy {size / RATE:.1f} s; hosts {times}")
    assert all(h.finished is not None for h in hosts), [h.proc.returncode for h in hosts]
    for k in range(3):
        assert _outputs_ok(files, tmp_path / f"d{k}")
    by = [h.result.get("delivered_by_source") if h.result else None for h in hosts]
    assert any(isinstance(b, dict) and b.get("swarm") for b in by), by  # they did share
    # Issue 13's floor is 1.05x (measured at its shape, 96 MiB, by scripts/bench_lan.py); at 23
    # pieces one piece is 4.3% of the model, so one piece fetched twice is allowed on top.
    floor = 1.05 * size + (1 << 20)
    assert served <= floor, f"upstream served {served / size:.3f}x the model (floor 1.05x + one piece)"
