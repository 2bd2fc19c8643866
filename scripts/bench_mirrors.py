#!/usr/bin/env python3
"""Benchmark pulling from several mirrors of different speed: dsmirror against aria2c.

One command::

    python scripts/bench_mirrors.py                   # 1 GiB, 3 runs of each scenario and client
    python scripts/bench_mirrors.py --size 256MiB --runs 1 --scenarios static,degrade

Three throttled loopback mirrors, each on its own address (aria2c counts its per-server connection
limit per host): ``near`` 127.0.0.1 at 40 MB/s and 10 ms, ``mid`` 127.0.0.2 at 20 MB/s and 60 ms,
``far`` 127.0.0.3 at 8 MB/s and 300 ms (``--caps``, ``--latencies``). A cap is shared by all
connections to that mirror, like a real uplink; the latency is added before every response.
Both clients get the same pieces: aria2c the Metalink written by ``dsmirror manifest export
--meta4`` and run as ``aria2c -x16 -s16 -k8M --uri-selector=adaptive`` (then ``sync -f DEST``,
counted), dsmirror as ``dsmirror pull MANIFEST --no-default-catalog --mirrors CATALOG``.

``--baseline-src OTHER/src`` adds a third client, the dsmirror of another source tree (say the
last commit, from ``git archive``), interleaved with the others in the same run: a change's
before and after, side by side with aria2c, on the same mirrors and the same machine load.

Start-up counts: every run prints when each mirror served its first and its last byte, from
the client's exec (``first byte``: interpreter, imports, resolve and the first request), and
the summary its median (``start s``), the median time from the last byte any mirror served to
the client's exit (``end s``: the last pieces' checks, the whole-file digests, the final sync,
renames, the interpreter's exit) and the bytes the mirrors served beyond the model (``over MB``:
pieces fetched twice, and what a mirror had sent of a response its client dropped: a stolen
span, a split piece's owner at its cut, a lost race). Per scenario it also prints the least
wall time any client could reach here, the ideal time plus that client's start-up, beside
0.95x aria2c's: when the first is the larger, beating aria2c by 5% is out of reach in that run.

Scenarios (``--scenarios``):

- ``static``: nothing changes. The physical limit is the sum of the caps; the bench prints the
  throughput as a fraction of it.
- ``degrade``: when the mirrors have served half the model (``--degrade-at``), the fastest mirror
  drops to 2% of its cap (``--degrade-to``). The ideal time is what a perfect client needs given
  that bandwidth: ``at * S / sum(caps) + (1 - at) * S / (sum(caps) - (1 - to) * cap_fastest)``.
- ``flap``: when 30% is served (``--flap-at``), the fastest mirror goes down (connections refused,
  responses aborted) for ``--flap-seconds`` and comes back on the same address. The pull must not
  fail, and the bench reports the bytes the mirror served after it came back. Ideal:
  ``(S + cap * seconds) / sum(caps)``.

The bench process triggers the changes by watching the mirrors' served-byte counters, so they
happen at the same point of the download for both clients. Per scenario it prints the median time,
the fraction of the sum of caps, the ideal time, the ratio dsmirror/aria2c and the bytes each
mirror served. If dsmirror has a ``sources`` command, its ranking of the mirrors is printed first.
Loopback only; no client can reach beyond 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import itertools
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from _benchlib import (
    ARIA2C_BASE,
    CACHE,
    DSMIRROR,
    GIB,
    MB,
    Measurement,
    MirrorSpec,
    Model,
    bad_outputs,
    clear,
    client_env,
    dsmirror_pull_flags,
    export_meta4,
    machine_note,
    median,
    mirrors_serving,
    parse_size,
    prepare_model,
    read_json_lines,
    run_measured,
    table,
    write_catalog,
)
from dsmirror.testing import MirrorServer

SCENARIOS = ("static", "degrade", "flap")
NAMES = ("near", "mid", "far")


@dataclass
class Outcome:
    m: Measurement
    ok: bool
    served: list[int]  # bytes per mirror
    pull_seconds: float | None = None  # dsmirror's own PullFinished.seconds (no process start-up)
    event_at: float | None = None  # seconds after start when the scenario's change happened
    after_recovery: int | None = None  # flap: bytes the flapping mirror served after it came back
    first_byte: float | None = None  # seconds from exec to the first byte any mirror served
    #: per mirror: seconds from exec to its first and to its last byte served (None: served nothing)
    edges: list[tuple[float, float] | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Scenario:
    """Applies a scenario's change to the mirrors when enough bytes were served; resets them."""

    def __init__(
        self,
        name: str,
        servers: Sequence[MirrorServer],
        specs: Sequence[MirrorSpec],
        size: int,
        args: argparse.Namespace,
    ) -> None:
        self.name, self.servers, self.specs, self.size, self.args = name, servers, specs, size, args
        self.victim = max(range(len(specs)), key=lambda i: specs[i].rate or 0.0)  # the fastest mirror
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.event_at: float | None = None
        self.recovered_at_bytes: int | None = None
        self.samples: list[list[int]] = []  # bytes served by each mirror, sampled every second
        self._sampler: threading.Thread | None = None
        self._edger: threading.Thread | None = None
        self.t_exec = 0.0  # perf_counter just before the client was started
        self.first: list[float | None] = []  # per mirror: perf_counter of its first byte served
        self.last: list[float | None] = []  # ... and of the last change of its counter seen

    def ideal(self) -> float:
        """Seconds a perfect client needs (start-up and latency aside)."""
        caps = [s.rate or 0.0 for s in self.specs]
        total, fast = sum(caps), caps[self.victim]
        if self.name == "degrade":
            at, to = float(self.args.degrade_at), float(self.args.degrade_to)
            return at * self.size / total + (1 - at) * self.size / (total - (1 - to) * fast)
        if self.name == "flap":
            return (self.size + fast * float(self.args.flap_seconds)) / total
        return self.size / total

    def reset(self) -> None:
        for server, spec in zip(self.servers, self.specs, strict=True):
            if server.rate != spec.rate:
                server.set_rate(spec.rate)
            server.set_down(False)
            server.reset_counters()
        self.event_at = self.recovered_at_bytes = None

    def start(self) -> None:
        self._stop.clear()
        self.samples = []
        self.first = [None] * len(self.servers)
        self.last = [None] * len(self.servers)
        self.t_exec = time.perf_counter()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._edger = threading.Thread(target=self._edges, daemon=True)
        self._edger.start()
        if self.name != "static":
            self._thread = threading.Thread(target=self._watch, args=(time.perf_counter(),), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in (self._thread, self._sampler, self._edger):
            if thread is not None:
                thread.join()
        self._thread = self._sampler = self._edger = None
        self.servers[self.victim].set_down(False)

    def _sample(self) -> None:
        t0 = time.perf_counter()
        while True:
            self.samples.append([s.bytes_served for s in self.servers])
            if self._stop.wait(max(0.0, t0 + len(self.samples) - time.perf_counter())):
                return

    def _edges(self) -> None:
        """When each mirror served its first byte (polled every 2 ms until all did, then every
        20 ms) and when its counter last moved: start-up, and when each mirror's part ended."""
        seen = [s.bytes_served for s in self.servers]
        while True:
            now = time.perf_counter()
            for i, server in enumerate(self.servers):
                b = server.bytes_served
                if b != seen[i]:
                    seen[i] = b
                    if self.first[i] is None:
                        self.first[i] = now
                    self.last[i] = now
            if self._stop.wait(0.002 if None in self.first else 0.02):
                return

    def edges(self) -> list[tuple[float, float] | None]:
        """Per mirror: (first byte, last byte) in seconds after the client's exec, or None."""
        return [
            None if f is None or last is None else (f - self.t_exec, last - self.t_exec)
            for f, last in zip(self.first, self.last, strict=True)
        ]

    def timeline(self) -> list[list[float]]:
        """MB/s each mirror served in each second of the last run."""
        rows = [*self.samples, [s.bytes_served for s in self.servers]]
        return [[(b - a) / MB for a, b in zip(r0, r1, strict=True)] for r0, r1 in itertools.pairwise(rows)]

    def _served(self) -> int:
        return sum(s.bytes_served for s in self.servers)

    def _watch(self, t0: float) -> None:
        at = self.args.degrade_at if self.name == "degrade" else self.args.flap_at
        while self._served() < at * self.size:
            if self._stop.wait(0.005):
                return
        self.event_at = time.perf_counter() - t0
        victim, spec = self.servers[self.victim], self.specs[self.victim]
        if self.name == "degrade":
            victim.set_rate((spec.rate or 0.0) * self.args.degrade_to)
        elif self.name == "flap":
            victim.set_down(True)
            self._stop.wait(self.args.flap_seconds)
            victim.set_down(False)
            self.recovered_at_bytes = victim.bytes_served


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="model size (default 1GiB)")
    ap.add_argument("--piece-size", default="8MiB")
    ap.add_argument("--runs", type=int, default=3, help="runs of each client per scenario (default 3)")
    ap.add_argument("--caps", default="40,20,8", help="MB/s of each mirror (default 40,20,8)")
    ap.add_argument("--latencies", default="10,60,300", help="ms added per request (default 10,60,300)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    ap.add_argument("--degrade-at", type=float, default=0.5, help="fraction served when the drop happens")
    ap.add_argument("--degrade-to", type=float, default=0.02, help="new rate as a fraction of the cap")
    ap.add_argument("--flap-at", type=float, default=0.3, help="fraction served when the mirror goes down")
    ap.add_argument("--flap-seconds", type=float, default=5.0, help="how long it stays down")
    ap.add_argument("--tools", default="dsmirror,aria2c", help="comma-separated subset of dsmirror,aria2c")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="also run the dsmirror of this source tree (its src/ folder), as client 'baseline', "
        "interleaved with the others in the same run: before/after figures of one change",
    )
    ap.add_argument(
        "--timeline", action="store_true", help="print MB/s served by each mirror, second by second"
    )
    ap.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip measuring what the throttled mirrors deliver to plain curl streams first",
    )
    ap.add_argument("--fresh", action="store_true", help="regenerate the cached model")
    args = ap.parse_args()

    caps = [float(c) * MB for c in args.caps.split(",")]
    latencies = [float(x) / 1000 for x in args.latencies.split(",")]
    if len(caps) != len(latencies) or not 1 <= len(caps) <= 250:
        ap.error("--caps and --latencies need the same number (1..250) of values")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if "aria2c" in tools and shutil.which("aria2c") is None:
        print("aria2c is not installed (apt-get install -y aria2): running dsmirror only", file=sys.stderr)
        tools.remove("aria2c")
    if args.baseline_src is not None:
        if not (args.baseline_src / "dsmirror" / "__init__.py").is_file():
            ap.error(f"--baseline-src {args.baseline_src}: no dsmirror package there")
        tools.append("baseline")
        # Byte-compiled like the client under test (``compile_client``): start-up is measured.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(args.baseline_src / "dsmirror")], check=True
        )

    model = prepare_model(parse_size(args.size), parse_size(args.piece_size), fresh=args.fresh)
    size = model.size
    specs = [
        MirrorSpec(NAMES[i] if i < len(NAMES) else f"m{i + 1}", f"127.0.0.{i + 1}", cap, lat)
        for i, (cap, lat) in enumerate(zip(caps, latencies, strict=True))
    ]
    work = CACHE / "mirrors-work"
    clear(work)
    print(
        f"model: {size / GIB:.3f} GiB in {len(model.manifest.files)} files, "
        f"{model.manifest.num_pieces} pieces; sum of caps {sum(caps) / MB:g} MB/s"
    )
    with mirrors_serving(model.root, specs) as servers:
        for spec, server in zip(specs, servers, strict=True):
            rate, latency = (spec.rate or 0) / MB, spec.latency * 1000
            print(f"  {spec.name:5s} {server.url}  {rate:g} MB/s  {latency:g} ms")
        catalog = work / "mirrors.yaml"
        write_catalog(catalog, specs, servers)
        meta4 = work / "model.meta4"
        export_meta4(model.manifest_path, catalog, meta4)
        pull_flags = dsmirror_pull_flags()
        commands: dict[str, Callable[[Path], list[str]]] = {
            "dsmirror": lambda dest: [
                *DSMIRROR,
                "pull",
                str(model.manifest_path),
                "--no-default-catalog",
                "--mirrors",
                str(catalog),
                "--dest",
                str(dest),
                "--json",
                *pull_flags,
            ],
            "baseline": lambda dest: commands["dsmirror"](dest),
            "aria2c": lambda dest: [
                "aria2c",
                *ARIA2C_BASE,
                "--uri-selector=adaptive",
                f"--metalink-file={meta4}",
                "-d",
                str(dest),
            ],
        }
        for tool in tools:
            print(f"  {tool}: {' '.join(commands[tool](Path('DEST')))}")
        show_sources(model.manifest_path, catalog, work)
        achievable = calibrate(servers, specs, model) if args.calibrate else None
        print(f"machine: {machine_note()}")

        summaries = []
        failures = 0
        for name in scenarios:
            scenario = Scenario(name, servers, specs, size, args)
            ideal = scenario.ideal()
            timeout = max(120.0, 8 * ideal)
            print(f"\n== {name}: ideal {ideal:.2f} s ({size / ideal / MB:.1f} MB/s)", flush=True)
            outcomes: dict[str, list[Outcome]] = {t: [] for t in tools}
            for run in range(args.runs):
                for tool in tools if run % 2 == 0 else tools[::-1]:
                    out = run_once(
                        tool, commands[tool], scenario, model, work, run, timeout, args.baseline_src
                    )
                    outcomes[tool].append(out)
                    failures += not out.ok
                    print_run(run, tool, out, scenario, size, sum(caps), ideal, specs)
                    if args.timeline:
                        print_timeline(scenario, specs)
            summaries.append((name, ideal, outcomes))

    print(f"\nmachine at the end: {machine_note()}")
    print(f"\n== summary: medians over {args.runs} run(s); {size / MB:,.0f} MB", end="; ")
    print(f"sum of caps {sum(caps) / MB:g} MB/s")
    rows = []
    for name, ideal, outcomes in summaries:
        walls = {t: median([o.m.wall for o in outcomes[t] if o.ok]) for t in tools}
        for tool in tools:
            good = [o for o in outcomes[tool] if o.ok]
            served = [median([o.served[i] for o in outcomes[tool]]) for i in range(len(specs))]
            w = walls[tool]
            ratio = (
                f"{w / walls['aria2c']:.2f}" if tool in ("dsmirror", "baseline") and "aria2c" in walls else ""
            )
            pulls = [o.pull_seconds for o in good if o.pull_seconds is not None]
            starts = [o.first_byte for o in good if o.first_byte is not None]
            ends = [o.m.wall - max(e[1] for e in o.edges if e) for o in good if any(o.edges)]
            over = [sum(o.served) - size for o in good]
            rows.append(
                [
                    name,
                    tool,
                    f"{w:.2f}",
                    f"{median(pulls):.2f}" if pulls else "-",
                    f"{median(starts):.2f}" if starts else "-",
                    f"{median(ends):.2f}" if ends else "-",
                    f"{size / w / sum(caps):.1%}",
                    f"{ideal:.2f}",
                    f"{w / ideal:.2f}",
                    ratio,
                    " / ".join(f"{b / MB:.0f}" for b in served),
                    f"{median(over) / MB:.1f}" if over else "-",
                    f"{len(good)}/{len(outcomes[tool])}",
                ]
            )
    print(
        table(
            [
                "scenario",
                "client",
                "wall s",
                "pull s",
                "start s",
                "end s",
                "of caps",
                "ideal s",
                "x ideal",
                "ds/aria2",
                "MB served " + "/".join(s.name for s in specs),
                "over MB",
                "ok",
            ],
            rows,
        )
    )
    for name, ideal, outcomes in summaries:
        aria = [o.m.wall for o in outcomes.get("aria2c", []) if o.ok]
        ds = [o for o in outcomes.get("dsmirror", []) if o.ok and o.first_byte is not None]
        if aria and ds:
            floor, target = ideal + median([o.first_byte or 0.0 for o in ds]), 0.95 * median(aria)
            out_of_reach = " (0.95x aria2c is below it: out of reach in this run)" if floor > target else ""
            print(
                f"{name}: 0.95x aria2c's median = {target:.2f} s; the ideal plus dsmirror's "
                f"start-up = {floor:.2f} s{out_of_reach}"
            )
    if achievable:
        print(
            f"the mirrors delivered {achievable / MB:.1f} MB/s to 8 curl streams each before the runs "
            f"({achievable / sum(caps):.0%} of the caps): the ceiling on this machine at that time"
        )
    print(
        "wall s: the client process, start-up and (aria2c) final sync included; pull s: dsmirror's own\n"
        "PullFinished.seconds, without interpreter start-up; start s: exec to the first byte any mirror\n"
        "served (start-up: interpreter, imports, resolve, first request); end s: the last byte served to\n"
        "the client's exit; of caps: size / wall / sum of caps; over MB: served beyond the model's size."
    )
    return 1 if failures else 0


