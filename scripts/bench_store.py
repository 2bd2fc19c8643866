#!/usr/bin/env python3
r"""The store's costs at the shape of a 700 GB model: hashing CPU per GiB, a real pull's peak RSS, resume.

One command::

    python scripts/bench_store.py                       # all three parts, 700k pieces for the pulls
    python scripts/bench_store.py --pieces 100000 --runs 3 --skip-pull --skip-resume
    python scripts/bench_store.py --skip-hashing --skip-pull --resume-pieces 11000 --resume-piece-kib 1024
    python scripts/bench_store.py --skip-hashing --skip-pull --resume-pieces 4000 --resume-piece-kib 1024 \
        --resume-files 1

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

**Resume after kill -9 at 99%** (issue 14, "a crash at 99% must not cost" a read of the model): the
same pull (``--resume-pieces`` pieces of ``--resume-piece-kib``) is killed with SIGKILL once 99% is
received, then resumed to the end. What the resume reads back from the stored files is counted in
the resumed process itself (its ``os.pread``/``os.preadv`` calls, the store's only reads of data
files; ``rchar`` over an idle run as a cross-check), with piece hashes and without (then each
file's whole-file hasher resumes from the state the journal saved, so what it had not hashed at
the kill is read back too). Also printed: what the resume fetched, and that every byte is right.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
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

_REPORT_READS = (
    "import atexit, os\n"
    "_read = [0]\n"
    "_pread, _preadv = os.pread, os.preadv\n"
    "def pread(fd, n, offset):\n"
    "    data = _pread(fd, n, offset)\n"
    "    _read[0] += len(data)\n"
    "    return data\n"
    "def preadv(fd, buffers, offset, *flags):\n"
    "    got = _preadv(fd, buffers, offset, *flags)\n"
    "    _read[0] += got\n"
    "    return got\n"
    "os.pread, os.preadv = pread, preadv\n"
    "def _report():\n"
    "    with open('/proc/self/io') as io, open(os.environ['DSMIRROR_BENCH_READS'], 'w') as out:\n"
    "        out.write(f'pread: {_read[0]}\\n' + io.read())\n"
    "atexit.register(_report)\n"
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
def serve(root: Path) -> tuple[MirrorServer, Path]:
    """A started loopback mirror of ``root/src`` and a catalog naming it."""
    mirror = MirrorServer(root / "src", host="127.0.0.1")
    mirror.start()
    catalog = root / "mirrors.yaml"
    catalog.write_text(
        f"version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: {json.dumps(mirror.url)}\n"
    )
    return mirror, catalog


def pull_command(script: str, mpath: Path, catalog: Path, dest: Path, *more: str) -> list[str]:
    """``dsmirror pull`` of ``mpath`` into ``dest``, started through ``script`` (which reports)."""
    return [
        sys.executable,
        "-c",
        script,
        "pull",
        str(mpath),
        "--mirrors",
        str(catalog),
        *OPTIONS,
        str(dest),
        *more,
    ]


def all_zeros(dest: Path, m: Manifest) -> bool:
    """Every file of ``m`` is in ``dest``, of its size, all zeros (what the sparse source holds)."""
    ok = True
    for f in m.files:
        got = dest / f.path
        ok &= got.stat().st_size == f.size
        with open(got, "rb") as fh:
            while chunk := fh.read(8 * MIB):
                ok &= chunk.count(0) == len(chunk)
    return ok


def pull_model(
    root: Path, pieces: int, *, hashed: bool, ps: int = 16 << 10, files: int = FILES
) -> tuple[Manifest, int]:
    """Sparse files of zeros: ``pieces`` pieces of ``ps`` bytes over at most ``files`` files."""
    files = min(files, pieces)
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


def prepared(
    root: Path, pieces: int, *, hashed: bool, ps: int = 16 << 10, files: int = FILES
) -> tuple[Manifest, int, Path, MirrorServer, Path]:
    """The model of ``pull_model``, its manifest written, a mirror serving it: ``(manifest, its
    size, the manifest's path, the started mirror, a catalog naming it)``."""
    m, total = pull_model(root, pieces, hashed=hashed, ps=ps, files=files)
    mpath = root / f"m-{hashed}.json"
    m.write(mpath)
    mirror, catalog = serve(root)
    return m, total, mpath, mirror, catalog


def bench_pull(root: Path, pieces: int) -> None:
    print(f"peak RSS of a real `dsmirror pull` of {pieces} pieces of 16 KiB over {FILES} files; {load()}")
    for hashed in (True, False):
        m, total, mpath, mirror, catalog = prepared(root, pieces, hashed=hashed)
        dest = root / "dest"
        peak_file = root / "peak"
        env = {**os.environ, "DSMIRROR_BENCH_PEAK": str(peak_file), "HOME": str(root / "home")}
        t0 = time.monotonic()
        c0 = os.times()
        proc = subprocess.run(
            pull_command(_REPORT_PEAK, mpath, catalog, dest), env=env, capture_output=True, text=True
        )
        c1 = os.times()
        seconds = time.monotonic() - t0
        mirror.stop()
        assert proc.returncode == 0, proc.stderr[-2000:]
        ok = all_zeros(dest, m)
        peak = int(peak_file.read_text())
        kind = "with piece hashes   " if hashed else "whole-file digests only"
        child_cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
        print(
            f"  {kind}: peak RSS {peak / MIB:.1f} MiB (floor: < 200 MiB), {total / GIB:.1f} GiB in "
            f"{seconds:.0f} s, {child_cpu:.0f} CPU-s, manifest {mpath.stat().st_size / MIB:.1f} MB, "
            f"bytes {'identical' if ok else 'DIFFERENT'}; {load()}"
        )
        shutil.rmtree(dest)


# -- resume after kill -9 at 99% ---------------------------------------------------------------
def killed_at(proc: subprocess.Popen[str], mirror: MirrorServer, total: int, at: float) -> float:
    """Follow the pull's --json events; SIGKILL it once ``at`` of ``total`` is received (the last
    4% slowed down so that the kill lands there). Returns the fraction verified at the last event."""
    verified = 0.0
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        ev = json.loads(line)
        if ev.get("event") != "Progress":
            continue
        got = ev["received_bytes"] / total
        verified = ev["verified_bytes"] / total
        if got >= at - 0.04:
            mirror.set_rate(20e6)
        if got >= at:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(30)
    return verified


def bench_resume(root: Path, pieces: int, ps: int, files: int = FILES) -> None:
    """kill -9 at 99% of a pull of ``pieces`` of ``ps`` bytes over ``files`` files, then resume:
    what the resume reads back from disk."""
    print(
        f"resume after kill -9 at 99% of a `dsmirror pull` of {pieces} pieces of {ps >> 10} KiB"
        f" over {min(files, pieces)} files; {load()}"
    )
    root = root / f"ps{ps}-{files}"  # its own sparse source: the other parts' pieces are 16 KiB
    for hashed in (True, False):
        m, total, mpath, mirror, catalog = prepared(root, pieces, hashed=hashed, ps=ps, files=files)
        dest = root / "dest"
        reads = root / "reads"
        env = {**os.environ, "DSMIRROR_BENCH_READS": str(reads), "HOME": str(root / "home")}
        cmd = pull_command(_REPORT_READS, mpath, catalog, dest)
        proc = subprocess.Popen(
            [*cmd, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        verified = killed_at(proc, mirror, total, 0.99)
        installed = sum((dest / f.path).exists() for f in m.files)
        mirror.set_rate(None)
        served = mirror.bytes_served
        t0 = time.monotonic()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - t0
        assert done.returncode == 0, done.stderr[-2000:]
        fetched = mirror.bytes_served - served
        io = dict(line.split(": ") for line in reads.read_text().splitlines())
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)  # nothing left to do
        idle = dict(line.split(": ") for line in reads.read_text().splitlines())
        mirror.stop()
        read_back = int(io["pread"])
        kind = "with piece hashes   " if hashed else "whole-file digests only"
        print(
            f"  {kind}: killed at {verified:.1%} verified ({installed} of {len(m.files)} files installed); "
            f"the resume read back {read_back / MIB:.1f} MiB of the {total / GIB:.1f} GiB stored "
            f"(pread/preadv; rchar {(int(io['rchar']) - int(idle['rchar'])) / MIB:.1f} MiB over an idle "
            f"run, journal and manifest included), fetched {fetched / MIB:.1f} MiB again or anew, "
            f"{seconds:.1f} s; bytes {'identical' if all_zeros(dest, m) else 'DIFFERENT'}; {load()}"
        )
        shutil.rmtree(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", type=int, default=700_000, help="pieces of the pull (default 700k)")
    ap.add_argument("--runs", type=int, default=5, help="hashing runs of each kind (default 5)")
    ap.add_argument("--skip-pull", action="store_true")
    ap.add_argument("--skip-hashing", action="store_true")
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument(
        "--resume-pieces", type=int, default=0, help="pieces of the killed pull (default: --pieces)"
    )
    ap.add_argument("--resume-piece-kib", type=int, default=16, help="its piece size in KiB (default 16)")
    ap.add_argument(
        "--resume-files",
        type=int,
        default=FILES,
        help=f"its files (default {FILES}; 1: one blob)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="dsmirror-bench-store-"))
    try:
        if not args.skip_hashing:
            bench_hashing(root, args.runs)
        if not args.skip_pull:
            bench_pull(root, args.pieces)
        if not args.skip_resume:
            bench_resume(
                root, args.resume_pieces or args.pieces, args.resume_piece_kib << 10, args.resume_files
            )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
