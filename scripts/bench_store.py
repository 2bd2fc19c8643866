#!/usr/bin/env python3
"""The store's costs at the shape of a 700 GB model: hashing CPU per GiB, and a real pull's peak RSS.

One command::

    python scripts/bench_store.py                       # both parts, 700k pieces for the pull
    python scripts/bench_store.py --pieces 100000 --runs 3 --skip-pull

**Hashing** (issue 14, "every byte is hashed twice"): a real ``Store`` takes 1 GiB of 8 MiB pieces
as the engine hands them over (each piece hashed once as it streams in, written, marked verified),
then waits for its whole-file checks. Two manifests of the same bytes, interleaved run by run: one
whose pieces bind the file (no whole-file pass: each byte hashed once) and the same manifest marked
as assembled from a registry listing (``meta.source`` hf: the pass runs, reading every piece back
and hashing it again, which is what every file got before). CPU is user+sys of this process,
median of ``--runs``; the difference is the cost of the second pass.

**Peak RSS of a pull** (issue 14, "memory flat in model size"): a real ``dsmirror pull`` subprocess
of ``--pieces`` pieces of 16 KiB (the smallest piece size a manifest allows) over 163 files, the
shape of DeepSeek-V3/R1's 700k pieces of 1 MiB, from a loopback ``dsmirror.testing`` mirror
serving sparse files, with piece hashes (a 45 MB manifest at 700k pieces) and without (whole-file
digests only). Its peak RSS is its own VmHWM (``/proc/self/status`` at exit), not ``ru_maxrss``.
Every piece is verified by the pull against the manifest; the bench also checks each file's size
and that every byte is what the source holds (zeros), reading the files back once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dsmirror import Manifest, Store
from dsmirror._formats.manifest import FileEntry, NoPieceHashes
from dsmirror.testing import MirrorServer

MIB, GIB = 1 << 20, 1 << 30
FILES = 163
OPTIONS = ("--no-default-catalog", "--no-reuse", "--dest")
_REPORT_PEAK = (
    "import atexit, os\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as s:\n"
    "        kb = next(int(line.split()[1]) for line in s if line.startswith('VmHWM:'))\n"
    "    with open(os.environ['DSMIRROR_BENCH_PEAK'], 'w') as out:\n"
    "        out.write(str(kb * 1024))\n"
    "atexit.register(_peak)\n"
    "from dsmirror.cli import main\n"
    "main()\n"
)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count() or 0} cores"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- hashing: one pass against two ---------------------------------------------------------------
def hashing_run(root: Path, block: bytes, n: int, *, second_pass: bool) -> float:
    """CPU seconds per GiB for a store to take ``n`` pieces of ``block`` and check the file."""
    ps = len(block)
    piece = hashlib.sha256(block).hexdigest()
    whole = hashlib.sha256()
    for _ in range(n):
        whole.update(block)
    meta = {"source": "hf"} if second_pass else {}
    m = Manifest("bench-hash", ps, (FileEntry("w.bin", n * ps, whole.hexdigest(), (piece,) * n),), None, meta)
    dest = root / ("two" if second_pass else "one")
    shutil.rmtree(dest, ignore_errors=True)
    with Store.open(dest, m) as store:
        c0 = cpu()
        for p in m.pieces:
            digest = hashlib.sha256(block).hexdigest()  # what the engine does as the piece streams in
            assert digest == p.sha256
            store.write(p, 0, block)
            store.mark_verified(p)
        assert store.wait_checked(600) and store.file_verified(0)
        spent = cpu() - c0
    shutil.rmtree(dest)
    return spent / (n * ps / GIB)


def bench_hashing(root: Path, runs: int) -> None:
    block = os.urandom(8 * MIB)
    n = GIB // len(block)
    one: list[float] = []
    two: list[float] = []
    print(f"hashing: 1 GiB of 8 MiB pieces into a real store, {runs} interleaved runs; {load()}")
    hashing_run(root, block, n, second_pass=True)  # warm-up (imports, the page cache's first fill)
    for k in range(runs):
        for second, out in ((False, one), (True, two)) if k % 2 == 0 else ((True, two), (False, one)):
            out.append(hashing_run(root, block, n, second_pass=second))
            print(
                f"  run {k + 1}: {'two passes' if second else 'one pass  '} {out[-1]:.2f} CPU-s/GiB; {load()}"
            )
    a, b = statistics.median(one), statistics.median(two)
    print(f"  median: one pass {a:.2f}, two passes {b:.2f} CPU-s per GiB (user+sys, incl. pwrite)")
    print(f"  the second pass costs {b - a:.2f} CPU-s per GiB; one pass takes {a / b:.2f}x the CPU of two")


# -- a real pull's peak RSS --------------------------------------------------------------------
def pull_model(root: Path, pieces: int, *, hashed: bool) -> tuple[Manifest, int]:
    """Sparse files of zeros: ``pieces`` pieces of 16 KiB over at most FILES files."""
    ps = 16 << 10
    files = min(FILES, pieces)
    per = pieces // files
    size = per * ps
    src = root / "src"
    if not src.exists():
        src.mkdir(parents=True)
        for i in range(files):
            with open(src / f"model-{i + 1:05d}-of-{files:05d}.safetensors", "wb") as fh:
                fh.truncate(size)
    zero_piece = hashlib.sha256(bytes(ps)).hexdigest()
    whole = hashlib.sha256()
    chunk = bytes(MIB)
    for _ in range(size // MIB):
        whole.update(chunk)
    whole.update(bytes(size % MIB))
    entries = []
    for i in range(files):
        path = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        # A tuple of separate strings, as parsing the JSON manifest makes them.
        hashes = tuple(bytes.fromhex(zero_piece).hex() for _ in range(per)) if hashed else None
        entries.append(FileEntry(path, size, whole.hexdigest(), hashes or NoPieceHashes(per)))
    return Manifest(f"bench-rss-{pieces}", ps, tuple(entries)), files * size


def bench_pull(root: Path, pieces: int) -> None:
    print(f"peak RSS of a real `dsmirror pull` of {pieces} pieces of 16 KiB over {FILES} files; {load()}")
    for hashed in (True, False):
        m, total = pull_model(root, pieces, hashed=hashed)
        mpath = root / f"m-{hashed}.json"
        m.write(mpath)
        mirror = MirrorServer(root / "src", host="127.0.0.1")
        mirror.start()
        catalog = root / "mirrors.yaml"
        catalog.write_text(
            f"version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: {json.dumps(mirror.url)}\n"
        )
        dest = root / "dest"
        peak_file = root / "peak"
        env = {**os.environ, "DSMIRROR_BENCH_PEAK": str(peak_file), "HOME": str(root / "home")}
        t0 = time.monotonic()
        c0 = os.times()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _REPORT_PEAK,
                "pull",
                str(mpath),
                "--mirrors",
                str(catalog),
                *OPTIONS,
                str(dest),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        c1 = os.times()
        seconds = time.monotonic() - t0
        mirror.stop()
        assert proc.returncode == 0, proc.stderr[-2000:]
        ok = True
        for f in m.files:
            got = dest / f.path
            ok &= got.stat().st_size == f.size
            with open(got, "rb") as fh:
                while chunk := fh.read(8 * MIB):
                    ok &= chunk.count(0) == len(chunk)
        peak = int(peak_file.read_text())
        kind = "with piece hashes   " if hashed else "whole-file digests only"
        child_cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        print(
            f"  {kind}: peak RSS {peak / MIB:.1f} MiB (floor: < 200 MiB), {total / GIB:.1f} GiB in "
            f"{seconds:.0f} s, {child_cpu:.0f} CPU-s, manifest {mpath.stat().st_size / MIB:.1f} MB, "
            f"bytes {'identical' if ok else 'DIFFERENT'}; {load()}"
        )
        shutil.rmtree(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=700_000, help="pieces of the pull (default 700k)")
    ap.add_argument("--runs", type=int, default=5, help="hashing runs of each kind (default 5)")
    ap.add_argument("--skip-pull", action="store_true")
    ap.add_argument("--skip-hashing", action="store_true")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="dsmirror-bench-store-"))
    try:
        if not args.skip_hashing:
            bench_hashing(root, args.runs)
        if not args.skip_pull:
            bench_pull(root, args.pieces)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