def run_once(
    tool: str,
    command: Callable[[Path], list[str]],
    scenario: Scenario,
    model: Model,
    work: Path,
    run: int,
    timeout: float,
    baseline_src: Path | None = None,
) -> Outcome:
    dest = work / f"{tool}-out"
    clear(dest)
    scenario.reset()
    env = client_env(work / f"{tool}-{scenario.name}-home-{run}")
    if tool == "baseline" and baseline_src is not None:
        env["PYTHONPATH"] = str(baseline_src)
    log = work / f"{tool}-{scenario.name}-{run}"
    scenario.start()
    try:
        m = run_measured(
            command(dest),
            env=env,
            stdout=log.with_suffix(".out"),
            stderr=log.with_suffix(".err"),
            timeout=timeout,
        )
        if tool == "aria2c":
            m = m.add(
                run_measured(
                    ["sync", "-f", str(dest)],
                    env=env,
                    stdout=log.with_suffix(".sync"),
                    stderr=log.with_suffix(".sync"),
                    timeout=timeout,
                )
            )
    finally:
        scenario.stop()
    served = [s.bytes_served for s in scenario.servers]
    bad = bad_outputs(model.manifest, dest)
    out = Outcome(m, m.returncode == 0 and not bad, served, event_at=scenario.event_at)
    out.edges = scenario.edges()
    firsts = [e[0] for e in out.edges if e is not None]
    out.first_byte = min(firsts) if firsts else None
    if scenario.recovered_at_bytes is not None:
        out.after_recovery = served[scenario.victim] - scenario.recovered_at_bytes
    if bad:
        out.notes.append(f"bad files: {bad}")
    if m.returncode:
        out.notes.append(f"exit {m.returncode} (logs {log}.*)")
    if tool in ("dsmirror", "baseline"):
        events = read_json_lines(log.with_suffix(".out"))
        finished = [e for e in events if e.get("event") == "PullFinished"]
        if finished:
            out.pull_seconds = float(finished[-1]["seconds"])
            if finished[-1].get("redundant_bytes"):
                out.notes.append(f"redundant {finished[-1]['redundant_bytes'] / MB:.1f} MB")
        kinds = [e.get("event") for e in events]
        for kind in ("SourceTrouble", "SourceDropped", "PieceRejected"):
            if kinds.count(kind):
                out.notes.append(f"{kinds.count(kind)} {kind}")
    shutil.rmtree(dest, ignore_errors=True)
    return out


