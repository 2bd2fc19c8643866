#!/usr/bin/env python3
"""Benchmark an office LAN in network namespaces: N hosts pull the same model behind one slow uplink.

One command (as root: it builds the LAN with ``ip netns``, veth, a bridge and ``tc``)::

    python scripts/bench_lan.py                           # 3 hosts, 96 MiB, 1 MiB pieces, 12 MB/s
    python scripts/bench_lan.py --hosts 3 4 8 --stagger 0 5 --runs 3
    python scripts/bench_lan.py --size 32MiB --upstream-rate 4MB/s      # quicker
    python scripts/bench_lan.py --sites 2 2 --inter-site 100mbit         # two offices and a tracker

The office is :class:`dsmirror.testing.netns.NetnsLan`: N hosts, each a network namespace with its
own address on one bridge (real multicast, so LSD works between them), and the upstream mirror
(:class:`dsmirror.testing.MirrorServer`, one token bucket of ``--upstream-rate`` for all its
connections) in an "internet" namespace behind a ``tc``-shaped link. Nothing is routed out of the
namespaces. Three scenarios run side by side, interleaved run by run, the same hosts and uplink:

``zero``   dsmirror zero-config: ``dsmirror pull MANIFEST --seed`` on every host and nothing else
           (no ``--peer``, ``--listen`` or ``--torrent``; the manifest records info-hashes, so
           the hosts join its swarm and find each other by LSD); ``--seed`` keeps a finished host
           serving the others until all are done;
``alone``  ``dsmirror pull MANIFEST --no-p2p``: each host alone, one copy each;
``lt``     the anchor an admin would otherwise set up: plain libtorrent clients (python-libtorrent,
           this script's ``--lt-client`` mode, LSD on, DHT off, TCP only like dsmirror) given a v1
           torrent of the model whose url-list (BEP 19) is the upstream: the web seed.

``--sites 2 2`` runs them on :class:`dsmirror.testing.netns.NetnsSites` instead (or as well, with
``--hosts``): two sites of two hosts, each behind a router, joined by a shaped inter-site link, the
origin and Debian's ``opentracker`` on a WAN. LSD stays inside a site; the tracker (the catalog's
``bittorrent`` mirror for dsmirror, announced in the anchor's torrent) joins the sites. The bytes
that crossed the inter-site links are printed too.

For each it prints the bytes the upstream served divided by the model size (issue 13's floor:
1.05 for ``zero``) and each host's time from its own start to a complete model, against the time
one copy takes over the uplink (floor: the last host within 1.25x of it). ``--stagger S`` starts
the hosts S seconds apart. With ``--runs`` > 1 figures are medians. Every output is checked
against the manifest's SHA-256; every dsmirror pull uses ``--no-reuse`` and fresh XDG folders.
The machine's load is printed with every run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _benchlib import (
    CACHE,
    DSMIRROR,
    MB,
    MIB,
    Model,
    bad_outputs,
    clear,
    client_env,
    machine_note,
    median,
    parse_size,
    prepare_model,
    table,
)
from dsmirror import load_manifest
from dsmirror._fetch.swarm.torrent import create_torrent, derived_info_hash, with_torrent_hashes
from dsmirror.testing.netns import NetnsLan, NetnsSites, Upstream, tracker_unavailable, unavailable

TRACER = Path(__file__).resolve().parent / "_lantrace"  # the hosts' sitecustomize with --trace

SCENARIOS = {
    "zero": "dsmirror zero-config",
    "alone": "dsmirror --no-p2p",
    "lt": "libtorrent + web seed",
}


# -- the plain libtorrent client (run in a host's namespace) ---------------------------------------


def lt_client(torrent: str, dest: str) -> None:
    """``bench_lan.py --lt-client TORRENT DEST``: download with libtorrent, then seed until SIGTERM.

    Prints ``{"event": "done", ...}`` when the torrent is complete (checked by libtorrent).
    """
    import libtorrent as lt

    ses = lt.session(
        {
            "listen_interfaces": "0.0.0.0:6881",
            "enable_dht": False,
            "enable_lsd": True,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,  # uTP is an order of magnitude slower on a LAN
            "enable_incoming_utp": False,
            "alert_mask": 0,
        }
    )
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = dest
    h = ses.add_torrent(atp)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t0 = time.monotonic()
    done = False
    while not stop.is_set():
        st = h.status()
        if not done and st.is_seeding:
            done = True
            total = int(st.total_payload_download)
            ev = {"event": "done", "seconds": time.monotonic() - t0, "downloaded": total}
            print(json.dumps(ev), flush=True)
        stop.wait(0.1)
    os._exit(0)  # no session teardown to wait for: the bench only needs the files


# -- the bench --------------------------------------------------------------------------------------


def _children_cpu() -> float:
    """CPU seconds of this bench's waited-for children (the hosts' processes: ``ip netns exec`` execs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all the machine's CPUs (/proc/stat), every process counted."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) process ``pid`` used so far (/proc/PID/stat)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def uplink_report(samples: list[tuple[float, int]], t0: float, rate: float, last_end: float) -> str:
    """When the upstream was busy, from its byte counter sampled during a run (every ~0.1 s): its
    first byte, the time it served less than half its rate between the first and the last byte
    (idle: waiting for a start, a handover, a tail), its last byte, and the last host's finish."""
    moved = [(t, b) for t, b in samples if b > samples[0][1]] if samples else []
    if not moved:
        return "  uplink: no bytes"
    first, last = moved[0][0], next(t for t, b in samples if b == samples[-1][1])
    idle = 0.0
    window = [(t, b) for t, b in samples if first <= t <= last]
    ta, ba = window[0]
    for tb, bb in window[1:]:  # in steps of 0.5 s at least: the counter is written every 0.1 s
        if tb - ta >= 0.5 or tb == last:
            if (bb - ba) / max(1e-9, tb - ta) < rate / 2:
                idle += tb - ta
            ta, ba = tb, bb
    return (
        f"  uplink: first byte at {first - t0:.1f} s, under half its rate for {idle:.1f} s of the "
        f"{last - first:.1f} s it served, last byte at {last - t0:.1f} s, "
        f"last host done at {last_end - t0:.1f} s"
    )


