"""Kill ``dsmirror pull`` (SIGKILL, SIGINT) at random moments, several times in a row, and resume.

The pull runs as a real subprocess (``dsmirror pull ... --json``) against throttled loopback
mirrors, so the kills land in the middle of real downloads: between pwrite and the journal record,
during a commit, in a tail race. Every run must make verified progress that the next run sees at
once, the final files must be byte-identical, and what the mirrors served in total (their
``bytes_served`` counters) may exceed the model only by what can be in flight when a kill hits.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from dsmirror import Manifest
from dsmirror._formats.manifest import FileEntry, NoPieceHashes
from dsmirror.testing import MirrorServer

KiB = 1 << 10
MiB = 1 << 20

#: Two mirrors, each with a 1.5 MB/s uplink: an 8 MB model takes ~2.7 s of transfer in total,
#: long enough for several kills to land mid-transfer, short enough for the suite.
RATE = 1_500_000
MIRRORS = 2
CONNECTIONS = 2  # per mirror (``--connections``), unless a test says otherwise; see the bound below
#: The MirrorServer sends throttled bodies in slices of at most 64 KiB (one token-bucket grant).
SERVER_SLICE = 64 * KiB
SIZES = {
    "model-00001.safetensors": 5 * MiB + 12_345,
    "model-00002.safetensors": 2 * MiB,
    "tokenizer.json": 700_001,
    "config.json": 1_234,
    "empty.txt": 0,
}


def in_flight_bound(piece_size: int, connections: int) -> int:
    """Bytes one SIGKILL can make the mirrors serve twice.

    What the scheduler hands a connection is a *span* (consecutive pieces, one Range request), up
    to ``connections x max span`` bytes in all, and a naive client that verified spans would lose
    all of it. dsmirror verifies and journals every piece the moment its last byte arrives (the
    journal record needs no fsync to survive SIGKILL: the page cache does), so at the moment of a
    kill a connection can only lose

    * the part of its current piece received so far (less than one piece), and
    * what the mirror already pushed into the socket buffers and the client never read: the
      throttled server hands out at most one 64 KiB slice at a time per connection; allow two.

    Racers are connections too, so a tail race adds nothing beyond this per-connection bound.
    """
    return MIRRORS * connections * (piece_size + 2 * SERVER_SLICE)


def start_pull(
    spawn_cli: Callable[..., Any], model: Any, catalog: Path, dest: Path, connections: int = CONNECTIONS
) -> Any:
    return spawn_cli(
        "pull", model.manifest_path, "--mirrors", catalog, "--no-default-catalog", "--dest", dest,
        "--json", "--connections", str(connections),
    )  # fmt: skip


def run_until(proc: Any, seconds: float) -> tuple[int, bool]:
    """Read events for ``seconds``; returns (highest verified_bytes seen, whether it finished)."""
    seen = 0
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            ev = proc.next_event(left)
        except TimeoutError:
            break
        if ev is None:
            return seen, True
        if ev["event"] in ("Progress", "PullStarted"):
            seen = max(seen, ev["verified_bytes"])
        if ev["event"] == "PullFinished":
            return seen, True
    return seen, False


@pytest.mark.slow
@pytest.mark.timeout(240)
# With 256 KiB pieces one connection per mirror keeps the bound well below the model's size, so
# that it still tells a per-piece journal from a client that restarts whole spans.
@pytest.mark.parametrize(
    ("piece_size", "connections", "seed"), [(64 * KiB, 2, 1), (256 * KiB, 1, 2)], ids=["64KiB", "256KiB"]
)
def test_sigkill_repeatedly_then_resume(
    piece_size: int,
    connections: int,
    seed: int,
    tmp_path: Path,
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    spawn_cli: Callable[..., Any],
) -> None:
    rng = random.Random(seed)
    model = make_model(SIZES, piece_size=piece_size, seed=seed)
    mirrors = start_mirrors(model.root, MIRRORS, rate=RATE)
    catalog = catalog_file(mirrors)
    dest = tmp_path / "dest"

    kills = 0
    last_seen = 0  # highest verified_bytes reported by a run that was then killed
    resumed_at: list[int] = []
    for _ in range(5):
        proc = start_pull(spawn_cli, model, catalog, dest, connections)
        started = proc.wait_event("PullStarted", timeout=60)
        resumed_at.append(started["verified_bytes"])
        assert started["verified_bytes"] >= last_seen, "verified progress went backwards across a kill"
        seen, done = run_until(proc, rng.uniform(0.15, 0.6))
        if done:
            break
        proc.proc.send_signal(signal.SIGKILL)
        proc.proc.wait(10)
        kills += 1
        last_seen = max(last_seen, seen)

    proc = start_pull(spawn_cli, model, catalog, dest, connections)
    started = proc.wait_event("PullStarted", timeout=60)
    assert started["verified_bytes"] >= last_seen
    rc = proc.finish(timeout=120)
    assert rc == 0, proc.stderr
    assert proc.events[-1]["event"] == "PullFinished"
    model.assert_identical(dest)

    assert kills >= 3, f"only {kills} kills landed mid-pull; the test proves too little"
    # Each run started from at least what the previous ones had verified.
    assert resumed_at == sorted(resumed_at)
    served = sum(m.bytes_served for m in mirrors)
    waste = served - model.total_size
    # (kills + 1): the uninterrupted last run may also throw bytes away (a span cut short by a
    # steal, a lost tail race), within the same per-connection bound.
    bound = (kills + 1) * in_flight_bound(piece_size, connections)
    assert bound < model.total_size, "a bound this loose would not tell resuming from restarting"
    assert 0 <= waste <= bound, f"re-downloaded {waste} bytes after {kills} kills; bound {bound}"


@pytest.mark.timeout(120)
def test_ctrl_c_exits_130_and_resumes(
    tmp_path: Path,
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    spawn_cli: Callable[..., Any],
) -> None:
    model = make_model(SIZES, piece_size=128 * KiB, seed=5)
    mirrors = start_mirrors(model.root, MIRRORS, rate=RATE)
    catalog = catalog_file(mirrors)
    dest = tmp_path / "dest"

    proc = start_pull(spawn_cli, model, catalog, dest)
    proc.wait_event("PullStarted", timeout=60)
    seen = proc.wait_event("Progress", timeout=30, where=lambda e: e["verified_bytes"] > 0)["verified_bytes"]
    proc.proc.send_signal(signal.SIGINT)
    rc = proc.finish(timeout=30)
    assert rc == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "interrupted" in proc.stderr
    assert not (dest / "model-00001.safetensors").exists()
    for ev in proc.events:
        if ev["event"] == "Progress":
            seen = max(seen, ev["verified_bytes"])

    again = start_pull(spawn_cli, model, catalog, dest)
    started = again.wait_event("PullStarted", timeout=60)
    assert started["verified_bytes"] >= seen
    assert again.finish(timeout=90) == 0, again.stderr
    model.assert_identical(dest)


@pytest.mark.timeout(120)
def test_sigterm_is_an_interruption_too(
    tmp_path: Path,
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    spawn_cli: Callable[..., Any],
) -> None:
    model = make_model(SIZES, piece_size=128 * KiB, seed=6)
    mirrors = start_mirrors(model.root, MIRRORS, rate=RATE)
    dest = tmp_path / "dest"
    proc = start_pull(spawn_cli, model, catalog_file(mirrors), dest)
    proc.wait_event("Progress", timeout=60, where=lambda e: e["verified_bytes"] > 0)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.finish(timeout=30) == 130, proc.stderr
    assert "Traceback" not in proc.stderr


# -- a kill -9 at 99%: what the resume reads back -------------------------------------------------
#: The CLI, writing its own /proc/self/io at exit (rchar: bytes it read from files and pipes; a
#: socket's recv does not count, so the download itself is not in it).
_REPORT_IO = (
    "import atexit, os\n"
    "def _io():\n"
    "    with open('/proc/self/io') as f, open(os.environ['DSMIRROR_TEST_IO'], 'w') as out:\n"
    "        out.write(f.read())\n"
    "atexit.register(_io)\n"
    "from dsmirror.cli import main\n"
    "main()\n"
)
BIG = {
    "model-00001.safetensors": 40 * MiB + 12_345,
    "model-00002.safetensors": 32 * MiB,
    "config.json": 1_234,
}
BIG_PIECE = MiB


def pull_reading(
    args: list[str | Path], env: Mapping[str, str], cwd: Path, io_file: Path
) -> tuple[int, int, str, dict[str, Any]]:
    """Run ``dsmirror pull ARGS --json`` to its end: exit code, bytes it read (rchar), stderr, and
    its PullStarted event."""
    proc = subprocess.run(
        [sys.executable, "-c", _REPORT_IO, "pull", *map(str, args), "--json"],
        env={**env, "DSMIRROR_TEST_IO": str(io_file)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    io = dict(line.split(": ") for line in io_file.read_text().splitlines())
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = next((e for e in events if e.get("event") == "PullStarted"), {})
    return proc.returncode, int(io["rchar"]), proc.stderr, started


def committed_pieces(journal: bytes) -> tuple[set[int], set[int]]:
    """Pieces whose W record a later C covers, and those whose W no C covers (re-verified by the
    next run), from the journal's format in docs/formats.md, read by hand."""
    pending: dict[int, int] = {}
    done: set[int] = set()
    off = 44
    while off + 12 <= len(journal):
        kind = chr(journal[off])
        if kind == "H":
            off += 48
            continue
        index = int.from_bytes(journal[off + 4 : off + 8], "little")
        if kind == "W":
            pending[index] = off
        elif kind == "C":
            done |= {i for i, at in pending.items() if at < index}
            pending = {i: at for i, at in pending.items() if at >= index}
        off += 12
    return done, set(pending) - done