def print_run(
    run: int,
    tool: str,
    out: Outcome,
    scenario: Scenario,
    size: int,
    caps: float,
    ideal: float,
    specs: Sequence[MirrorSpec],
) -> None:
    served = ", ".join(f"{s.name} {b / MB:.0f}" for s, b in zip(specs, out.served, strict=True))
    extra = []
    if out.event_at is not None:
        extra.append(f"{scenario.name} at {out.event_at:.1f} s")
    if out.after_recovery is not None:
        extra.append(
            f"{specs[scenario.victim].name} served {out.after_recovery / MB:.0f} MB after it came back"
        )
    if out.pull_seconds is not None:
        extra.append(f"pull {out.pull_seconds:.2f} s")
    if out.first_byte is not None:
        extra.append(f"first byte {out.first_byte:.2f} s")
    ends = [f"{s.name} {e[0]:.2f}-{e[1]:.2f}" for s, e in zip(specs, out.edges, strict=True) if e is not None]
    if ends:
        extra.append("served " + ", ".join(ends))
    print(
        f"run {run + 1} {tool:8s} {out.m.wall:7.2f} s  {size / out.m.wall / caps:6.1%} of caps  "
        f"{out.m.wall / ideal:5.2f}x ideal  cpu {out.m.cpu:5.2f} s  MB served: {served}  "
        + ("ok" if out.ok else "FAILED")
        + (f"  ({'; '.join(extra + out.notes)})" if extra or out.notes else ""),
        flush=True,
    )