def trace_report(base: Path, n: int, piece: int) -> str:
    """What the hosts' traces (``--trace``) say about the upstream bytes: pieces fetched by more
    than one host (and when, against when the set of machines changed), and bytes received by
    mirror spans that no verified piece used (pieces in flight when a span was cut or dropped)."""
    events: list[list[dict[str, Any]]] = []
    for i in range(n):
        path = base / f"trace{i}.jsonl"
        events.append([json.loads(x) for x in path.read_text().splitlines()] if path.exists() else [])
    by_piece: dict[int, list[tuple[float, int]]] = {}
    unused = 0
    changes: list[tuple[float, int, int]] = []
    for h, evs in enumerate(events):
        mirror_ids: set[int] = set()
        got: dict[int, int] = {}
        last = -1
        for e in evs:
            if e["ev"] == "take" and e["src"] != "swarm":
                mirror_ids.add(e["id"])
            elif e["ev"] == "piece" and e["id"] in mirror_ids:
                by_piece.setdefault(e["i"], []).append((e["t"], h))
                got[e["id"]] = got.get(e["id"], 0) + 1
            elif e["ev"] == "end" and e["id"] in mirror_ids:
                unused += max(0, e["bytes"] - got.get(e["id"], 0) * piece)
            elif e["ev"] == "hosts" and len(e["hosts"]) != last:
                last = len(e["hosts"])
                changes.append((e["t"], h, last))
    t0 = min((e["t"] for evs in events for e in evs), default=0.0)
    dups = {i: v for i, v in by_piece.items() if len(v) > 1}
    verified, twice = sum(len(v) for v in by_piece.values()), sum(len(v) - 1 for v in dups.values())
    lines = [
        f"  mirror pieces: {verified} verified, {len(by_piece)} distinct, {twice} fetched again; "
        f"{unused / MIB:.1f} MiB received by mirror spans and not used (in flight when cut or dropped)"
    ]
    for i, v in sorted(dups.items())[:40]:
        who = ", ".join(f"host{h + 1} at {t - t0:.2f}" for t, h in sorted(v))
        lines.append(f"    piece {i}: {who}")
    if changes:
        lines.append(
            "  machines seen: " + ", ".join(f"host{h + 1} {k} others at {t - t0:.2f}" for t, h, k in changes)
        )
    return "\n".join(lines)


