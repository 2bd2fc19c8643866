"""An office LAN in network namespaces (dsmirror.testing.netns): zero-configuration sharing.

Every host runs a real ``dsmirror pull`` with no ``--peer``, ``--listen`` or ``--torrent``: the
hosts find each other by LSD over the bridge and join the manifest's own swarm (the torrent derived
from the manifest). The upstream mirror is in its own namespace behind a shaped link; what it
served is read from its counters. Root only (CI); slow. Host processes: ``tests/_lan_hosts.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _lan_hosts import Host, MiB, catalog, make_model, pull_argv, same_files, wait_all
from dsmirror._formats.manifest import Manifest
from dsmirror.testing.netns import NetnsLan, leftovers, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]

RATE = 4_000_000  # bytes/s the upstream serves, all connections together


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Manifest]:
    return make_model(tmp_path_factory.mktemp("lan-model"), 20 * MiB)


@pytest.fixture
def lan3(tmp_path: Path) -> Iterator[NetnsLan]:
    lan = NetnsLan(3, uplink="200mbit")
    try:
        lan.build()
        yield lan
    finally:
        lan.close()
        assert leftovers(lan.tag) == []  # no namespace, veth or bridge left behind


@pytest.mark.parametrize(("prefer", "ref"), [("auto", "manifest"), ("p2p", "manifest"), ("auto", "alias")])
def test_three_hosts_share_with_no_configuration(
    lan3: NetnsLan, model: tuple[Path, Path, Manifest], tmp_path: Path, prefer: str, ref: str
) -> None:
    """``dsmirror pull MANIFEST`` and ``dsmirror pull ALIAS`` (a catalog entry with a published
    manifest and an HTTP mirror), with the default ``--prefer auto`` and with ``p2p``."""
    files, mpath, manifest = model
    size = manifest.total_size
    up = lan3.upstream(files, rate=RATE, stats=tmp_path / "stats.json")
    cat = catalog(tmp_path / "cat.yaml", up.url)
    what = str(mpath)
    if ref == "alias":
        cat.write_text(cat.read_text() + f'models:\n  "lan-model:1b":\n    manifest: "{mpath}"\n')
        what = "lan-model:1b"
    hosts = [
        Host(
            lan3, k, tmp_path, f"h{k}", pull_argv(what, cat, tmp_path / f"d{k}", "--seed", "--prefer", prefer)
        )
        for k in range(3)
    ]
    try:
        wait_all(hosts, 120)
        served = up.bytes_served
    finally:
        for h in hosts:
            h.stop()
    times = [round(h.seconds, 1) for h in hosts]
    print(f"upstream {served / size:.3f}x the model; one copy {size / RATE:.1f} s; hosts {times}")
    assert all(h.finished is not None for h in hosts), [(h.proc.returncode, h.stderr_tail()) for h in hosts]
    for k in range(3):
        assert same_files(files, tmp_path / f"d{k}")
    by = [h.result.get("delivered_by_source") if h.result else None for h in hosts]
    assert any(isinstance(b, dict) and b.get("swarm") for b in by), by  # they did share
    # Issue 13's floor is 1.05x, measured at its shape (96 MiB) by scripts/bench_lan.py: 1.003x
    # to 1.007x for 3 and 4 hosts. Here one piece is 4.3% of the model, and up to two pieces were
    # seen fetched twice (8 of 9 runs: 1.000x; 1.087x once), so two pieces are allowed on top.
    floor = 1.05 * size + 2 * MiB
    assert served <= floor, f"upstream served {served / size:.3f}x the model (floor 1.05x + two pieces)"
