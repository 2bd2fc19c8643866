"""Shared fixtures: generated models, loopback mirrors, catalogs, library pulls and a CLI runner.

Everything network-facing runs on loopback only: mirrors bind 127.0.0.1, 127.0.0.2, ... (the
whole 127/8 block is the loopback interface on Linux), catalogs list only those mirrors, and
library pulls read no catalog but the one a test writes (``replace=True``). BitTorrent sessions
(``swarmed``, ``seeder``) listen on 127.0.0.1 with LSD and DHT off and are told their peers. The CLI runs in a
subprocess whose HOME and XDG folders point into the test's tmp_path, so no test reads or writes
the real user's config, state or caches.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import Event, Manifest, PullOptions
from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes
from dsmirror.testing import MirrorServer, write_random_tree

KiB = 1 << 10
MiB = 1 << 20
PIECE = 64 * KiB

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def boundary_sizes(piece_size: int, *, big_pieces: int = 3) -> dict[str, int]:
    """File sizes on, one below and one above a piece boundary, empty, one byte, and a larger file.

    The names sort differently from their sizes and one sits in a sub-folder, so nothing works
    by accident of ordering.
    """
    return {
        "exact.bin": piece_size,
        "over.bin": piece_size + 1,
        "under.bin": piece_size - 1,
        "empty.bin": 0,
        "one.bin": 1,
        "sub/two-exact.bin": 2 * piece_size,
        "sub/deeper/big.bin": big_pieces * piece_size + piece_size // 3,
    }


@dataclass
class Model:
    """A generated model folder, its manifest on disk, and the SHA-256 of every file."""

    root: Path
    manifest_path: Path
    manifest: Manifest
    digests: dict[str, str]
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(self.sizes.values())

    def assert_identical(self, dest: Path) -> None:
        """``dest`` holds exactly the model's bytes, and verify_tree agrees."""
        for rel in self.sizes:
            got = dest / rel
            assert got.is_file(), f"{rel} is missing at {dest}"
            assert got.read_bytes() == (self.root / rel).read_bytes(), f"{rel} differs"
        report = dsmirror.verify_tree(self.manifest, dest)
        assert report.ok, report


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # HttpSource honours proxy variables; a proxy must never see (or swallow) loopback traffic.
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _no_session_left_open() -> Iterator[None]:
    """A test must not leave a libtorrent session open (a seeding or pulling thread still running).

    Such a thread would be inside libtorrent when pytest exits; dsmirror's atexit hook stops it,
    but a leak is a bug of the test or of the code under test: it fails the test that caused it.
    """
    yield
    swarm = sys.modules.get("dsmirror._fetch.swarm.session")
    if swarm is None:
        return
    deadline = time.monotonic() + 10
    while (left := swarm.open_sessions()) and time.monotonic() < deadline:
        time.sleep(0.05)  # a thread the test stopped may still be closing its session
    for session in left:
        session.close(timeout=10)
    assert not left, f"{len(left)} libtorrent session(s) left open by this test"


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., Model]:
    """``make_model(sizes, piece_size=..., name=..., seed=...)``: write files, hash them, save a manifest."""
    counter = iter(range(1000))

    def make(
        sizes: Mapping[str, int],
        *,
        piece_size: int = PIECE,
        name: str = "test-model",
        seed: int = 0,
    ) -> Model:
        n = next(counter)
        root = tmp_path / f"model{n}"
        root.mkdir()
        digests = write_random_tree(root, dict(sizes), seed=seed)
        manifest = dsmirror.create_manifest(root, name=name, piece_size=piece_size)
        manifest_path = tmp_path / f"model{n}.manifest.json"
        manifest.write(manifest_path)
        return Model(root, manifest_path, manifest, digests, dict(sizes))

    return make


@pytest.fixture
def start_mirrors() -> Iterator[Callable[..., list[MirrorServer]]]:
    """``start_mirrors(root, n, **kw)`` or ``start_mirrors(root, [kw1, kw2, ...])``.

    Mirror *i* listens on 127.0.0.<i+1> (a fresh port); all are stopped after the test.
    """
    started: list[MirrorServer] = []

    def start(root: Path, spec: int | Sequence[Mapping[str, Any]] = 1, **common: Any) -> list[MirrorServer]:
        specs: list[Mapping[str, Any]] = [{}] * spec if isinstance(spec, int) else list(spec)
        out = []
        for kw in specs:
            host = f"127.0.0.{len(started) + 1}"
            server = MirrorServer(root, host=host, **{**common, **kw})
            server.start()
            started.append(server)
            out.append(server)
        return out

    yield start
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()


