"""One hostile server must never crash, hang or exhaust a pull (issue 12).

Each case runs the real thing against ``dsmirror.testing.hostile`` servers on loopback: the CLI in
a subprocess whose peak RSS is measured (its VmHWM at exit) while the server would send gigabytes, or
the library with a good mirror beside the hostile one. Every metadata body is bounded in bytes
(endless bodies, gzip bombs) and every metadata exchange in time (answers dripped a byte at a time,
head or body); a mirror's unusable redirect or any exception a source raises ends that source, not
the pull; the pull ends within a second of its last verified byte however stuck the other mirrors
are; a 401/403 from every source says that authentication failed. Failures are one line and an
exit code, never a traceback. Nothing leaves 127.0.0.0/8: catalogs come from ``--mirrors`` only
(``--no-default-catalog``) and ``HF_ENDPOINT`` points at a dead loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import PullFinished, PullOptions
from dsmirror._core.errors import NoSourceError, SourceError, TooLarge
from dsmirror._fetch.engine import EngineConfig, fetch
from dsmirror._fetch.local import MemorySource, local_source_info
from dsmirror._fetch.metadata import MetadataSession
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.signature import MAX_SIGNATURE_SIZE
from dsmirror._journal.store import Store
from dsmirror._resolve.registries.modelscope import list_modelscope
from dsmirror._schedule.scheduler import SchedulerConfig
from dsmirror.testing import Faults, MirrorServer, write_random_tree
from dsmirror.testing.hostile import (
    Behaviour,
    BlackHole,
    DripFeed,
    EndlessBody,
    GzipBomb,
    HostileServer,
    Redirect,
    Respond,
)

pytestmark = pytest.mark.timeout(180)

KiB = 1 << 10
MiB = 1 << 20
#: Peak RSS a CLI pull may reach against a server that would send gigabytes (a bare pull's
#: interpreter is ~50 MB; the largest metadata document kept is 64 MiB).
RSS_BOUND = 200 * MiB
DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port
# The CLI, reporting its own peak RSS at exit: VmHWM (this address space's peak), not wait4's
# ru_maxrss, which Linux keeps from the process that exec'd the child (the test runner itself,
# hundreds of MB late in a suite).
_REPORT_PEAK = (
    "import atexit, os, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as s:\n"
    "        kb = next(int(line.split()[1]) for line in s if line.startswith('VmHWM:'))\n"
    "    with open(os.environ['DSMIRROR_TEST_PEAK'], 'w') as out:\n"
    "        out.write(str(kb * 1024))\n"
    "atexit.register(_peak)\n"
    "from dsmirror.cli import main\n"
    "main()\n"
)
CLI = [sys.executable, "-c", _REPORT_PEAK]
REPO = "acme/hostile"
COMMIT = "c0ffee" + "0" * 34
HF_INFO = Respond(200, json.dumps({"id": REPO, "sha": COMMIT}).encode(), content_type="application/json")
HF_INFO_ROUTE = f"/api/models/{REPO}/revision/"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes

    def one_line_error(self) -> str:
        """The error line, checking there is exactly one, maybe a hint, and no traceback."""
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        errors = [line for line in self.stderr.splitlines() if line.startswith("dsmirror: error: ")]
        assert len(errors) == 1, self.stderr[-3000:]
        return errors[0]


def run_measured(args: Sequence[str | Path], env: Mapping[str, str], cwd: Path, timeout: float = 90) -> Run:
    """Run ``dsmirror ARGS``; its exit code, output, wall time and peak RSS (its own VmHWM)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryDirectory() as tmp,
    ):
        peak_file = Path(tmp) / "peak"
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*CLI, *map(str, args)],
            env={**env, "DSMIRROR_TEST_PEAK": str(peak_file)},
            cwd=cwd,
            stdout=out,
            stderr=err,
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            int(peak_file.read_text()) if peak_file.is_file() else usage.ru_maxrss * KiB,
        )


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "HF_ENDPOINT": DEAD, "HF_HUB_DISABLE_TELEMETRY": "1"}


