#!/usr/bin/env python3
"""Benchmark: a lying mirror where no piece hashes exist (issue 15, item 3).

One command::

    python scripts/bench_liars.py                          # 1 GiB + 96 MiB, liar in the last quarter
    python scripts/bench_liars.py --size 24MiB --region 0.4:0.42 --stride 16KiB --runs 5

A file of ``--size`` random bytes (cached under /tmp/dsmirror-bench-liars) is published with a
whole-file SHA-256 only (a manifest whose ``pieces`` is null: what a Hugging Face LFS file or an
Ollama blob gives), 8 MiB pieces. Each run pulls it with ``dsmirror pull --no-default-catalog
--mirrors CAT --no-reuse --json`` (a subprocess) into a fresh folder, interleaving three setups:

- ``single``: one honest mirror (the time to beat, and 1.00x bytes by construction);
- ``honest``: three honest mirrors (the overhead of the witnesses' checks when nobody lies);
- ``liar``: three mirrors, the second of which flips a byte every ``--stride`` bytes of the region
  ``--region`` (fractions of the file) in every response that carries them.

Every mirror is a ``dsmirror.testing.MirrorServer`` on 127.0.0.x (``--rate`` caps each, 64 MB/s by
default, like a real mirror's uplink), and the bytes fetched are the mirrors' own counters (file
bytes sent, not headers).
Printed per run and as medians: bytes fetched / file size, seconds and the ratio to ``single``, and
for ``liar`` whether the liar was banned, by evidence, and how much of the file had been received
when it was (what the first progress event after its ``SourceDropped`` says was received). Every
output is checked against the SHA-256; the machine's load is printed with each run. Nothing leaves
127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes
from dsmirror.testing import Faults, MirrorServer

MIB = 1 << 20
KIB = 1 << 10
PS = 8 * MIB
CACHE = Path(tempfile.gettempdir()) / "dsmirror-bench-liars"
CLI = [sys.executable, "-c", "from dsmirror.cli import main; main()"]


def parse_size(text: str) -> int:
    units = {"KiB": KIB, "MiB": MIB, "GiB": 1 << 30, "MB": 10**6, "GB": 10**9, "": 1}
    for suffix in sorted(units, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(text)


def prepare(size: int) -> tuple[Path, str]:
    """The file (random bytes, made once per size) and its SHA-256."""
    root = CACHE / f"srv-{size}"
    path = root / "model.gguf"
    digest_file = CACHE / f"{size}.sha256"
    if path.exists() and digest_file.exists() and path.stat().st_size == size:
        return root, digest_file.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MIB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    digest_file.write_text(h.hexdigest())
    return root, h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


def catalog(path: Path, mirrors: list[MirrorServer]) -> Path:
    lines = ["version: 1", "mirrors:"]
    for k, m in enumerate(mirrors):
        lines += [f"  - name: m{k + 1}", "    kind: http", f"    url: {json.dumps(m.url)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_pull(work: Path, manifest: Path, mirrors: list[MirrorServer], tag: str) -> dict[str, Any]:
    dest = work / f"dest-{tag}"
    home = work / f"home-{tag}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    env.update(XDG_STATE_HOME=str(home / ".state"), XDG_CACHE_HOME=str(home / ".cache"))
    for m in mirrors:
        m.reset_counters()
    cat = catalog(work / f"mirrors-{tag}.yaml", mirrors)
    cmd = [*CLI, "pull", str(manifest), "--no-default-catalog", "--mirrors", str(cat)]
    cmd += ["--dest", str(dest), "--no-reuse", "--json"]
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tag}: pull failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    out: dict[str, Any] = {
        "seconds": seconds,
        "fetched": sum(m.bytes_served for m in mirrors),
        "corrupted": sum(m.corrupted_bytes for m in mirrors),
        "load": load,
        "dest": dest,
        "banned": [],
        "received_at_ban": None,
        "reason": "",
    }
    banned_at = None
    for k, ev in enumerate(events):
        if ev.get("event") == "SourceDropped":
            out["banned"].append(ev["source"])
            if banned_at is None:
                banned_at = k
                out["reason"] = ev.get("reason", "")
    if banned_at is not None:
        # An upper bound: what the first progress event after the ban says was received (the
        # file's size if none came before the pull finished).
        later = [e for e in events[banned_at:] if e.get("event") == "Progress"]
        done = [e for e in events[banned_at:] if e.get("event") == "PullFinished"]
        first = later[0] if later and (not done or events.index(later[0]) < events.index(done[0])) else None
        out["received_at_ban"] = first["received_bytes"] if first else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1120MiB", help="file size (default 1 GiB + 96 MiB)")
    ap.add_argument("--region", default="0.75:1.0", help="the liar's damaged region, fractions of the file")
    ap.add_argument("--stride", default="64KiB", help="one flipped byte every STRIDE bytes of the region")
    ap.add_argument(
        "--rate",
        default="64MB",
        help="cap of each mirror (default 64MB; 0: unthrottled, where streams cut short leave megabytes "
        "in socket buffers that the mirrors' counters count, up to 10%% of the file on a loaded machine)",
    )
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    size = parse_size(args.size)
    lo, hi = (float(x) for x in args.region.split(":"))
    region = (int(size * lo), int(size * hi))
    stride = parse_size(args.stride)
    rate = parse_size(args.rate) or None
    root, digest = prepare(size)
    work = Path(tempfile.mkdtemp(prefix="bench-liars-"))
    manifest = work / "registry.manifest.json"
    n = -(-size // PS)
    Manifest("bench-liars", PS, (FileEntry("model.gguf", size, digest, NoPieceHashes(n)),)).write(manifest)
    bad = Faults(corrupt_region=region, corrupt_stride=stride)
    print(
        f"file {size / MIB:.1f} MiB, 8 MiB pieces, no piece hashes; liar flips 1 byte / {stride} B in "
        f"[{region[0]}, {region[1]}) ({(region[1] - region[0]) // stride} bytes); mirrors "
        f"{'unthrottled' if rate is None else f'{rate / 1e6:.0f} MB/s each'}; {args.runs} runs"
    )
    mirrors = [MirrorServer(root, host=f"127.0.0.{k + 1}", rate=rate) for k in range(3)]
    for m in mirrors:
        m.start()
    results: dict[str, list[dict[str, Any]]] = {"single": [], "honest": [], "liar": []}
    try:
        for run in range(args.runs):
            for tag in ("single", "honest", "liar"):
                mirrors[1].set_faults(bad if tag == "liar" else None)
                used = mirrors[:1] if tag == "single" else mirrors
                r = run_pull(work, manifest, used, tag)
                if sha256(r["dest"] / "model.gguf") != digest:
                    raise SystemExit(f"{tag} run {run + 1}: the output does not match the SHA-256")
                shutil.rmtree(r["dest"], ignore_errors=True)
                results[tag].append(r)
                extra = ""
                if tag == "liar":
                    at = r["received_at_ban"]
                    extra = (
                        f"  banned {r['banned'] or 'nobody'}"
                        + (f", at most {at / size:.0%} received then" if at is not None else ", at the end")
                        + f", {r['corrupted']} bad bytes sent"
                    )
                print(
                    f"run {run + 1} {tag:6s} {r['fetched'] / size:6.4f}x bytes  {r['seconds']:6.2f} s"
                    f"  load {r['load']:.2f}{extra}",
                    flush=True,
                )
    finally:
        for m in mirrors:
            m.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(r["seconds"] for r in results["single"])
    print("\nmedians                 bytes/size   seconds   time / single mirror")
    for tag, rs in results.items():
        ratio = statistics.median(r["fetched"] / size for r in rs)
        secs = statistics.median(r["seconds"] for r in rs)
        print(f"  {tag:20s}  {ratio:8.4f}x  {secs:8.2f}   {secs / base:6.2f}")
    honest = statistics.median(r["fetched"] / size for r in results["honest"])
    caught = [r for r in results["liar"] if "m2" in r["banned"]]
    early = [r for r in caught if r["received_at_ban"] is not None and r["received_at_ban"] < size]
    print(
        f"\nno liar: {100 * (honest - 1):.2f}% extra bytes (target < 2%); liar: banned in {len(caught)}"
        f"/{len(results['liar'])} runs, before the file's end in {len(early)}; "
        f"load now {os.getloadavg()[0]:.2f}"
    )
    if caught:
        print(f"ban reason (first run): {caught[0]['reason']}")


if __name__ == "__main__":
    main()
