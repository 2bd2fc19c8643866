#!/usr/bin/env python3
"""Benchmark an office LAN: N dsmirror clients pull the same model at once behind one slow uplink.

One command::

    python scripts/bench_lan.py                      # 512 MiB, 4 clients, upstream 20 MB/s
    python scripts/bench_lan.py --size 128MiB --clients 3 --upstream-rate 10MB/s

An upstream mirror (:class:`dsmirror.testing.MirrorServer` on 127.0.0.1, throttled like an internet
link: one shared token bucket for all its connections) serves a generated model (cached under
/tmp/dsmirror-bench) whose manifest records the info-hashes of its hybrid torrent. Every client is
a ``dsmirror pull`` process with its own BitTorrent listen port on loopback, told the other
clients with ``--peer`` (no multicast needed), ``--prefer p2p``, and ``--seed`` so that a client
that finished keeps serving the others; when all are done they get SIGTERM. Three scenarios:

``shared``   the N clients at once, sharing over BitTorrent;
``apart``    the N clients at once with ``--no-p2p``: each pulls the whole model from the upstream;
``alone``    one client, ``--no-p2p``: the time one download takes over that uplink.

For each it prints the bytes the upstream served divided by the model size (the goal of sharing is
1.0: one copy per office; the floor asked for is 1.15 with 4 clients) and each client's time to a
verified model. Every output is checked against the manifest's SHA-256. Nothing leaves 127/8.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from _benchlib import (
    CACHE,
    DSMIRROR,
    MB,
    MIB,
    Model,
    bad_outputs,
    clear,
    client_env,
    parse_size,
    prepare_model,
    require_loopback,
    table,
)
from dsmirror import load_manifest
from dsmirror._fetch.swarm.torrent import create_torrent, load_torrent, with_torrent_hashes
from dsmirror.testing import MirrorServer

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Client:
    name: str
    proc: subprocess.Popen[str]
    started: float
    finished_at: float | None = None
    result: dict[str, object] | None = None
    error: str | None = None
    log: Path | None = None

    def watch(self) -> None:
        assert self.proc.stdout is not None and self.log is not None
        with open(self.log, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                self._line(line)

    def _line(self, line: str) -> None:
        with contextlib.suppress(json.JSONDecodeError):
            ev = json.loads(line)
            if isinstance(ev, dict) and ev.get("event") == "PullFinished":
                self.finished_at = time.monotonic()
                self.result = ev


def prepare_swarmed(model: Model) -> tuple[Path, Path]:
    """The model's hybrid torrent and a manifest recording its info-hashes (cached beside the model)."""
    folder = model.manifest_path.parent
    torrent_path, manifest_path = folder / "model.torrent", folder / "swarmed.manifest.json"
    if not (torrent_path.exists() and manifest_path.exists()):
        print("making the model's torrent ...", flush=True)
        t = create_torrent(model.manifest, model.root, verify=False)
        t.write(torrent_path)
        with_torrent_hashes(model.manifest, [t]).write(manifest_path)
    load_torrent(torrent_path)
    load_manifest(manifest_path)
    return torrent_path, manifest_path


