"""Real networks for tests and benchmarks: hosts in Linux network namespaces, bridges and routers.

:class:`Topology` is the toolkit: namespaces, bridges (switches, in the root namespace, with no
address there), veth links from a namespace to a bridge or between two namespaces, routes, routers
(``ip_forward``), ``tc`` shaping, link byte counters, processes started in a namespace
(:meth:`Topology.popen`), an HTTP mirror served from a namespace (:meth:`Topology.serve`: a
:class:`dsmirror.testing.MirrorServer` in a process of its own, whose counters are read from a
file it rewrites every 0.1 s) and a real BitTorrent tracker (:meth:`Topology.tracker`: Debian's
``opentracker``). Two ready-made shapes build on it:

- :class:`NetnsLan`: one office. N hosts on one bridge (``10.<net>.0.1`` ...), each with a
  multicast route so that local service discovery (LSD) works between them, and an "internet"
  namespace (``10.<net>.0.254``) whose link to the bridge is shaped (the office's uplink, as the
  upstream mirror sees it)::

      with NetnsLan(3, uplink="96mbit") as lan:
          up = lan.upstream(model_dir, rate=12_000_000, stats=tmp / "stats.json")
          p = lan.popen(0, [*PYTHON_CLI, "pull", ...])

- :class:`NetnsSites`: several offices. Each site is a bridge with its hosts
  (``10.<net>.<site+1>.<k+1>``) and a router (``.254``); the routers are joined pairwise by a
  shaped inter-site link and each reaches a "WAN" bridge (``10.<net>.0.0/24``) where the origin
  mirror (``.254``) and a tracker namespace (``.253``) live. Routers forward unicast only, so LSD
  (multicast) stays inside a site: peers of different sites meet through a tracker.
  :meth:`NetnsSites.inter_site_bytes` counts what crossed the inter-site links.

Nothing is routed out: no namespace has a default route (hosts route only ``10.<net>.0.0/16``),
and bridges have no address in the root namespace. Teardown always runs (``with``, or
:meth:`Topology.close` from a ``finally``; a failed build tears down what it made): it kills every
process it started and anything else left in its namespaces, deletes the namespaces (which deletes
their veth ends), the bridges and the links, and :func:`leftovers` lists anything of ours still
there. Needs root, ``ip`` and ``tc`` (iproute2); :func:`unavailable` says why not, for
``pytest.skip``. Names carry a per-instance tag, so concurrent runs do not collide.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "PYTHON_CLI",
    "NetnsLan",
    "NetnsSites",
    "Topology",
    "Tracker",
    "Upstream",
    "leftovers",
    "tracker_unavailable",
    "unavailable",
]

_PREFIX = "dsm"  # every namespace, veth and bridge this module makes starts with it
PYTHON_CLI = (sys.executable, "-c", "from dsmirror.cli import main; main()")
_TAGS = itertools.count()


def unavailable() -> str | None:
    """Why namespaced networks cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the LAN tests as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    return None


def tracker_unavailable() -> str | None:
    """Why :meth:`Topology.tracker` cannot run here (None: it can)."""
    return unavailable() or (None if shutil.which("opentracker") else "opentracker is not installed")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def leftovers(tag: str = "") -> list[str]:
    """Namespaces and links of this module still present (``tag``: of one instance only)."""
    prefix = _PREFIX + tag
    names = [ln.split()[0] for ln in _run("ip", "netns", "list").stdout.splitlines() if ln.strip()]
    links = []
    for ln in _run("ip", "-o", "link", "show").stdout.splitlines():
        parts = ln.split(":")
        if len(parts) > 1:
            links.append(parts[1].strip().split("@")[0])
    return [n for n in names + links if n.startswith(prefix)]


