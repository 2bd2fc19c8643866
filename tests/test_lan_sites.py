"""Two offices joined by a throttled inter-site link find each other through a real tracker (issue 13,
item 4), in network namespaces (dsmirror.testing.netns.NetnsSites).

Each site is a bridge with two hosts and a router; the routers are joined by a shaped link and
reach a WAN where the origin mirror and Debian's ``opentracker`` run, each in its own namespace.
Routers forward unicast only, so LSD finds peers within a site and never across: hosts of the
other site can only be learnt from the tracker, which the catalog names as a mirror of kind
``bittorrent`` (the swarm's trackers). The tracker tracks only whitelisted info-hashes: the
manifest's own swarm (the v1 torrent derived from the manifest). Every host runs a plain
``dsmirror pull MANIFEST`` (no ``--peer``, ``--listen`` or ``--torrent``). Root only (CI); slow.
"""

from __future__ import annotations

import sys
import urllib.parse
from pathlib import Path
from subprocess import PIPE

import libtorrent as lt
import pytest

from _lan_hosts import Host, MiB, catalog, make_model, pull_argv, same_files, wait_all
from dsmirror._fetch.swarm.torrent import derived_info_hash
from dsmirror.testing.netns import NetnsSites, Topology, leftovers, tracker_unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(tracker_unavailable() is not None, reason=str(tracker_unavailable())),
]

RATE = 4_000_000  # bytes/s the origin serves, all connections together
INTER_SITE = "40mbit"  # the inter-site link, each way (5 MB/s)
FLOOR = 1.05


def _scrape(sites: NetnsSites, host: int, announce: str, info_hash: str) -> tuple[int, int]:
    """(complete, incomplete) peers the tracker knows of ``info_hash``, asked from ``host``."""
    raw = bytes.fromhex(info_hash)
    url = announce.replace("/announce", "/scrape") + "?info_hash=" + urllib.parse.quote_from_bytes(raw)
    files = lt.bdecode(sites.fetch(sites.namespaces[host], url))[b"files"]
    entry = files[raw]
    return int(entry[b"complete"]), int(entry[b"incomplete"])


def test_two_sites_find_each_other_through_a_tracker(tmp_path: Path) -> None:
    files, mpath, manifest = make_model(tmp_path / "model", 12 * MiB, seed=b"sites")
    size = manifest.total_size
    info_hash = derived_info_hash(manifest)
    assert info_hash is not None
    sites = NetnsSites([2, 2], inter_site=INTER_SITE, origin_uplink="200mbit")
    hosts: list[Host] = []
    try:
        sites.build()
        up = sites.upstream(files, rate=RATE, stats=tmp_path / "stats.json")
        tracker = sites.start_tracker([info_hash])
        cat = catalog(tmp_path / "cat.yaml", up.url, trackers=[tracker.announce_url])
        before = sites.inter_site_bytes()
        for k in range(len(sites.namespaces)):
            argv = pull_argv(mpath, cat, tmp_path / f"d{k}", "--seed")
            hosts.append(Host(sites, k, tmp_path, f"h{k}", argv))
        wait_all(hosts, 120)
        served = up.bytes_served
        crossed = sites.inter_site_bytes() - before
        complete, incomplete = _scrape(sites, 0, tracker.announce_url, info_hash)
    finally:
        for h in hosts:
            h.stop()
        sites.close()
        assert leftovers(sites.tag) == []  # no namespace, veth or bridge left behind
    for k, h in enumerate(hosts):
        assert h.finished is not None and h.result is not None, (h.name, h.proc.returncode, h.stderr_tail())
        assert same_files(files, tmp_path / f"d{k}")
    by = [h.result["delivered_by_source"] for h in hosts if h.result]
    ratio = served / size
    print(
        f"origin served {ratio:.3f}x the model; inter-site link carried {crossed / MiB:.1f} MiB "
        f"({crossed / size:.2f}x the model, both ways, headers included); tracker: {complete} complete, "
        f"{incomplete} incomplete; one copy over the origin's link {size / RATE:.1f} s; hosts "
        f"{[round(h.seconds, 1) for h in hosts]} s; by source {by}"
    )
    assert complete + incomplete == len(hosts)  # every host announced itself
    # Only the tracker can have introduced hosts of different sites: what crossed the link between
    # them is pieces (at least one, beyond the handshakes and messages of the connections).
    assert crossed > MiB, f"only {crossed} bytes crossed the inter-site link: the sites did not share"
    assert any(b.get("swarm", 0) > 0 for b in by), by  # and pieces from peers reached the store
    if ratio > FLOOR:  # issue 13's floor, not met yet (item 2; docs/design/swarm.md)
        pytest.xfail(f"origin served {ratio:.3f}x the model over two sites (floor {FLOOR}x)")


# LSD's multicast group and port (libtorrent); a datagram sent there from a host of site 0.
_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
for _ in range(20):
    s.sendto(b"BT-SEARCH dsmirror-test", ("239.192.152.143", 6771)); time.sleep(0.1)
"""
_RECV = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 6771))
mreq = struct.pack("4s4s", socket.inet_aton("239.192.152.143"), socket.inet_aton(sys.argv[1]))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(4)
try:
    print(s.recvfrom(100)[0].decode())
except socket.timeout:
    print("nothing")
"""


def test_multicast_stays_in_its_site_and_unicast_crosses(tmp_path: Path) -> None:
    """What the tracker test rests on: LSD's multicast reaches the hosts of its own site only,
    while unicast crosses the inter-site link (and is counted)."""
    (tmp_path / "blob").write_bytes(b"x" * 300_000)
    with NetnsSites([2, 1], inter_site="40mbit") as sites:
        tag = sites.tag
        recv = [  # site 0's second host, site 1's host
            sites.popen(k, [sys.executable, "-c", _RECV, sites.addresses[k]], stdout=PIPE, text=True)
            for k in (1, 2)
        ]
        sites.run(sites.namespaces[0], sys.executable, "-c", _SEND)
        same_site, other_site = (p.communicate(timeout=10)[0].strip() for p in recv)
        sites.serve(sites.namespaces[0], sites.addresses[0], tmp_path, stats=tmp_path / "stats.json")
        before = sites.inter_site_bytes()
        got = sites.fetch(sites.namespaces[2], f"http://{sites.addresses[0]}:8080/blob")
        crossed = sites.inter_site_bytes() - before
    assert leftovers(tag) == []
    assert same_site == "BT-SEARCH dsmirror-test"
    assert other_site == "nothing"
    assert got == b"x" * 300_000
    assert 300_000 < crossed < 400_000, crossed


class _Broken(Topology):
    def _make(self) -> None:
        br = self.add_bridge("br")
        self.attach(self.add_namespace("a"), br, "10.81.0.1")
        self.wire(self.add_namespace("b"), self.add_namespace("c"), "10.81.1.1", "10.81.1.2")
        raise RuntimeError("a step of the build failed")


def test_a_failed_build_leaves_no_namespace_veth_or_bridge() -> None:
    t = _Broken()
    with pytest.raises(RuntimeError, match="step of the build"):
        t.build()
    assert leftovers(t.tag) == []
    t.close()  # idempotent