def bytes_after_first_gap(m: Manifest, done: set[int]) -> int:
    """Bytes of the pieces of each file from its first piece not in ``done`` to its end."""
    out = 0
    for r in m.file_piece_ranges:
        gap = next((i for i in r if i not in done), None)
        if gap is not None:
            out += sum(m.pieces[i].length for i in range(gap, r.stop))
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("hashes", ["piece-hashes", "whole-file-only"])
def test_sigkill_at_99_percent_reads_back_only_the_pieces_in_flight(
    hashes: str,
    tmp_path: Path,
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    spawn_cli: Callable[..., Any],
    cli_env: dict[str, str],
) -> None:
    """Issue 14: after kill -9 at 99% the resume must not read the model back to hash it again.

    With piece hashes the pieces bind the files (no whole-file pass); without them the whole-file
    hashers continue from the state the journal committed. Either way the resumed process reads
    (rchar, minus what the same command reads when there is nothing to do) at most the pieces in
    flight and those since the last commit; the whole-file digests are still checked (the files
    are identical, and for whole-file-only files nothing else checks them).
    """
    model = make_model(BIG, piece_size=BIG_PIECE, seed=14)
    manifest_path, pulled = model.manifest_path, model.manifest
    if hashes == "whole-file-only":
        m = model.manifest
        files = tuple(FileEntry(f.path, f.size, f.sha256, NoPieceHashes(len(f.pieces))) for f in m.files)
        manifest_path = tmp_path / "whole-only.manifest.json"
        pulled = Manifest(m.name, m.piece_size, files)
        pulled.write(manifest_path)
    (mirror,) = start_mirrors(model.root, 1, rate=30_000_000)
    catalog = catalog_file([mirror])
    dest = tmp_path / "dest"
    args: list[str | Path] = [manifest_path, "--mirrors", catalog, "--no-default-catalog", "--dest", dest]
    args += ["--no-reuse", "--connections", "2"]

    proc = spawn_cli("pull", *args, "--json")
    total = model.total_size
    slowed = False
    while True:
        ev = proc.wait_event("Progress", timeout=60)
        if not slowed and ev["received_bytes"] >= 0.8 * total:
            mirror.set_rate(1_000_000)  # the last 20% slowly, so the kill lands at 97-99%, not after
            slowed = True
        if ev["received_bytes"] >= total - 2 * BIG_PIECE:  # 97-99%: the last pieces are in flight
            break
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
    assert not (dest / "model-00001.safetensors").exists(), "killed too late: already installed"
    mirror.set_rate(None)
    journal = (dest / ".dsmirror" / "partial" / pulled.sha256 / "journal").read_bytes()
    committed, uncovered = committed_pieces(journal)
    ahead = bytes_after_first_gap(pulled, committed)
    uncovered_bytes = sum(pulled.pieces[i].length for i in uncovered)

    rc, resumed, err, started = pull_reading(args, cli_env, tmp_path, tmp_path / "io.resume")
    assert rc == 0, err
    model.assert_identical(dest)
    rc, idle, err, _ = pull_reading(args, cli_env, tmp_path, tmp_path / "io.again")  # nothing to do
    assert rc == 0, err
    read_back = resumed - idle
    # A file is hashed whole in order, so what lies after its first piece missing at the kill
    # (the rest of the spans in flight, the pieces the resume fetches) is hashed by the resume;
    # the state the last commit saved may be a piece behind (0.5 s at 1 MB/s); a piece whose W
    # no commit covered is re-verified from disk (then hashed whole too). What comes before (97%
    # of the model here) must not be read again. rchar also counts whatever else the resume reads
    # and the idle run does not (53 KB more in 2 of 9 runs, over a bound with no slack; most
    # likely code imported on first use, such as the HTTP client since b663419, not checked): half
    # a piece of room, so one piece read back beyond the bound still fails.
    bound = ahead + uncovered_bytes + 2 * BIG_PIECE + BIG_PIECE // 2
    assert bound < total // 4, "a bound this loose would not tell resuming from re-hashing"
    print(
        f"{hashes}: the resume read {resumed} bytes, an idle run {idle}: {read_back} read back of "
        f"{total}; bound {bound}; re-verified pieces {started.get('reverified_pieces')}"
    )
    assert read_back <= bound, f"the resume read back {read_back} bytes of a {total}-byte model"