def catalog(path: Path, mirrors: Sequence[tuple[str, str, str]]) -> Path:
    """A catalog of ``(name, kind, url)`` mirrors."""
    lines = ["version: 1", "mirrors:"]
    for name, kind, url in mirrors:
        lines += [f"  - name: {name}", f"    kind: {kind}", f"    url: {json.dumps(url)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def hostile(behaviour: Behaviour, routes: Mapping[str, Behaviour] | None = None) -> Iterator[HostileServer]:
    with HostileServer(behaviour, routes=routes, host="127.0.0.9") as srv:
        yield srv


# (ref, catalog kind) for each metadata reader; "{url}" is the hostile server's.
READERS: dict[str, tuple[str, str]] = {
    "manifest-url": ("{url}model.manifest.json", "http"),
    "signature-url": ("{url}model.sig", "http"),
    "hf-model-info": (f"hf://{REPO}", "hf"),
    "hf-tree": (f"hf://{REPO}", "hf"),
    "ollama-manifest": ("ollama://library/hostile:latest", "ollama"),
}


def _pull_args(ref: str | Path, cat: Path, dest: Path) -> list[str | Path]:
    return ["pull", ref, "--no-default-catalog", "--mirrors", cat, "--dest", dest, "--no-p2p"]


def pull_from(srv: HostileServer, reader: str, tmp_path: Path, env: Mapping[str, str], *args: str) -> Run:
    ref, kind = READERS[reader]
    cat = catalog(tmp_path / "mirrors.yaml", [("bad", kind, srv.url)])
    return run_measured([*_pull_args(ref.format(url=srv.url), cat, tmp_path / "out"), *args], env, tmp_path)


def _public_key(tmp_path: Path) -> Path:
    """A publisher's key for a signature pull (the signature is never read far enough to use it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    path = tmp_path / "pub.pem"
    path.write_bytes(
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


# -- 1. every byte read is bounded before it is buffered ---------------------------------------------
@pytest.mark.parametrize(
    ("reader", "body", "code", "message"),
    [
        ("manifest-url", EndlessBody(), 7, "the manifest is larger than 64 MiB"),
        ("manifest-url", GzipBomb(), 7, "the manifest is larger than 64 MiB"),
        ("signature-url", EndlessBody(), 3, "too large to be a model signature"),
        ("signature-url", GzipBomb(), 3, "too large to be a model signature"),
        ("hf-model-info", EndlessBody(prefix=b'{"id": "x", "siblings": ['), 4, "bad: answer larger than"),
        ("hf-model-info", GzipBomb(), 4, "bad: answer larger than"),
        ("hf-tree", EndlessBody(), 4, "bad: answer larger than"),
        ("hf-tree", GzipBomb(), 4, "bad: answer larger than"),
        ("ollama-manifest", EndlessBody(), 4, "bad: answer larger than 4194304 bytes"),
        ("ollama-manifest", GzipBomb(), 4, "bad: answer larger than 4194304 bytes"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Behaviour) else None,
)
def test_endless_and_compressed_bodies_are_cut_off(
    reader: str, body: Behaviour, code: int, message: str, tmp_path: Path, env: dict[str, str]
) -> None:
    routes = {HF_INFO_ROUTE: HF_INFO} if reader == "hf-tree" else None
    args = ("--signature-key", str(_public_key(tmp_path))) if reader == "signature-url" else ()
    with hostile(body, routes) as srv:
        run = pull_from(srv, reader, tmp_path, env, *args)
    assert message in run.one_line_error()
    assert run.code == code
    # Before: 1.5-2 GB within 3-7 s, growing for as long as the server sent (killed at 2 GB).
    # A sharded model.sig of a 700 GB model is ~100 MB: its bound is MAX_SIGNATURE_SIZE (256 MiB).
    bound = RSS_BOUND + (MAX_SIGNATURE_SIZE if reader == "signature-url" else 0)
    assert run.peak_rss < bound, f"peak RSS {run.peak_rss / MiB:.0f} MB"
    assert run.seconds < 30


def test_a_modelscope_listing_is_bounded_too() -> None:
    with hostile(GzipBomb()) as srv, pytest.raises(TooLarge):
        list_modelscope(Mirror("bad", "modelscope", srv.url), REPO, "master", timeout=10)


def test_an_error_page_is_read_only_in_part() -> None:
    """A 500 whose body never ends: its first 64 KiB are kept for the message, the rest never read."""
    with hostile(EndlessBody(status=500)) as srv:
        with MetadataSession(source="bad", timeout=10) as session:
            doc = session.get(srv.url + "x")
        assert doc.status == 500 and len(doc.body) == 64 * KiB


# -- 2. every metadata exchange has a total deadline -------------------------------------------------
TIMEOUT = 1.5


@pytest.mark.parametrize(
    ("reader", "drip"),
    [
        ("manifest-url", DripFeed(interval=0.2)),
        ("manifest-url", DripFeed(interval=0.2, head=True)),
        ("hf-model-info", DripFeed(interval=0.2)),
        ("hf-tree", DripFeed(interval=0.2)),
        ("ollama-manifest", DripFeed(interval=0.2)),
        ("ollama-manifest", DripFeed(interval=0.2, head=True)),
    ],
    ids=lambda v: ("head" if v.head else "body") if isinstance(v, DripFeed) else None,
)
def test_a_drip_fed_answer_ends_at_the_metadata_timeout(
    reader: str, drip: DripFeed, tmp_path: Path, env: dict[str, str]
) -> None:
    routes = {HF_INFO_ROUTE: HF_INFO} if reader == "hf-tree" else None
    with hostile(drip, routes) as srv:
        run = pull_from(srv, reader, tmp_path, env, "--metadata-timeout", str(TIMEOUT))
        srv.wait_closed()
        held = srv.busy_seconds
    assert f"the answer did not end within {TIMEOUT:g} s" in run.one_line_error()
    assert run.code == 4
    # Before: still connected after 60 s with --metadata-timeout 3 (each read came within it).
    assert held < TIMEOUT + 1.0, f"the server held the pull for {held:.1f} s"
    assert run.seconds < TIMEOUT + 15  # the rest is the interpreter starting on a loaded machine
    assert run.peak_rss < RSS_BOUND


def test_a_silent_server_is_no_answer(tmp_path: Path, env: dict[str, str]) -> None:
    with hostile(BlackHole()) as srv:
        run = pull_from(srv, "manifest-url", tmp_path, env, "--metadata-timeout", str(TIMEOUT))
        srv.wait_closed()
        held = srv.busy_seconds
    assert f"no answer within {TIMEOUT:g} s" in run.one_line_error()
    assert run.code == 4 and held < TIMEOUT + 1.0


def test_the_doctor_ends_a_drip_fed_check_at_its_deadline() -> None:
    from dsmirror._doctor.mirrors import check_mirrors
    from dsmirror._doctor.report import DoctorConfig

    cfg = DoctorConfig(connect_timeout=0.5, http_timeout=1.0, deadline=10.0)
    with hostile(DripFeed(interval=0.2, head=True)) as srv:
        t0 = time.monotonic()
        (check,) = check_mirrors([Mirror("bad", "http", srv.url)], config=cfg, env={})
        took = time.monotonic() - t0
        srv.wait_closed()
        held = srv.busy_seconds
    assert check.status == "timeout", check
    # Its own deadline (connect + http timeout), not the doctor's 10 s; the socket was closed.
    assert took < 3.0 and held < 3.0, (took, held)


# -- 3. one mirror's failure is that mirror's ----------------------------------------------------------
def _model(tmp_path: Path, sizes: Mapping[str, int]) -> tuple[Path, Path, dsmirror.Manifest]:
    root = tmp_path / "model"
    write_random_tree(root, dict(sizes), seed=12)
    manifest = dsmirror.create_manifest(root, name="hostile", piece_size=256 * KiB)
    path = tmp_path / "model.manifest.json"
    manifest.write(path)
    return root, path, manifest


def _assert_same(root: Path, dest: Path, manifest: dsmirror.Manifest) -> None:
    for f in manifest.files:
        assert (dest / f.path).read_bytes() == (root / f.path).read_bytes(), f.path


@pytest.mark.parametrize("location", ["http://xn--/x", "http://[::1/x", "ftp://127.0.0.1/x", "//"])
def test_a_bad_redirect_ends_that_mirror_not_the_pull(
    location: str, tmp_path: Path, env: dict[str, str]
) -> None:
    root, manifest_path, manifest = _model(tmp_path, {"a.bin": 700 * KiB, "b/c.bin": 300 * KiB})
    with MirrorServer(root, host="127.0.0.2") as good, hostile(Redirect(location)) as bad:
        cat = catalog(tmp_path / "m.yaml", [("bad", "http", bad.url), ("good", "http", good.url)])
        run = run_measured(
            [*_pull_args(manifest_path, cat, tmp_path / "out"), "--json"],
            env,
            tmp_path,
        )
        asked = bad.requests
    # Before: exit 1 with an idna.core.IDNAError traceback.
    assert run.code == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert asked, "the bad mirror was never asked"
    done = [json.loads(line) for line in run.stdout.splitlines() if '"PullFinished"' in line]
    assert done and done[0]["delivered_by_source"].get("bad", 0) == 0
    _assert_same(root, tmp_path / "out", manifest)


class Exploding(MemorySource):
    """A source with a bug: ``when`` it raises an exception that is not a SourceError."""

    def __init__(self, name: str, data: Mapping[str, bytes], when: str) -> None:
        super().__init__(local_source_info(name), data)
        self.when = when
        self.calls = 0

    @contextlib.contextmanager
    def open_range(self, file: Any, start: int, end: int) -> Iterator[Iterator[bytes]]:
        self.calls += 1
        if self.when == "open":
            raise UnicodeError("idna-like: a library error the source did not translate")
        with super().open_range(file, start, end) as chunks:
            if self.when == "chunks":
                yield self._then_raise(chunks)
            else:
                yield chunks
                raise RuntimeError("on exit")

    @staticmethod
    def _then_raise(chunks: Iterator[bytes]) -> Iterator[bytes]:
        yield next(iter(chunks))[:1000]
        raise ValueError("a bug in the middle of a body")


@pytest.mark.parametrize("when", ["open", "chunks", "exit"])
def test_any_exception_a_source_raises_ends_that_source(when: str, tmp_path: Path) -> None:
    root, _, manifest = _model(tmp_path, {"a.bin": 2 * MiB, "b.bin": 300 * KiB})
    data = {f.path: (root / f.path).read_bytes() for f in manifest.files}
    bad = Exploding("bad", data, when)
    good = MemorySource(local_source_info("good"), data)
    cfg = EngineConfig(scheduler=SchedulerConfig(backoff_base=0.05))
    with Store.open(tmp_path / "out", manifest) as store:
        events = list(fetch(manifest, [bad, good], store, config=cfg))
    assert bad.calls
    done = [e for e in events if isinstance(e, PullFinished)]
    assert done and done[0].delivered_by_source.get("good", 0) > 0
    _assert_same(root, tmp_path / "out", manifest)
    # Alone, it fails the pull the way an unreachable source does: NoSourceError (exit 4).
    with Store.open(tmp_path / "alone", manifest) as store, pytest.raises(NoSourceError) as info:
        list(fetch(manifest, [Exploding("bad", data, "open")], store, config=cfg))
    assert info.value.exit_code == 4 and "bad: UnicodeError" in str(info.value)


# -- 4. the pull ends within a second of its last verified byte ----------------------------------------
class LastByte:
    """When the good mirror last sent a byte (polled every 10 ms)."""

    def __init__(self, mirror: MirrorServer) -> None:
        self.at = time.monotonic()
        self._mirror = mirror
        self._seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            n = self._mirror.bytes_served
            if n != self._seen:
                self._seen, self.at = n, time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize(
    "stuck", [BlackHole(), DripFeed(interval=0.2, head=True)], ids=["black-hole", "head-trickle"]
)
def test_stuck_mirrors_do_not_delay_the_end(stuck: Behaviour, tmp_path: Path) -> None:
    root, manifest_path, manifest = _model(tmp_path, {"a.bin": 3 * MiB, "b/c.bin": 1 * MiB, "d.bin": 100_000})
    home = tmp_path / "home"
    settings = dsmirror.Settings.from_env({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")})
    with MirrorServer(root, host="127.0.0.2", rate=3_000_000) as good, hostile(stuck) as bad:
        cat = dsmirror.load_default_catalog(
            {},
            [catalog(tmp_path / "m.yaml", [("bad", "http", bad.url), ("good", "http", good.url)])],
            replace=True,
        )
        last = LastByte(good)
        opts = PullOptions(dest=tmp_path / "out", reuse=False)
        events = dsmirror.pull(str(manifest_path), catalog=cat, settings=settings, options=opts)
        finished_at = None
        for ev in events:
            if isinstance(ev, PullFinished):
                finished_at = time.monotonic()
        last.stop()
        held = bad.requests
    assert held, "the stuck mirror was never asked"
    assert finished_at is not None
    # Before: PullFinished 17 s (black hole) / 24 s (head trickle) after the last byte.
    assert finished_at - last.at <= 1.0, f"PullFinished {finished_at - last.at:.2f} s after the last byte"
    _assert_same(root, tmp_path / "out", manifest)
    # Every connection thread is gone: none is left to write into the closed store.
    deadline = time.monotonic() + 2
    while [
        t for t in threading.enumerate() if t.name.startswith("dsmirror-bad")
    ] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.startswith("dsmirror-bad")]


# -- 5. authentication -------------------------------------------------------------------------------
def test_401_and_403_from_every_source_say_authentication_failed(tmp_path: Path, env: dict[str, str]) -> None:
    root, manifest_path, _ = _model(tmp_path, {"a.bin": 500 * KiB})
    with (
        MirrorServer(root, host="127.0.0.2", faults=Faults(status=401)) as a,
        MirrorServer(root, host="127.0.0.3", faults=Faults(status=403)) as b,
    ):
        cat = catalog(tmp_path / "m.yaml", [("a", "http", a.url), ("b", "http", b.url)])
        run = run_measured(
            [*_pull_args(manifest_path, cat, tmp_path / "out"), "--give-up-after", "20"],
            env,
            tmp_path,
        )
    line = run.one_line_error()
    # Before: "no source could be reached (a: HTTP 401; b: HTTP 403)", hint: check the network.
    assert "authentication failed" in line and "a: HTTP 401" in line and "b: HTTP 403" in line
    assert "HF_TOKEN" in run.stderr
    assert run.code == 4
    assert run.seconds < 15


def test_source_errors_come_from_the_original(tmp_path: Path) -> None:
    """The translation keeps the cause: what the library raised is the SourceError's __cause__."""
    with (
        hostile(Redirect("http://xn--/x")) as srv,
        MetadataSession(source="bad", timeout=5) as session,
        pytest.raises(SourceError) as info,
    ):
        session.get(srv.url + "x")
    assert info.value.__cause__ is not None
    assert "Traceback" not in str(info.value)