def run_scenario(
    label: str,
    n: int,
    *,
    p2p: bool,
    upstream: MirrorServer,
    catalog: Path,
    manifest_path: Path,
    torrent_path: Path,
    work: Path,
    connections: int,
    prefer: str,
    timeout: float,
) -> tuple[int, list[Client]]:
    upstream.reset_counters()
    ports = [free_port() for _ in range(n)]
    clients: list[Client] = []
    for i in range(n):
        home = work / label / f"home{i}"
        dest = work / label / f"dest{i}"
        clear(home)
        clear(dest)
        argv = [
            *DSMIRROR, "pull", str(manifest_path), "--mirrors", str(catalog), "--no-default-catalog",
            "--no-reuse", "--dest", str(dest), "--json", "-x", str(connections),
        ]  # fmt: skip
        if p2p:
            argv += ["--torrent", str(torrent_path), "--listen", f"{HOST}:{ports[i]}", "--no-lsd"]
            argv += ["--prefer", prefer, "--seed"]
            for j in range(n):
                if j != i:
                    argv += ["--peer", f"{HOST}:{ports[j]}"]
        else:
            argv += ["--no-p2p"]
        with open(work / label / f"stderr{i}.txt", "w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, env=client_env(home))
        c = Client(f"client{i + 1}", proc, time.monotonic(), log=work / label / f"events{i}.jsonl")
        threading.Thread(target=c.watch, daemon=True).start()
        clients.append(c)
    deadline = time.monotonic() + timeout
    timeline: list[int] = []  # upstream bytes served, sampled every second
    next_sample = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            timeline.append(upstream.bytes_served)
            next_sample += 1.0
        if all(c.finished_at is not None for c in clients):
            break
        for c in clients:
            if c.finished_at is None and c.proc.poll() is not None:
                c.error = f"exited with {c.proc.returncode}"
        if any(c.error for c in clients):
            break
        time.sleep(0.1)
    served = upstream.bytes_served
    rates = [(b - a) / MB for a, b in itertools.pairwise(timeline)]
    print("  upstream MB/s per second: " + " ".join(f"{r:.0f}" for r in rates), flush=True)
    for c in clients:
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    for c in clients:
        try:
            c.proc.wait(30)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.error = c.error or "did not stop on SIGTERM"
        if c.finished_at is None and not c.error:
            c.error = "timed out"
    manifest = load_manifest(manifest_path)
    for i, c in enumerate(clients):
        if c.finished_at is not None:
            bad = bad_outputs(manifest, work / label / f"dest{i}")
            if bad:
                c.error = f"{len(bad)} files differ"
    return served, clients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="512MiB", help="model size (default 512MiB)")
    ap.add_argument("--piece-size", default="1MiB", help="piece size (default 1MiB)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--upstream-rate", default="20MB/s", help="the uplink's bandwidth (default 20MB/s)")
    ap.add_argument("--connections", type=int, default=4, help="HTTP connections per client (default 4)")
    ap.add_argument("--prefer", default="p2p", help="--prefer of the sharing clients (default p2p)")
    ap.add_argument("--skip", action="append", default=[], choices=["shared", "apart", "alone"])
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per scenario")
    ap.add_argument("--fresh", action="store_true", help="regenerate the cached model")
    args = ap.parse_args()
    size, piece = parse_size(args.size), parse_size(args.piece_size)
    rate = parse_size(args.upstream_rate)
    require_loopback(HOST)
    model = prepare_model(size, piece, fresh=args.fresh)
    torrent_path, manifest_path = prepare_swarmed(model)
    work = CACHE / "lan"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    summary = []
    with MirrorServer(model.root, host=HOST, rate=rate) as upstream:
        catalog = work / "upstream.yaml"
        catalog.write_text(
            f'version: 1\nmirrors:\n  - name: upstream\n    kind: http\n    url: "{upstream.url}"\n'
        )
        n = args.clients
        plans = [("shared", n, True), ("apart", n, False), ("alone", 1, False)]
        for label, count, p2p in plans:
            if label in args.skip:
                continue
            clear(work / label)
            print(f"{label}: {count} client(s) at once, upstream {rate / MB:.0f} MB/s ...", flush=True)
            t0 = time.monotonic()
            served, clients = run_scenario(
                label, count, p2p=p2p, upstream=upstream, catalog=catalog, manifest_path=manifest_path,
                torrent_path=torrent_path, work=work, connections=args.connections, prefer=args.prefer,
                timeout=args.timeout,
            )  # fmt: skip
            wall = time.monotonic() - t0
            ratio = served / model.size
            summary.append((label, count, ratio, wall))
            for c in clients:
                secs = c.finished_at - c.started if c.finished_at is not None else float("nan")
                by = (c.result or {}).get("delivered_by_source") or {}
                assert isinstance(by, dict)
                rows.append(
                    [
                        label,
                        c.name,
                        f"{secs:.1f} s",
                        f"{model.size / secs / MB:.1f} MB/s" if c.finished_at else "-",
                        f"{by.get('upstream', 0) / MIB:.0f} MiB",
                        f"{by.get('swarm', 0) / MIB:.0f} MiB",
                        f"{(c.result or {}).get('redundant_bytes', 0) / MIB:.1f} MiB",  # type: ignore[operator]
                        c.error or "ok",
                    ]
                )
            print(
                f"  upstream served {served / MB:,.1f} MB = {ratio:.3f} x the model, in {wall:.1f} s",
                flush=True,
            )
    print()
    print(
        f"model {model.size / MIB:.0f} MiB in {model.manifest.num_pieces} pieces of {piece / MIB:g} MiB; "
        f"upstream {rate / MB:g} MB/s; {args.connections} HTTP connections per client"
    )
    print(table(["scenario", "clients", "upstream / model", "wall"], [
        [label, str(count), f"{ratio:.3f}", f"{wall:.1f} s"] for label, count, ratio, wall in summary
    ]))  # fmt: skip
    print()
    print(
        table(
            ["scenario", "client", "time", "rate", "from upstream", "from swarm", "redundant", "status"], rows
        )
    )
    failed = [r for r in rows if r[-1] != "ok"]
    shared = [s for s in summary if s[0] == "shared"]
    if shared and args.clients == 4 and shared[0][2] > 1.15:
        print(f"\nFLOOR MISSED: shared upstream/model {shared[0][2]:.3f} > 1.15")
        sys.exit(1)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
