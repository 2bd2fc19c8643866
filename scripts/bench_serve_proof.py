#!/usr/bin/env python3
"""Benchmark the box's proof: a registry model pulled through a box with and without its proof.

One command::

    python scripts/bench_serve_proof.py                  # 1 GiB, 3 runs of each, interleaved
    python scripts/bench_serve_proof.py --size 256MiB --runs 1

On loopback: an HF endpoint acting as the box (the Hub's routes over one repo; an in-process
``dsmirror serve`` app, with a ``ProofBook`` or without one) and a second HF endpoint that flips a
byte in every body it sends (``dsmirror.testing.MirrorServer`` with ``Faults(corrupt=True)``), 4
connections each. ``dsmirror pull hf://acme/big --no-default-catalog --mirrors CATALOG --no-reuse``
runs against both, alternately with the box's proof and without it (the registry's whole-file
digests only), on the same files and the same machine load. Each run prints the time, the pieces
rejected (by whom), the liar's served bytes and the bytes the pull fetched as a multiple of the
file size (downloaded + corrupt + redundant, from ``PullFinished``), and checks the result byte
for byte (SHA-256 of the pulled file); the summary gives medians and the load average. The time
the box took to prove the file (hash it in pieces, once) is printed too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from dsmirror._core.units import parse_size
from dsmirror._serve import HfRepo, ModelIndex, ProofBook, ServerThread, make_app
from dsmirror.testing.cli import DSMIRROR_CLI, cli_env, hf_liar, json_events, mirror_catalog

REPO_ID = "acme/big"


def _write(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 << 20))
            h.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _pull(base: Path, box: str, liar: str, want: str) -> dict[str, Any]:
    cat = mirror_catalog(base / "mirrors.yaml", [("box", "hf", box), ("liar", "hf", liar)], max_connections=4)
    home, out = base / "home", base / "out"
    for d in (home, out):
        shutil.rmtree(d, ignore_errors=True)
    home.mkdir()
    argv = [*DSMIRROR_CLI, "pull", f"hf://{REPO_ID}", "--no-default-catalog", "--mirrors", str(cat)]
    argv += ["--dest", str(out), "--json", "--no-reuse", "--give-up-after", "60"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=cli_env(home), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pull failed ({proc.returncode}): {proc.stderr[-2000:]}")
    events = json_events(proc.stdout)
    done = next(e for e in events if e["event"] == "PullFinished")
    got = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    if got != want:
        raise SystemExit(f"the pulled file is wrong: {got}")
    fetched = done["downloaded_bytes"] + done["corrupt_bytes"] + done["redundant_bytes"]
    return {
        "seconds": seconds,
        "rejected": [e["source"] for e in events if e["event"] == "PieceRejected"],
        "dropped": [e["source"] for e in events if e["event"] == "SourceDropped"],
        "fetched_x": fetched / done["total_bytes"],
        "corrupt": done["corrupt_bytes"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GiB", help="size of the model file (default 1GiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each (default 3), interleaved")
    ap.add_argument("--piece-size", default="8MiB", help="the box's piece size (default 8MiB)")
    args = ap.parse_args()
    size, piece = parse_size(args.size), parse_size(args.piece_size)
    with tempfile.TemporaryDirectory(prefix="bench-proof-") as tmp:
        base = Path(tmp)
        model = base / "model"
        model.mkdir()
        want = _write(model / "model.safetensors", size)
        (model / "config.json").write_text("{}\n")
        repo = HfRepo.from_folder(REPO_ID, model)
        print(f"{size} bytes, pieces of {piece}; load {os.getloadavg()}")
        results: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for run in range(args.runs):
            for proof in (True, False):
                book = ProofBook(piece_size=piece) if proof else None
                shutil.rmtree(base / "liar", ignore_errors=True)
                with (
                    ServerThread(make_app(ModelIndex([repo]), proofs=book)) as box,
                    hf_liar(
                        base / "liar", REPO_ID, repo.commit, "model.safetensors", model / "model.safetensors"
                    ) as liar,
                ):
                    if book is not None:
                        t0 = time.perf_counter()
                        assert book.wait_idle(3600)
                        print(f"  the box proved the file in {time.perf_counter() - t0:.1f} s")
                    r = _pull(base, box.url, liar.url, want)
                    r["liar_sent"] = liar.bytes_served
                results[proof].append(r)
                label = "with proof   " if proof else "without proof"
                print(
                    f"run {run + 1} {label}: {r['seconds']:6.1f} s, fetched {r['fetched_x']:.3f}x, "
                    f"liar sent {r['liar_sent'] / size:.3f}x, "
                    f"rejected {r['rejected']}, dropped {r['dropped']}"
                )
        print(f"\nmedians over {args.runs} runs (load {os.getloadavg()}):")
        for proof in (True, False):
            rs = results[proof]
            label = "with the box's proof   " if proof else "registry digests only  "
            print(
                f"  {label} {statistics.median(r['seconds'] for r in rs):6.1f} s, "
                f"fetched {statistics.median(r['fetched_x'] for r in rs):.3f}x the file, "
                f"liar sent {statistics.median(r['liar_sent'] for r in rs) / size:.3f}x"
            )


if __name__ == "__main__":
    main()