def write_catalog(path: Path, mirrors: Mapping[str, MirrorServer | str], **fields: Any) -> Path:
    """A catalog YAML of kind-http mirrors named by the keys (a server or a base URL each)."""
    lines = ["version: 1", "mirrors:"]
    for name, m in mirrors.items():
        url = m.url if isinstance(m, MirrorServer) else m
        lines += [f"  - name: {name}", "    kind: http", f"    url: {json.dumps(url)}"]
        lines += [f"    {k}: {v}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def catalog_file(tmp_path: Path) -> Callable[..., Path]:
    """``catalog_file(mirrors_or_mapping, **fields)``: write a loopback-only catalog; names m1, m2, ..."""
    counter = iter(range(1000))

    def make(mirrors: Sequence[MirrorServer] | Mapping[str, MirrorServer | str], **fields: Any) -> Path:
        named = mirrors if isinstance(mirrors, Mapping) else {f"m{i + 1}": m for i, m in enumerate(mirrors)}
        return write_catalog(tmp_path / f"mirrors{next(counter)}.yaml", named, **fields)

    return make


@pytest.fixture
def lib_pull(tmp_path: Path) -> Callable[..., list[Event]]:
    """``lib_pull(model_or_manifest_path, catalog_path, dest, deadline=60, **PullOptions)``.

    A pull through the library API, with its own HOME (state, experience) inside tmp_path. A pull
    still running after ``deadline`` seconds is closed (its generator, which stops the engine) and
    the test fails: a hang is reported as a failure instead of eating the suite's timeout.
    """
    home = tmp_path / "libhome"
    home.mkdir()

    def run(
        model: Model | Path, catalog_path: Path, dest: Path, *, deadline: float = 60, **options: Any
    ) -> list[Event]:
        ref = model.manifest_path if isinstance(model, Model) else model
        catalog = dsmirror.load_default_catalog({}, [catalog_path], replace=True)
        settings = dsmirror.Settings.from_env({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")})
        opts = PullOptions(dest=dest, **options)
        return collect(dsmirror.pull(str(ref), catalog=catalog, settings=settings, options=opts), deadline)

    return run


def collect(events: Iterator[Event], deadline: float) -> list[Event]:
    """All events of a pull; fails the test if the pull is still going after ``deadline`` seconds."""
    out: list[Event] = []
    end = time.monotonic() + deadline
    try:
        for ev in events:
            out.append(ev)
            if time.monotonic() > end:
                raise AssertionError(
                    f"the pull did not finish within {deadline:.0f} s; last events: {out[-3:]}"
                )
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    return out


# -- the command line in a subprocess ------------------------------------------------------------

CLI = [sys.executable, "-c", "from dsmirror.cli import main; main()"]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: HOME, XDG_* and caches inside tmp_path; no proxies."""
    home = tmp_path / "clihome"
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    for var in ("COLUMNS", "LINES", "FORCE_COLOR", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    # rich wraps output to a pipe at 80 columns, which splits long messages (paths under tmp_path)
    # over several lines; a wide COLUMNS keeps every test but the one about wrapping (in
    # test_cli_errors, which removes it again) independent of that bug.
    env["COLUMNS"] = "1000"
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        HF_HOME=str(home / ".cache" / "huggingface"),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
    )
    (home / ".config").mkdir(parents=True)
    return env


@pytest.fixture
def run_cli(cli_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, timeout=60, cwd=tmp_path)``: run ``dsmirror ARGS`` to completion."""

    def run(
        *args: str | Path, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *map(str, args)],
            env=cli_env,
            cwd=cwd or tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


class CliProcess:
    """A running ``dsmirror`` subprocess whose stdout is read line by line in a thread."""

    def __init__(self, args: Sequence[str | Path], env: Mapping[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*CLI, *map(str, args)],
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.stdout: list[str] = []
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON event, or None at end of output; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no event in time")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                raise TimeoutError("no event in time") from None
            if line is None:
                return None
            self.stdout.append(line)
            with contextlib.suppress(json.JSONDecodeError):
                ev = json.loads(line)
                if isinstance(ev, dict) and "event" in ev:
                    self.events.append(ev)
                    return ev

    def wait_event(
        self, kind: str, timeout: float, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(0.01, deadline - time.monotonic()))
            if ev is None:
                raise AssertionError(f"process ended before a {kind} event; stderr: {self.stderr}")
            if ev["event"] == kind and (where is None or where(ev)):
                return ev

    def finish(self, timeout: float = 60) -> int:
        """Wait for the exit, collecting the remaining events; returns the exit code."""
        rc = self.proc.wait(timeout)
        while self.next_event(timeout=10) is not None:
            pass
        self._reader.join(5)
        self._err_reader.join(5)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def spawn_cli(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., CliProcess]]:
    """``spawn_cli(*args)``: start ``dsmirror ARGS`` in the background; killed after the test."""
    procs: list[CliProcess] = []

    def spawn(*args: str | Path, cwd: Path | None = None) -> CliProcess:
        p = CliProcess(args, cli_env, cwd or tmp_path)
        procs.append(p)
        return p

    yield spawn
    for p in procs:
        if p.proc.poll() is None:
            p.kill()


@pytest.fixture
def one_line_error() -> Callable[..., str]:
    """The check below, as a fixture (test modules do not import conftest)."""
    return assert_one_line_error


def assert_one_line_error(result: subprocess.CompletedProcess[str] | str, *fragments: str) -> str:
    """stderr is one ``dsmirror: error: ...`` line (plus an optional ``hint:`` line), no traceback.

    Returns the error line. ``fragments`` must all appear in it.
    """
    stderr = result if isinstance(result, str) else result.stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.lstrip().startswith("hint:")]
    assert len(errors) == 1 and errors[0].startswith("dsmirror: error: "), f"not a one-line error:\n{stderr}"
    for frag in fragments:
        assert frag in errors[0], f"{frag!r} not in {errors[0]!r}"
    return errors[0]


# -- BitTorrent: a model with its torrents, and `dsmirror seed` processes ------------------------
SWARM_PIECE = 256 * KiB
SWARM_SIZES = {
    "model-1.safetensors": 9 * MiB + 12_345,
    "model-2.safetensors": 6 * MiB + 1,
    "config.json": 1_337,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


class Swarmed:
    """A model, its manifest recording the torrents' info-hashes, and the torrents on disk."""

    def __init__(self, model: Model, tmp: Path) -> None:
        self.model = model
        self.hybrid = create_torrent(model.manifest, model.root)
        self.v1 = create_torrent(model.manifest, model.root, format="v1")
        self.manifest = with_torrent_hashes(model.manifest, [self.hybrid, self.v1])
        self.manifest_path = tmp / "swarmed.manifest.json"
        self.manifest.write(self.manifest_path)
        self.torrent_path = tmp / "model.torrent"
        self.hybrid.write(self.torrent_path)
        self.v1_path = tmp / "model-v1.torrent"
        self.v1.write(self.v1_path)


@pytest.fixture
def swarmed(make_model: Callable[..., Model], tmp_path: Path) -> Swarmed:
    return Swarmed(make_model(SWARM_SIZES, piece_size=SWARM_PIECE), tmp_path)


@pytest.fixture
def seeder(spawn_cli: Callable[..., CliProcess]) -> Callable[..., CliProcess]:
    """``seeder(torrent, folder, port, *extra)``: a ``dsmirror seed`` process, ready to serve.

    ``folder`` None: ``torrent`` is what ``dsmirror seed`` takes alone (a pulled folder, a model
    of the Ollama store or the Hugging Face cache).
    """

    def start(torrent: Path | str, folder: Path | None, port: int, *extra: str) -> CliProcess:
        where = ["--from", folder] if folder is not None else []
        p = spawn_cli("seed", torrent, *where, "--listen", addr(port), "--no-lsd", "--json", *extra)
        p.wait_event("SeedingStarted", timeout=30)
        return p

    return start


# -- a small tmpfs, for disk-full and read-only cases ----------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``small_tmpfs(size="8m", ro=False)``: mount a tmpfs under tmp_path (root only), unmounted after.

    Skips the test where mounting is not allowed (not root, no CAP_SYS_ADMIN, no tmpfs).
    """
    mounted: list[Path] = []

    def mount(size: str = "8m", *, ro: bool = False) -> Path:
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True, text=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def remount_ro(point: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(point)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Bytes read back from files by pread/preadv while the test runs (the real calls, counted)."""
    got: list[int] = []
    pread, preadv = os.pread, os.preadv

    def counted_pread(fd: int, n: int, off: int) -> bytes:
        data = pread(fd, n, off)
        got.append(len(data))
        return data

    def counted_preadv(fd: int, bufs: list[memoryview], off: int) -> int:
        n = preadv(fd, bufs, off)
        got.append(n)
        return n

    monkeypatch.setattr(os, "pread", counted_pread)
    monkeypatch.setattr(os, "preadv", counted_preadv)
    yield got