@dataclasses.dataclass
class Client:
    name: str
    proc: subprocess.Popen[str]
    started: float
    dest: Path
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    cpu: float | None = None  # CPU seconds of its process when it finished

    def watch(self, log: Path) -> None:
        assert self.proc.stdout is not None
        with open(log, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if isinstance(ev, dict) and ev.get("event") in ("PullFinished", "done"):
                        self.finished_at = time.monotonic()
                        self.cpu = _proc_cpu(self.proc.pid)  # ip netns exec execs: the client
                        self.result = ev

    @property
    def seconds(self) -> float:
        return self.finished_at - self.started if self.finished_at is not None else float("nan")

    def from_swarm(self) -> int | None:
        r = self.result or {}
        if r.get("event") == "PullFinished":
            return int((r.get("delivered_by_source") or {}).get("swarm", 0))
        return None  # libtorrent: its per-connection counters do not add up; the upstream's do


@dataclasses.dataclass
class Run:
    scenario: str
    office: str  # "3": three hosts on one LAN; "2+2": two sites of two
    stagger: float
    ratio: float
    times: list[float]
    swarm: list[int | None]
    load: float
    errors: list[str]
    wall: float  # from the first host's start to the last one's finish
    inter_site: float | None  # bytes over the inter-site links / model size (sites only)
    cpu: float  # CPU seconds (user + system) of the hosts' processes
    busy: float  # the machine's CPUs busy meanwhile (0..1, /proc/stat, every process of it)
    base: Path  # its logs (and traces)
    host_cpu: list[float | None]  # each host's CPU seconds until it finished
    uplink: str  # when the upstream was busy (uplink_report)


@dataclasses.dataclass
class Setup:
    model: Model
    manifest_path: Path  # records the info-hashes: the model is published for sharing
    lt_torrent: Path  # v1, url-list = the upstream
    work: Path
    timeout: float
    connections: int | None
    rate: float  # what the upstream serves, bytes/s
    trace: bool = False  # record each host's scheduler decisions (scripts/_lantrace)
    profile: bool = False  # sample the dsmirror hosts with py-spy (collapsed stacks per host)


def prepare(model: Model, up_url: str, work: Path, tracker: str | None) -> tuple[Path, Path]:
    """The shared manifest (recording its torrent's info-hashes) and the anchor's web-seeded torrent
    (announcing to ``tracker`` too, if given)."""
    import libtorrent as lt

    folder = model.manifest_path.parent
    manifest_path = folder / "swarmed.manifest.json"
    if not manifest_path.exists():
        print("making the model's torrent ...", flush=True)
        t = create_torrent(model.manifest, model.root, verify=False)
        with_torrent_hashes(model.manifest, [t]).write(manifest_path)
    lt_torrent = work / "webseed.torrent"
    files = lt.list_files(str(model.root))  # name: the folder's name, which the upstream serves
    ct = lt.create_torrent(files, model.manifest.piece_size, lt.create_torrent.v1_only)
    ct.add_url_seed(up_url)  # multi-file: the client asks for up_url + name/path
    if tracker:
        ct.add_tracker(tracker, 0)
    lt.set_piece_hashes(ct, str(model.root.parent))
    lt_torrent.write_bytes(bytes(lt.bencode(ct.generate())))
    load_manifest(manifest_path)
    return manifest_path, lt_torrent


def lt_info_hash(torrent: Path) -> str:
    import libtorrent as lt

    return str(lt.torrent_info(str(torrent)).info_hashes().v1)


def argv_of(scenario: str, s: Setup, catalog: Path, dest: Path) -> list[str]:
    if scenario == "lt":
        return [sys.executable, str(Path(__file__).resolve()), "--lt-client", str(s.lt_torrent), str(dest)]
    argv = [*DSMIRROR, "pull", str(s.manifest_path), "--mirrors", str(catalog), "--no-default-catalog",
            "--no-reuse", "--dest", str(dest), "--json"]  # fmt: skip
    if s.connections:
        argv += ["-x", str(s.connections)]
    return argv + (["--seed"] if scenario == "zero" else ["--no-p2p"])


def run_scenario(
    net: NetnsLan | NetnsSites,
    up: Upstream,
    catalog: Path,
    scenario: str,
    stagger: float,
    s: Setup,
    k_run: int,
) -> Run:
    n = len(net.namespaces)
    office = str(n) if isinstance(net, NetnsLan) else "+".join(map(str, net.sites))
    base = s.work / f"{scenario}-{office}-s{stagger:g}-r{k_run}"
    clear(base)
    served0 = up.bytes_served
    inter0 = net.inter_site_bytes() if isinstance(net, NetnsSites) else 0
    load = os.getloadavg()[0]
    cpu0, busy0 = _children_cpu(), _machine_busy()
    clients: list[Client] = []
    t0 = time.monotonic()
    deadline = t0 + s.timeout + n * stagger
    samples: list[tuple[float, int]] = []
    spies: list[subprocess.Popen[bytes]] = []
    while time.monotonic() < deadline:
        if not samples or time.monotonic() - samples[-1][0] >= 0.1:
            samples.append((time.monotonic(), up.bytes_served))
        while len(clients) < n and time.monotonic() >= t0 + len(clients) * stagger:
            i = len(clients)
            dest = base / f"dest{i}"
            env = client_env(base / f"home{i}")
            if s.trace and scenario != "lt":
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRACER), env.get("PYTHONPATH")]))
                env["DSM_LAN_TRACE"] = str(base / f"trace{i}.jsonl")
            with open(base / f"stderr{i}.txt", "w") as err:
                proc = net.popen(
                    i,
                    argv_of(scenario, s, catalog, dest),
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    env=env,
                )
            c = Client(f"host{i + 1}", proc, time.monotonic(), dest)
            if s.profile and scenario != "lt":  # until it exits (ip netns exec execs: the client)
                spy = ["py-spy", "record", "--nonblocking", "-r", "100", "-f", "raw", "-p", str(proc.pid),
                       "-o", str(base / f"profile{i}.txt")]  # fmt: skip
                spies.append(subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            threading.Thread(target=c.watch, args=(base / f"events{i}.jsonl",), daemon=True).start()
            clients.append(c)
        if len(clients) == n and all(c.finished_at is not None for c in clients):
            break
        for c in clients:
            if c.finished_at is None and c.proc.poll() is not None:
                time.sleep(0.5)  # its last lines may still be on their way
                if c.finished_at is None:
                    c.error = f"exited with {c.proc.returncode}"
        if any(c.error for c in clients):
            break
        time.sleep(0.05)
    served = up.bytes_served - served0
    if s.trace:  # the upstream's byte counter over the run (monotonic time, bytes)
        (base / "uplink.json").write_text(json.dumps(samples))
    inter = (net.inter_site_bytes() - inter0) / s.model.size if isinstance(net, NetnsSites) else None
    for c in clients:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in clients:
        try:
            c.proc.wait(30)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait(10)
        if c.finished_at is None and not c.error:
            c.error = "timed out"
        if c.finished_at is not None:
            out = c.dest / s.model.root.name if scenario == "lt" else c.dest
            bad = bad_outputs(s.model.manifest, out)
            if bad:
                c.error = f"{len(bad)} files differ"
    for spy in spies:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    ends = [c.finished_at for c in clients if c.finished_at is not None]
    wall = max(ends) - t0 if len(ends) == n else float("nan")
    cpu = _children_cpu() - cpu0
    busy = [b - a for a, b in zip(busy0, _machine_busy(), strict=True)]
    errors = [f"{c.name}: {c.error}" for c in clients if c.error]
    errors += [f"host{i + 1}: not started" for i in range(len(clients), n)]
    return Run(
        scenario, office, stagger, served / s.model.size, [c.seconds for c in clients],
        [c.from_swarm() for c in clients], load, errors, wall, inter, cpu,
        busy[0] / max(1, busy[1]), base, [c.cpu for c in clients],
        uplink_report(samples, t0, s.rate, max(ends, default=t0)),
    )  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--lt-client"]:
        lt_client(*sys.argv[2:4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=None, help="N hosts (several: 3 4 8; default 3)")
    ap.add_argument(
        "--sites", type=int, nargs="+", default=None,
        help="also two or more sites of these many hosts (2 2) joined by --inter-site links, with a tracker",
    )  # fmt: skip
    ap.add_argument("--inter-site", default="100mbit", help="each inter-site link's rate (tc units)")
    ap.add_argument("--stagger", type=float, nargs="+", default=[0.0], help="seconds between starts (0 5)")
    ap.add_argument("--runs", type=int, default=1, help="runs of each scenario (medians printed)")
    ap.add_argument("--size", default="96MiB", help="model size (default 96MiB)")
    ap.add_argument("--piece-size", default="1MiB", help="piece size (default 1MiB)")
    ap.add_argument("--upstream-rate", default="12MB/s", help="what the upstream serves (default 12MB/s)")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="latency of the uplink (default 0)")
    ap.add_argument("--connections", type=int, default=None, help="dsmirror's -x (default: its own)")
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="only these (repeatable)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per scenario run")
    ap.add_argument("--fresh", action="store_true", help="regenerate the cached model")
    ap.add_argument(
        "--trace", action="store_true",
        help="record the dsmirror hosts' scheduler decisions, print what was fetched twice (keeps the logs)",
    )  # fmt: skip
    ap.add_argument(
        "--profile", action="store_true",
        help="sample each dsmirror host with py-spy (profile<i>.txt, collapsed stacks; keeps the logs)",
    )  # fmt: skip
    args = ap.parse_args()
    why = tracker_unavailable() if args.sites else unavailable()
    if why:
        sys.exit(f"bench_lan: {why}")
    size, piece = parse_size(args.size), parse_size(args.piece_size)
    rate = parse_size(args.upstream_rate)
    scenarios = args.scenario or list(SCENARIOS)
    model = prepare_model(size, piece, fresh=args.fresh)
    work = CACHE / "lan-netns" / str(os.getpid())  # two benches at once must not share it
    clear(work)
    one_copy = model.size / rate
    # The link is a little faster than the mirror's own bucket, which is what limits it.
    uplink = f"{max(1, round(rate * 8 * 1.1 / 1e6))}mbit"
    runs: list[Run] = []
    offices: list[NetnsLan | NetnsSites] = []
    for n in args.hosts or ([] if args.sites else [3]):
        offices.append(NetnsLan(n, uplink=uplink, delay_ms=args.delay_ms))
    if args.sites:
        offices.append(NetnsSites(args.sites, inter_site=args.inter_site, origin_uplink=uplink))
    labels: list[str] = []
    for net in offices:
        with net:
            label = str(net.n) if isinstance(net, NetnsLan) else "+".join(map(str, net.sites))
            labels.append(label)
            # The upstream serves the model's parent folder: dsmirror's mirror is its files/ folder,
            # the web seed asks for <torrent name>/<path> = files/<path>.
            up = net.upstream(model.root.parent, rate=rate, stats=work / f"stats-{label}.json")
            announce = None
            if isinstance(net, NetnsSites):
                announce = f"http://{net.tracker_address}:6969/announce"
            setup = Setup(
                model,
                *prepare(model, up.url, work, announce),
                work,
                args.timeout,
                args.connections,
                rate,
                args.trace,
                args.profile,
            )
            catalog = work / "upstream.yaml"
            url = f"{up.url}{model.root.name}/"
            text = f'version: 1\nmirrors:\n  - name: upstream\n    kind: http\n    url: "{url}"\n'
            if isinstance(net, NetnsSites):  # the swarm's tracker: the manifest's own and the anchor's
                derived = derived_info_hash(load_manifest(setup.manifest_path))
                assert derived is not None
                net.start_tracker([derived, str(lt_info_hash(setup.lt_torrent))])
                text += f'  - name: tracker\n    kind: bittorrent\n    url: "{announce}"\n'
            catalog.write_text(text)
            for stagger in args.stagger:
                for k in range(args.runs):
                    order = scenarios[k % len(scenarios) :] + scenarios[: k % len(scenarios)]
                    for sc in order:  # interleaved, and rotated run by run
                        r = run_scenario(net, up, catalog, sc, stagger, setup, k)
                        runs.append(r)
                        times = " ".join(f"{t:.1f}" for t in r.times)
                        inter = f", inter-site {r.inter_site:.3f}x" if r.inter_site is not None else ""
                        print(
                            f"{label} stagger {stagger:g} s run {k + 1}: {SCENARIOS[sc]:<22} upstream "
                            f"{r.ratio:.3f}x{inter}, hosts {times} s, all done {r.wall:.1f} s, "
                            f"load {r.load:.2f}, hosts' CPU {r.cpu:.1f} s, machine busy {r.busy:.0%}"
                            + (f"  ERRORS {r.errors}" if r.errors else ""),
                            flush=True,
                        )
                        cpus = " ".join("-" if c is None else f"{c:.1f}" for c in r.host_cpu)
                        print(f"  hosts' CPU until done (s): {cpus}", flush=True)
                        print(r.uplink, flush=True)
                        if args.trace and sc != "lt":
                            print(trace_report(r.base, len(r.times), piece), flush=True)
    print()
    print(
        f"model {model.size / MIB:.0f} MiB in {model.manifest.num_pieces} pieces of {piece / MIB:g} MiB; "
        f"upstream {rate / MB:g} MB/s (link {uplink}, +{args.delay_ms:g} ms): one copy takes "
        f"{one_copy:.1f} s; {args.runs} run(s) each, medians; {machine_note()}"
    )
    rows = []
    for label in labels:
        n = sum(int(x) for x in label.split("+"))
        for stagger in args.stagger:
            for sc in scenarios:
                rs = [r for r in runs if (r.scenario, r.office, r.stagger) == (sc, label, stagger)]
                inters = [r.inter_site for r in rs if r.inter_site is not None]
                per_host = [median([r.times[i] for r in rs if i < len(r.times)]) for i in range(n)]
                swarm = [median([float(r.swarm[i] or 0) for r in rs if i < len(r.swarm)]) for i in range(n)]
                last = median([max(r.times) for r in rs]) if rs else float("nan")
                errs = sorted({e for r in rs for e in r.errors})
                rows.append(
                    [
                        SCENARIOS[sc], label, f"{stagger:g} s", f"{median([r.ratio for r in rs]):.3f}",
                        f"{median(inters):.3f}" if inters else "-",
                        " ".join(f"{t:.1f}" for t in per_host), f"{last / one_copy:.2f}",
                        f"{median([r.wall for r in rs]):.1f} s",
                        " ".join(f"{b / MIB:.0f}" for b in swarm) if sc != "lt" else "-",
                        f"{median([r.load for r in rs]):.2f}", "; ".join(errs) or "ok",
                    ]
                )  # fmt: skip
    print(
        table(
            ["scenario", "hosts", "stagger", "upstream/model", "inter-site/model", "host times (s)",
             "slowest/one copy",
             "all done", "from peers (MiB)", "load", "status"],
            rows,
        )
    )  # fmt: skip
    print(
        "host times: each from its own start; all done: from the first start to the last finish;\n"
        "inter-site: bytes over the links between sites (both ways, headers included) / model size.\n"
        "floors (issue 13): dsmirror zero-config upstream/model <= 1.05, slowest/one copy <= 1.25"
    )
    if any(r.errors for r in runs) or args.trace or args.profile:
        print(f"outputs and logs kept in {work}")
    if any(r.errors for r in runs):
        sys.exit(1)
    if args.trace or args.profile:
        return
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
