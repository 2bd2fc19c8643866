"""A real office LAN for tests and benchmarks: hosts in Linux network namespaces on one bridge.

:class:`NetnsLan` builds N hosts, each a network namespace with its own address on one bridge
(``10.<net>.0.1`` ...), with a multicast route so that local service discovery (LSD) works between
them, and an "internet" namespace (``10.<net>.0.254``) whose link to the bridge is shaped with
``tc`` (the office's uplink, as the upstream mirror sees it). Nothing is routed out: no namespace
has a default route, and the bridge has no address in the root namespace. Processes are started in
a namespace with ``ip netns exec`` (:meth:`NetnsLan.popen`); :meth:`NetnsLan.upstream` runs a
:class:`dsmirror.testing.MirrorServer` there in a process of its own, whose counters are read from
a file it rewrites every 0.1 s. Teardown always runs (``with``, or :meth:`close` from a
``finally``): it kills every process it started, deletes the namespaces (which deletes their veth
ends) and the bridge, and :func:`leftovers` lists anything of ours still there::

    with NetnsLan(3, uplink="96mbit") as lan:
        up = lan.upstream(model_dir, rate=12_000_000)
        p = lan.popen(0, [sys.executable, "-c", "from dsmirror.cli import main; main()", "pull", ...])

Needs root, ``ip`` and ``tc`` (iproute2); :func:`unavailable` says why not, for ``pytest.skip``.
Names carry a per-instance tag, so concurrent runs do not collide.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["NetnsLan", "Upstream", "leftovers", "unavailable"]

_PREFIX = "dsm"  # every namespace, veth and bridge this module makes starts with it
PYTHON_CLI = (sys.executable, "-c", "from dsmirror.cli import main; main()")


def unavailable() -> str | None:
    """Why namespaced LANs cannot be built here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the LAN tests as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} (iproute2) is not installed"
    return None


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
    """The upstream mirror of a :class:`NetnsLan`: a MirrorServer in the internet namespace."""

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


class NetnsLan:
    """N hosts and an upstream on one bridge, in network namespaces (see the module docstring)."""

    def __init__(
        self, hosts: int, *, uplink: str | None = "96mbit", delay_ms: float = 0.0, net: int = 77
    ) -> None:
        if not 1 <= hosts <= 200:
            raise ValueError("1 to 200 hosts")
        self.tag = f"{os.getpid() % 0xFFFF:04x}{int(time.monotonic() * 1000) % 0xFF:02x}"
        self.n, self.uplink, self.delay_ms, self.net = hosts, uplink, delay_ms, net
        self.bridge = f"{_PREFIX}{self.tag}br"
        self.namespaces = [f"{_PREFIX}{self.tag}h{i}" for i in range(hosts)]
        self.internet = f"{_PREFIX}{self.tag}up"
        self.addresses = [f"10.{net}.0.{i + 1}" for i in range(hosts)]
        self.upstream_address = f"10.{net}.0.254"
        self._procs: list[subprocess.Popen[Any]] = []
        self._built = False

    # -- building and tearing down -------------------------------------------------------------
    def __enter__(self) -> NetnsLan:
        self.build()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def build(self) -> None:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        self._built = True
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "link", "set", self.bridge, "up")
            for k, ns in enumerate([*self.namespaces, self.internet]):
                addr = self.addresses[k] if k < self.n else self.upstream_address
                self._host(ns, f"{_PREFIX}{self.tag}v{k}", f"{_PREFIX}{self.tag}e{k}", addr)
            if self.uplink or self.delay_ms:
                dev = f"{_PREFIX}{self.tag}e{self.n}"  # the internet's end: what it sends is shaped
                if self.uplink:
                    tbf = ["tbf", "rate", self.uplink, "burst", "64kb", "latency", "100ms"]
                    _run("ip", "netns", "exec", self.internet, "tc", "qdisc", "add", "dev", dev, "root",
                         "handle", "1:", *tbf)  # fmt: skip
                if self.delay_ms:
                    parent = ["parent", "1:1"] if self.uplink else ["root"]
                    _run("ip", "netns", "exec", self.internet, "tc", "qdisc", "add", "dev", dev, *parent,
                         "netem", "delay", f"{self.delay_ms}ms")  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _host(self, ns: str, outer: str, inner: str, addr: str) -> None:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "link", "set", outer, "master", self.bridge)
        _run("ip", "link", "set", outer, "up")
        for cmd in (
            ("ip", "link", "set", "lo", "up"),
            ("ip", "addr", "add", f"{addr}/24", "dev", inner),
            ("ip", "link", "set", inner, "up"),
            ("ip", "route", "add", "224.0.0.0/4", "dev", inner),  # LSD multicast; no default route
        ):
            _run("ip", "netns", "exec", ns, *cmd)

    def close(self) -> None:
        """Kill what was started here, delete the namespaces and the bridge; idempotent."""
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
        self._procs.clear()
        if not self._built:
            return
        for ns in [*self.namespaces, self.internet]:
            # Anything still running in it (started by someone else) would keep it alive.
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        for k in range(self.n + 1):  # a veth left over if a namespace was never made
            _run("ip", "link", "del", f"{_PREFIX}{self.tag}v{k}", check=False)
        self._built = False

    # -- processes -----------------------------------------------------------------------------
    def popen(self, host: int | str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in host ``host`` (an index, or a namespace name); killed on close."""
        ns = self.namespaces[host] if isinstance(host, int) else host
        p: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._procs.append(p)
        return p

    def upstream(self, root: Path, *, rate: float | None = None, port: int = 8080, stats: Path) -> Upstream:
        """Serve ``root`` from the internet namespace at ``http://10.<net>.0.254:port/``."""
        stats.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "dsmirror.testing.netns", "upstream", str(root),
                self.upstream_address, str(port), str(stats), str(rate or 0)]  # fmt: skip
        p = self.popen(self.internet, argv)
        deadline = time.monotonic() + 20
        while not stats.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the upstream mirror did not start")
            time.sleep(0.05)
        return Upstream(p, f"http://{self.upstream_address}:{port}/", stats)


def _serve_upstream(root: str, host: str, port: str, stats: str, rate: str) -> None:
    """``python -m dsmirror.testing.netns upstream ...``: run in the internet namespace."""
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


if __name__ == "__main__":  # pragma: no cover - run by NetnsLan.upstream in a namespace
    if sys.argv[1:2] == ["upstream"] and len(sys.argv) == 7:
        _serve_upstream(*sys.argv[2:])
    else:
        sys.exit("usage: python -m dsmirror.testing.netns upstream ROOT HOST PORT STATS RATE")