def print_timeline(scenario: Scenario, specs: Sequence[MirrorSpec]) -> None:
    """One line per mirror: the MB/s it served in each second, and the sum over the mirrors."""
    seconds = scenario.timeline()
    for i, spec in enumerate(specs):
        print(f"    {spec.name:>5s} " + " ".join(f"{row[i]:3.0f}" for row in seconds))
    print("      sum " + " ".join(f"{sum(row):3.0f}" for row in seconds))


def calibrate(servers: Sequence[MirrorServer], specs: Sequence[MirrorSpec], model: Model) -> float | None:
    """MB/s the throttled mirrors deliver at once to a trivial client (8 curl range streams each).

    The caps are token buckets in this Python process; on a loaded machine they deliver less than
    the nominal cap, and no client can beat what they deliver.
    """
    if shutil.which("curl") is None:
        print("  (curl is not installed: no calibration)")
        return None
    big = max(model.manifest.files, key=lambda f: f.size)
    n = 8
    part = big.size // n
    procs = []
    for server, spec in zip(servers, specs, strict=True):
        # Enough repeats of its range that every stream is still busy after 4 s, even unthrottled.
        repeats = 1 + math.ceil(4 * (spec.rate or 2e9) / n / part)
        for i in range(n):
            argv = ["curl", "-s", "--noproxy", "*", "-r", f"{i * part}-{(i + 1) * part - 1}"]
            procs.append(subprocess.Popen(argv + ["-o", "/dev/null", server.url + big.path] * repeats))
    try:
        time.sleep(1.0)
        before, t0 = [s.bytes_served for s in servers], time.perf_counter()
        time.sleep(3.0)
        after, t1 = [s.bytes_served for s in servers], time.perf_counter()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        # The mirrors' sender threads notice the closed connections at their next chunk: let them,
        # so the first run's start-up is not measured from their last bytes.
        time.sleep(1.0)
    rates = [(b - a) / (t1 - t0) for a, b in zip(before, after, strict=True)]
    shown = ", ".join(
        f"{spec.name} {r / MB:.1f}/{(spec.rate or 0) / MB:g}" for spec, r in zip(specs, rates, strict=True)
    )
    print(f"  calibration (8 curl streams per mirror, 3 s): {shown} MB/s; sum {sum(rates) / MB:.1f} MB/s")
    return sum(rates)


def show_sources(manifest: Path, catalog: Path, work: Path) -> None:
    """``dsmirror sources`` for the bench's mirrors, if this dsmirror has that command."""
    env = client_env(work / "sources-home")
    probe = subprocess.run([*DSMIRROR, "sources", "--help"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        print("  (`dsmirror sources` does not exist yet: skipped)")
        return
    argv = [*DSMIRROR, "sources", str(manifest), "--no-default-catalog", "--mirrors", str(catalog)]
    result = subprocess.run(argv, env=env | {"COLUMNS": "160"}, capture_output=True, text=True, timeout=120)
    print(f"\n$ dsmirror sources MANIFEST --no-default-catalog --mirrors CATALOG  (exit {result.returncode})")
    print((result.stdout + result.stderr).rstrip())


if __name__ == "__main__":
    sys.exit(main())