class Upstream:
    """An HTTP mirror served from a namespace (:meth:`Topology.serve`) and its counters."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, stats: Path) -> None:
        self.proc, self.url, self._stats = proc, url, stats

    def counters(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._stats.read_text())
        except (OSError, ValueError):
            return {"bytes_served": 0, "by_path": {}}
        return data

    @property
    def bytes_served(self) -> int:
        return int(self.counters()["bytes_served"])


class Tracker:
    """An ``opentracker`` run in a namespace by :meth:`Topology.tracker`."""

    def __init__(self, proc: subprocess.Popen[bytes], address: str, port: int, root: Path) -> None:
        self.proc, self.address, self.port, self.root = proc, address, port, root

    @property
    def announce_url(self) -> str:
        return f"http://{self.address}:{self.port}/announce"


class Topology:
    """Namespaces, bridges and links of one instance, all removed by :meth:`close`.

    Every builder method records what it made before it makes it, so a :meth:`close` after a
    half-done build removes exactly that much. Interface names are ``dsm<tag><kind><k>`` (at most
    15 characters).
    """

    def __init__(self) -> None:
        self.tag = f"{os.getpid() % 0xFFFF:04x}{(int(time.monotonic() * 1000) + next(_TAGS)) % 0xFF:02x}"
        self._namespaces: list[str] = []
        self._bridges: list[str] = []
        self._outer: list[str] = []  # veth ends in the root namespace
        self._dirs: list[Path] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._links = itertools.count()
        self._built = False

    # -- building ------------------------------------------------------------------------------
    def __enter__(self) -> Topology:
        self.build()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def build(self) -> None:
        """Make the whole topology (:meth:`_make` of a subclass); tears down on any failure."""
        why = unavailable()
        if why:
            raise RuntimeError(why)
        self._built = True
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self) -> None:
        """What :meth:`build` makes (subclasses)."""

    def name(self, suffix: str) -> str:
        return f"{_PREFIX}{self.tag}{suffix}"

    def add_namespace(self, suffix: str) -> str:
        """A new namespace with ``lo`` up; returns its name."""
        ns = self.name(suffix)
        self._namespaces.append(ns)
        _run("ip", "netns", "add", ns)
        self.run(ns, "ip", "link", "set", "lo", "up")
        return ns

    def add_bridge(self, suffix: str) -> str:
        """A new bridge (a switch) in the root namespace, up, with no address."""
        br = self.name(suffix)
        self._bridges.append(br)
        _run("ip", "link", "add", br, "type", "bridge")
        _run("ip", "link", "set", br, "up")
        return br

    def attach(self, ns: str, bridge: str, address: str, *, prefix: int = 24, multicast: bool = True) -> str:
        """Plug ``ns`` into ``bridge`` with ``address``; returns the device's name inside ``ns``.

        ``multicast``: route 224.0.0.0/4 out of it (LSD needs a route; there is no default one).
        """
        k = next(self._links)
        outer, inner = self.name(f"v{k}"), self.name(f"e{k}")
        self._outer.append(outer)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "master", bridge)
        _run("ip", "link", "set", outer, "up")
        self.run(ns, "ip", "addr", "add", f"{address}/{prefix}", "dev", inner)
        self.run(ns, "ip", "link", "set", inner, "up")
        if multicast:
            self.run(ns, "ip", "route", "add", "224.0.0.0/4", "dev", inner)
        return inner

    def wire(self, a: str, b: str, address_a: str, address_b: str, *, prefix: int = 30) -> tuple[str, str]:
        """A point-to-point veth between namespaces ``a`` and ``b``; returns (device in a, in b)."""
        k = next(self._links)
        dev_a, dev_b = self.name(f"p{k}"), self.name(f"q{k}")
        self._outer.append(dev_a)  # until it is moved; deleting either end deletes the pair
        _run("ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        _run("ip", "link", "set", dev_a, "netns", a)
        _run("ip", "link", "set", dev_b, "netns", b)
        for ns, dev, addr in ((a, dev_a, address_a), (b, dev_b, address_b)):
            self.run(ns, "ip", "addr", "add", f"{addr}/{prefix}", "dev", dev)
            self.run(ns, "ip", "link", "set", dev, "up")
        return dev_a, dev_b

    def route(self, ns: str, dest: str, via: str) -> None:
        self.run(ns, "ip", "route", "add", dest, "via", via)

    def router(self, ns: str) -> None:
        """Let ``ns`` forward IPv4 unicast between its links (multicast is never forwarded)."""
        self.run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    def shape(self, ns: str, dev: str, *, rate: str | None = None, delay_ms: float = 0.0) -> None:
        """Shape what ``ns`` sends out of ``dev``: a token bucket of ``rate`` (tc units, e.g.
        ``96mbit``), then ``delay_ms`` of latency."""
        if rate:
            tbf = ["tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]
            self.run(ns, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf)
        if delay_ms:
            parent = ["parent", "1:1"] if rate else ["root"]
            self.run(ns, "tc", "qdisc", "add", "dev", dev, *parent, "netem", "delay", f"{delay_ms}ms")

    def link_bytes(self, ns: str, dev: str) -> tuple[int, int]:
        """(received, sent) bytes of ``dev`` in ``ns``, headers included."""
        out = self.run(ns, "ip", "-s", "-j", "link", "show", "dev", dev).stdout
        stats = json.loads(out)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def run(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a short command in ``ns`` and wait for it."""
        return _run("ip", "netns", "exec", ns, *argv, check=check)

    def tempdir(self, prefix: str = "dsm-netns-") -> Path:
        """A folder removed by :meth:`close`."""
        d = Path(tempfile.mkdtemp(prefix=prefix))
        self._dirs.append(d)
        return d

    # -- tearing down --------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what was started here, delete the namespaces, links and bridges; idempotent."""
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self._procs.clear()
        if self._built:
            for ns in self._namespaces:
                # Anything still running in it (started by someone else) would keep it alive.
                pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                _run("ip", "netns", "del", ns, check=False)
            for br in self._bridges:
                _run("ip", "link", "del", br, check=False)
            for dev in self._outer:  # a veth left over if its namespace was never made
                if Path("/sys/class/net", dev).exists():
                    _run("ip", "link", "del", dev, check=False)
            self._built = False
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()

    # -- processes -----------------------------------------------------------------------------
    def _ns(self, host: int | str) -> str:
        return host if isinstance(host, str) else self._namespaces[host]

    def popen(self, host: int | str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``host`` (a name; subclasses also take a host index);
        killed on close."""
        p: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self._ns(host), *argv], **kw)
        self._procs.append(p)
        return p

    def serve(
        self, ns: str, address: str, root: Path, *, rate: float | None = None, port: int = 8080, stats: Path
    ) -> Upstream:
        """Serve ``root`` over HTTP from ``ns`` at ``http://address:port/`` (a MirrorServer,
        ``rate`` bytes/s over all its connections); its counters are written to ``stats``."""
        stats.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "dsmirror.testing.netns", "upstream", str(root), address,
                str(port), str(stats), str(rate or 0)]  # fmt: skip
        p = self.popen(ns, argv)
        deadline = time.monotonic() + 20
        while not stats.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the upstream mirror did not start")
            time.sleep(0.05)
        return Upstream(p, f"http://{address}:{port}/", stats)

    def tracker(self, ns: str, address: str, info_hashes: Iterable[str], *, port: int = 6969) -> Tracker:
        """Run ``opentracker`` in ``ns`` on ``address:port`` (HTTP and UDP) tracking only
        ``info_hashes`` (hex; Debian's build tracks whitelisted hashes only: give a hybrid
        torrent's v1 hash and its v2 hash truncated to 40 digits)."""
        root = self.tempdir("dsm-tracker-")  # its chroot: it drops to nobody, who must read it
        root.chmod(0o755)
        (root / "whitelist.txt").write_text("".join(f"{h.lower()[:40]}\n" for h in info_hashes))
        (root / "whitelist.txt").chmod(0o644)
        argv = ["opentracker", "-i", address, "-p", str(port), "-P", str(port), "-d", str(root),
                "-w", "/whitelist.txt"]  # fmt: skip
        p = self.popen(ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:  # ready when it listens
            if p.poll() is not None:
                raise RuntimeError(f"opentracker exited with {p.returncode}")
            if self.run(ns, "ss", "-Hltn", f"sport = :{port}").stdout.strip():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("opentracker did not answer")
            time.sleep(0.1)
        return Tracker(p, address, port, root)

    def fetch(self, ns: str, url: str) -> bytes:
        """GET ``url`` from inside ``ns`` (a tracker's stats or scrape page, a mirror)."""
        got = self.run(ns, sys.executable, "-c", _FETCH, url)
        return bytes.fromhex(got.stdout.strip())


_FETCH = (
    "import sys, urllib.request as u; "
    "print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=5).read().hex())"
)


class NetnsLan(Topology):
    """N hosts and an upstream on one bridge, in network namespaces (see the module docstring)."""

    def __init__(
        self, hosts: int, *, uplink: str | None = "96mbit", delay_ms: float = 0.0, net: int = 77
    ) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("1 to 200 hosts")
        super().__init__()
        self.n, self.uplink, self.delay_ms, self.net = hosts, uplink, delay_ms, net
        self.bridge = self.name("br")
        self.namespaces = [self.name(f"h{i}") for i in range(hosts)]
        self.internet = self.name("up")
        self.addresses = [f"10.{net}.0.{i + 1}" for i in range(hosts)]
        self.upstream_address = f"10.{net}.0.254"

    def __enter__(self) -> NetnsLan:
        self.build()
        return self

    def _make(self) -> None:
        br = self.add_bridge("br")
        for i in range(self.n):
            self.attach(self.add_namespace(f"h{i}"), br, self.addresses[i])
        dev = self.attach(self.add_namespace("up"), br, self.upstream_address)
        self.shape(self.internet, dev, rate=self.uplink, delay_ms=self.delay_ms)  # what it sends

    def _ns(self, host: int | str) -> str:
        return self.namespaces[host] if isinstance(host, int) else host

    def upstream(self, root: Path, *, rate: float | None = None, port: int = 8080, stats: Path) -> Upstream:
        """Serve ``root`` from the internet namespace at ``http://10.<net>.0.254:port/``."""
        return self.serve(self.internet, self.upstream_address, root, rate=rate, port=port, stats=stats)


class NetnsSites(Topology):
    """Sites (one bridge of hosts and a router each) joined by shaped inter-site links, and a WAN
    with the origin and a tracker namespace (see the module docstring).

    ``sites``: the number of hosts of each site. ``inter_site``: the rate (tc units) of each
    inter-site link, both ways; ``inter_site_delay_ms`` its latency. ``origin_uplink``: the rate at
    which the origin's namespace sends. Hosts are numbered across sites in order
    (:attr:`namespaces`, :attr:`addresses`, :attr:`site_of`).
    """

    def __init__(
        self,
        sites: Sequence[int],
        *,
        inter_site: str | None = "100mbit",
        inter_site_delay_ms: float = 0.0,
        origin_uplink: str | None = "200mbit",
        net: int = 79,
    ) -> None:
        if not 1 <= len(sites) <= 20 or not all(1 <= n <= 100 for n in sites):
            raise ValueError("1 to 20 sites of 1 to 100 hosts")
        super().__init__()
        self.sites, self.net = tuple(sites), net
        self.inter_site, self.inter_site_delay_ms = inter_site, inter_site_delay_ms
        self.origin_uplink = origin_uplink
        self.namespaces: list[str] = []
        self.addresses: list[str] = []
        self.site_of: list[int] = []
        for s, n in enumerate(self.sites):
            for k in range(n):
                self.namespaces.append(self.name(f"s{s}h{k}"))
                self.addresses.append(f"10.{net}.{s + 1}.{k + 1}")
                self.site_of.append(s)
        self.routers = [self.name(f"r{s}") for s in range(len(self.sites))]
        self.origin, self.origin_address = self.name("or"), f"10.{net}.0.254"
        self.tracker_ns, self.tracker_address = self.name("tk"), f"10.{net}.0.253"
        self._inter: list[tuple[str, str]] = []  # (router namespace, device) of each link's ends

    def __enter__(self) -> NetnsSites:
        self.build()
        return self

    def _ns(self, host: int | str) -> str:
        return self.namespaces[host] if isinstance(host, int) else host

    def _make(self) -> None:
        net = self.net
        wan = self.add_bridge("wan")
        for s, router in enumerate(self.routers):
            self.add_namespace(f"r{s}")
            self.router(router)
            self.attach(router, wan, f"10.{net}.0.{s + 1}", multicast=False)
        for suffix, addr in (("or", self.origin_address), ("tk", self.tracker_address)):
            ns = self.add_namespace(suffix)
            dev = self.attach(ns, wan, addr, multicast=False)
            if ns == self.origin:
                self.shape(ns, dev, rate=self.origin_uplink)
            for s in range(len(self.sites)):
                self.route(ns, f"10.{net}.{s + 1}.0/24", f"10.{net}.0.{s + 1}")
        for s, n in enumerate(self.sites):
            br = self.add_bridge(f"b{s}")
            self.attach(self.routers[s], br, f"10.{net}.{s + 1}.254", multicast=False)
            first = sum(self.sites[:s])
            for k in range(n):
                ns = self.add_namespace(f"s{s}h{k}")
                self.attach(ns, br, self.addresses[first + k])
                self.route(ns, f"10.{net}.0.0/16", f"10.{net}.{s + 1}.254")
        pairs = list(itertools.combinations(range(len(self.sites)), 2))
        for j, (a, b) in enumerate(pairs):
            subnet, last = f"10.{net}.{200 + j // 64}", (j % 64) * 4  # a /30 per link
            addr_a, addr_b = f"{subnet}.{last + 1}", f"{subnet}.{last + 2}"
            dev_a, dev_b = self.wire(self.routers[a], self.routers[b], addr_a, addr_b)
            self.route(self.routers[a], f"10.{net}.{b + 1}.0/24", addr_b)
            self.route(self.routers[b], f"10.{net}.{a + 1}.0/24", addr_a)
            for ns, dev in ((self.routers[a], dev_a), (self.routers[b], dev_b)):
                self.shape(ns, dev, rate=self.inter_site, delay_ms=self.inter_site_delay_ms)
                self._inter.append((ns, dev))

    def inter_site_bytes(self) -> int:
        """Bytes sent over all inter-site links so far (both directions, headers included)."""
        return sum(self.link_bytes(ns, dev)[1] for ns, dev in self._inter)

    def hosts_of(self, site: int) -> list[int]:
        return [i for i, s in enumerate(self.site_of) if s == site]

    def upstream(self, root: Path, *, rate: float | None = None, port: int = 8080, stats: Path) -> Upstream:
        """Serve ``root`` from the origin at ``http://10.<net>.0.254:port/``."""
        return self.serve(self.origin, self.origin_address, root, rate=rate, port=port, stats=stats)

    def start_tracker(self, info_hashes: Iterable[str], *, port: int = 6969) -> Tracker:
        """opentracker in the tracker namespace (``http://10.<net>.0.253:port/announce``)."""
        return self.tracker(self.tracker_ns, self.tracker_address, info_hashes, port=port)


def _serve_upstream(root: str, host: str, port: str, stats: str, rate: str) -> None:
    """``python -m dsmirror.testing.netns upstream ...``: run in the mirror's namespace."""
    from dsmirror.testing.mirror import MirrorServer

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with MirrorServer(Path(root), host=host, port=int(port), rate=float(rate) or None) as mirror:
        tmp = Path(stats + ".tmp")
        while not stop:
            tmp.write_text(
                json.dumps(
                    {"bytes_served": mirror.bytes_served, "by_path": dict(mirror.bytes_served_by_path)}
                )
            )
            os.replace(tmp, stats)
            time.sleep(0.1)


if __name__ == "__main__":  # pragma: no cover - run by Topology.serve in a namespace
    if sys.argv[1:2] == ["upstream"] and len(sys.argv) == 7:
        _serve_upstream(*sys.argv[2:])
    else:
        sys.exit("usage: python -m dsmirror.testing.netns upstream ROOT HOST PORT STATS RATE")
