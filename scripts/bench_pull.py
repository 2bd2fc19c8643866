#!/usr/bin/env python3
"""Benchmark one pull: dsmirror against aria2c on the same pieces, from loopback mirrors.

One command::

    python scripts/bench_pull.py                     # 1 GiB, one unthrottled mirror, 3 runs each
    python scripts/bench_pull.py --size 256MiB --runs 1
    python scripts/bench_pull.py --mirrors 3 --cap 40MB/s
    python scripts/bench_pull.py --server all        # the same against each of three servers
    python scripts/bench_pull.py --no-piece-hashes   # whole-file SHA-256 only, as from a registry

It generates a model (three shards and two JSON files, cached under /tmp/dsmirror-bench), hashes it
into a manifest (8 MiB pieces), serves it from ``--mirrors`` loopback mirrors (127.0.0.1, .2, ...) of the
``--server`` kind: ``dsmirror`` (``dsmirror.testing.MirrorServer``, the only one that can throttle
or add latency), ``sendfile`` (a plain asyncio server answering with ``sendfile(2)``) or ``nginx``
(Debian's, from a temporary configuration); a fast server is where the client's own cost shows,
since the mirror's CPU comes out of the same two cores. It
exports the manifest as a Metalink with ``dsmirror manifest export --meta4``, then alternates

- ``dsmirror pull MANIFEST --no-default-catalog --mirrors CATALOG --dest DIR --json`` (verifies
  every piece, fsyncs what it writes), and
- ``aria2c -x16 -s16 -k8M --file-allocation=falloc --enable-mmap=false --metalink-file=M`` (checks
  every piece against the Metalink's piece hashes: --realtime-chunk-checksum is on by default),
  followed by ``sync -f DIR``, whose time is counted, so both write the data durably;

into fresh folders (``--no-reuse``: nothing is copied from an earlier run), and prints wall time,
throughput, CPU seconds (user + system; also per GiB) and peak RSS of each client process (measured
by GNU time, which forks it from a small process: measured from the bench, a child's peak RSS
would start at the bench's own) and the machine's load with each run, medians over the runs and
the ratios dsmirror/aria2c, per server.
Every output is checked byte for byte against the manifest's SHA-256. Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _benchlib import (
    ARIA2C_BASE,
    CACHE,
    DSMIRROR,
    GIB,
    MB,
    MIB,
    SERVERS,
    Measurement,
    MirrorSpec,
    Model,
    NginxServer,
    bad_outputs,
    clear,
    client_env,
    drop_caches,
    dsmirror_pull_flags,
    export_meta4,
    machine_note,
    median,
    parse_size,
    prepare_model,
    read_json_lines,
    run_measured,
    servers_serving,
    table,
    write_catalog,
)
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="model size (default 1GiB)")
    ap.add_argument("--piece-size", default="8MiB")
    ap.add_argument("--runs", type=int, default=3, help="runs of each client (default 3)")
    ap.add_argument("--mirrors", type=int, default=1, help="loopback mirrors, 127.0.0.1 .. (default 1)")
    ap.add_argument("--cap", default=None, help="bandwidth cap of each mirror, e.g. 40MB/s (default none)")
    ap.add_argument("--latency", type=float, default=0.0, help="added latency per request, seconds")
    ap.add_argument(
        "--connections",
        type=int,
        default=None,
        help="max_connections of each mirror in dsmirror's catalog (default: dsmirror's own)",
    )
    ap.add_argument(
        "--server",
        default="dsmirror",
        help=f"mirror server: {'|'.join(SERVERS)}|all, or a comma-separated list (default dsmirror)",
    )
    ap.add_argument("--tools", default="dsmirror,aria2c", help="comma-separated subset of dsmirror,aria2c")
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before each run (root only): the mirrors read from disk",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also run, interleaved, the dsmirror of another source tree (its src/ folder, e.g. "
        "from `git archive OLD | tar -x -C DIR`) as client 'baseline': before/after in one run",
    )
    ap.add_argument(
        "--no-piece-hashes",
        action="store_true",
        help="pull a manifest with whole-file SHA-256 only (as from a registry): each file is checked "
        "whole (aria2c too: its Metalink then has no piece hashes)",
    )
    ap.add_argument("--fresh", action="store_true", help="regenerate the cached model")
    ap.add_argument("--timeout", type=float, default=600.0, help="kill a client after this many seconds")
    args = ap.parse_args()

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if "aria2c" in tools and shutil.which("aria2c") is None:
        print("aria2c is not installed (apt-get install -y aria2): running dsmirror only", file=sys.stderr)
        tools.remove("aria2c")
    if args.baseline_src is not None:
        if not (args.baseline_src / "dsmirror" / "__init__.py").is_file():
            ap.error(f"--baseline-src {args.baseline_src}: no dsmirror package there")
        tools.insert(1, "baseline")
        pkg = str(args.baseline_src / "dsmirror")
        subprocess.run([sys.executable, "-m", "compileall", "-q", pkg], check=True)  # as prepare_model
    if not 1 <= args.mirrors <= 250:
        ap.error("--mirrors must be 1..250")
    cap = parse_size(args.cap) if args.cap else None
    model = prepare_model(parse_size(args.size), parse_size(args.piece_size), fresh=args.fresh)
    size = model.size
    work = CACHE / "pull-work"
    clear(work)
    if args.no_piece_hashes:
        model = whole_file_only(model, work / "whole-file-only.manifest.json")
    specs = [MirrorSpec(f"m{i + 1}", f"127.0.0.{i + 1}", cap, args.latency) for i in range(args.mirrors)]

    kinds = list(SERVERS) if args.server == "all" else [k.strip() for k in args.server.split(",") if k]
    for k in kinds:
        if k not in SERVERS:
            ap.error(f"--server: {k!r} is not one of {', '.join(SERVERS)}, all")
    if "nginx" in kinds and not Path(NginxServer.BINARY).exists():
        print(f"{NginxServer.BINARY} is missing (apt-get install -y nginx): skipping nginx", file=sys.stderr)
        kinds.remove("nginx")
    print(f"machine at the start: {machine_note()}")
    failures = 0
    summaries = []
    for kind in kinds:
        print(f"\n== server: {kind}")
        results, bad = bench_one(args, kind, model, specs, cap, tools, work)
        failures += bad
        summaries.append((kind, results))
    print(f"\nmachine at the end: {machine_note()}")
    print(f"medians over {args.runs} run(s), {size / MB:,.0f} MB, files verified by SHA-256 after each run")
    for kind, results in summaries:
        print(f"\nserver {kind}:")
        summarize(results, tools, size, args.runs)
    return 1 if failures else 0


def bench_one(
    args: argparse.Namespace,
    kind: str,
    model: Model,
    specs: list[MirrorSpec],
    cap: int | None,
    tools: list[str],
    work: Path,
) -> tuple[dict[str, list[Measurement]], int]:
    """Interleaved runs of each tool against mirrors of ``kind``: the good measurements, failures."""
    size = model.size
    with servers_serving(kind, model.root, specs) as servers:
        catalog = work / "mirrors.yaml"
        write_catalog(catalog, specs, servers, args.connections)
        meta4 = work / "model.meta4"
        export_meta4(model.manifest_path, catalog, meta4)
        pull_flags = dsmirror_pull_flags()
        commands = {
            "baseline": lambda dest: commands["dsmirror"](dest),
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
            "aria2c": lambda dest: ["aria2c", *ARIA2C_BASE, f"--metalink-file={meta4}", "-d", str(dest)],
        }
        print(
            f"model: {size / GIB:.3f} GiB in {len(model.manifest.files)} files, "
            f"{model.manifest.num_pieces} pieces of {model.manifest.piece_size // MIB} MiB"
            f"{' (no piece hashes published)' if args.no_piece_hashes else ''}; "
            f"{kind} mirrors: {', '.join(s.url for s in servers)} "
            f"({'unthrottled' if cap is None else f'{cap / MB:g} MB/s each'}, "
            f"latency {args.latency * 1000:g} ms)"
        )
        for tool in tools:
            print(f"  {tool}: {' '.join(commands[tool](Path('DEST')))}")
        print("  aria2c is followed by `sync -f DEST`, counted in its time; dsmirror fsyncs by itself.")
        if not args.drop_caches:
            warm(model.root)

        results: dict[str, list[Measurement]] = {t: [] for t in tools}
        failures = 0
        for run in range(args.runs):
            order = tools if run % 2 == 0 else tools[::-1]
            for tool in order:
                dest = work / f"{tool}-out"
                clear(dest)
                dropped = drop_caches() if args.drop_caches else False
                if args.drop_caches and not dropped:
                    print("  (could not drop the page cache: not root?)")
                for s in servers:
                    s.reset_counters()
                env = client_env(work / f"{tool}-home-{run}")
                if tool == "baseline":
                    env["PYTHONPATH"] = str(args.baseline_src.resolve())
                log = work / f"{kind}-{tool}-{run}"
                m = run_measured(
                    commands[tool](dest),
                    env=env,
                    stdout=log.with_suffix(".out"),
                    stderr=log.with_suffix(".err"),
                    timeout=args.timeout,
                )
                if tool == "aria2c":
                    m = m.add(
                        run_measured(
                            ["sync", "-f", str(dest)],
                            env=env,
                            stdout=log.with_suffix(".sync"),
                            stderr=log.with_suffix(".sync"),
                            timeout=args.timeout,
                        )
                    )
                bad = bad_outputs(model.manifest, dest)
                served = sum(s.bytes_served for s in servers)
                note = ""
                if tool in ("dsmirror", "baseline"):
                    note = dsmirror_note(log.with_suffix(".out"))
                ok = m.returncode == 0 and not bad
                failures += not ok
                print(
                    f"run {run + 1} {tool:8s} {m.wall:7.2f} s  {size / m.wall / MB:7.1f} MB/s  "
                    f"cpu {m.cpu:5.2f} s ({m.user:.2f}+{m.sys:.2f})  rss {m.maxrss / MIB:5.1f} MiB  "
                    f"served {served / size:5.3f}x  "
                    + ("ok" if ok else f"FAILED rc={m.returncode} bad={bad} (logs: {log}.*)")
                    + note
                    + f"  load {os.getloadavg()[0]:.1f}{pressure()}",
                    flush=True,
                )
                if ok:
                    results[tool].append(m)
                shutil.rmtree(dest, ignore_errors=True)

    return results, failures


def summarize(results: dict[str, list[Measurement]], tools: list[str], size: int, runs: int) -> None:
    rows = []
    for tool in tools:
        ms = results[tool]
        if not ms:
            rows.append([tool, "-", "-", "-", "-", "-", "-", "-", f"0/{runs}"])
            continue
        wall = median([m.wall for m in ms])
        rows.append(
            [
                tool,
                f"{wall:.2f}",
                f"{size / wall / MB:.1f}",
                f"{median([m.cpu for m in ms]):.2f}",
                f"{median([m.cpu for m in ms]) / (size / GIB):.2f}",
                f"{median([m.user for m in ms]):.2f}",
                f"{median([m.sys for m in ms]):.2f}",
                f"{median([m.maxrss for m in ms]) / MIB:.1f}",
                f"{len(ms)}/{runs}",
            ]
        )
    print(
        table(
            ["client", "wall s", "MB/s", "cpu s", "cpu s/GiB", "user s", "sys s", "peak RSS MiB", "ok"], rows
        )
    )
    for tool in ("dsmirror", "baseline"):
        if tool not in tools or "aria2c" not in tools or not results[tool] or not results["aria2c"]:
            continue
        d = median([m.wall for m in results[tool]])
        a = median([m.wall for m in results["aria2c"]])
        dc = median([m.cpu for m in results[tool]])
        ac = median([m.cpu for m in results["aria2c"]])
        rs = median([m.maxrss for m in results[tool]]) / MIB
        print(
            f"ratio {tool}/aria2c: time {d / a:.2f}x (throughput {a / d:.2f}x), cpu {dc / ac:.2f}x; "
            f"floors (issue 14): throughput >= 1.5x {'met' if a / d >= 1.5 else 'NOT met'}, "
            f"cpu <= 1.0x {'met' if dc <= ac else 'NOT met'}, "
            f"peak RSS < 100 MiB {'met' if rs < 100 else 'NOT met'}"
        )


def pressure() -> str:
    """The share of the last 10 s in which some task waited for the CPU, and for the disk
    (Linux's pressure stall information), where the kernel has it: other work on the machine
    slows a run through either, and a busy disk slows every client that writes durably."""
    out = []
    for what in ("cpu", "io"):
        try:
            line = Path(f"/proc/pressure/{what}").read_text().splitlines()[0]
        except (OSError, IndexError):
            return ""
        out.append(f"{what} {float(line.split()[1].split('=')[1]):.0f}%")
    return f"  stall {' '.join(out)}"


def whole_file_only(model: Model, path: Path) -> Model:
    """``model`` with a manifest that publishes whole-file SHA-256 only, written to ``path``."""
    m = model.manifest
    files = tuple(FileEntry(f.path, f.size, f.sha256, NoPieceHashes(len(f.pieces))) for f in m.files)
    manifest = Manifest(m.name, m.piece_size, files)
    manifest.write(path)
    return Model(model.root, path, manifest)


def warm(root: Path) -> None:
    """Read the served files once so every run finds them in the page cache."""
    t0 = time.perf_counter()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                while fh.read(16 * MIB):
                    pass
    print(f"  (source files read into the page cache in {time.perf_counter() - t0:.1f} s)")


def dsmirror_note(jsonl: Path) -> str:
    """Redundant/corrupt bytes and troubles from dsmirror's JSON events, when there were any."""
    events = read_json_lines(jsonl)
    finished = [e for e in events if e.get("event") == "PullFinished"]
    troubles = sum(e.get("event") in ("SourceTrouble", "PieceRejected", "SourceDropped") for e in events)
    parts = []
    if finished and finished[-1].get("redundant_bytes"):
        parts.append(f"redundant {finished[-1]['redundant_bytes'] / MB:.1f} MB")
    if troubles:
        parts.append(f"{troubles} trouble events")
    return f"  ({', '.join(parts)})" if parts else ""


if __name__ == "__main__":
    sys.exit(main())
