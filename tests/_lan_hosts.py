"""Helpers of the namespaced-LAN tests (test_lan_*.py): a generated model, real CLI processes
started in a host's namespace with their own XDG folders, and their JSON events."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dsmirror import Manifest
from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes
from dsmirror._verify.tree import create_manifest
from dsmirror.testing.netns import PYTHON_CLI, Topology, Upstream

MiB = 1 << 20


def make_model(
    root: Path, big: int, *, seed: bytes = b"lan", sha1: bool = False
) -> tuple[Path, Path, Manifest]:
    """A model (one big file, a smaller one in a sub-folder, a small JSON) of 1 MiB pieces whose
    manifest records its torrent's info-hashes (published for sharing), with each piece's v1 SHA-1
    if ``sha1`` (as ``dsmirror manifest create`` makes it); (files, manifest path, manifest)."""
    files = root / "files"
    (files / "sub").mkdir(parents=True)
    rnd = hashlib.sha256(seed).digest()
    for name, size in (("model.bin", big), ("sub/extra.bin", 3 * MiB + 12345), ("config.json", 900)):
        with open(files / name, "wb") as f:
            block = rnd * (MiB // 32)
            left = size
            while left:
                f.write(block[: min(left, len(block))])
                block = hashlib.sha256(block[:64]).digest() * (MiB // 32)
                left -= min(left, len(block))
    m = create_manifest(files, name=f"lan-{seed.decode()}", piece_size=MiB, sha1=sha1)
    m = with_torrent_hashes(m, [create_torrent(m, files, verify=False)])
    mpath = root / "m.json"
    m.write(mpath)
    return files, mpath, m


def same_files(files: Path, dest: Path) -> bool:
    """Whether ``dest`` holds every file of ``files`` byte for byte."""
    for p in files.rglob("*"):
        if p.is_file():
            got = dest / p.relative_to(files)
            if not got.is_file() or got.read_bytes() != p.read_bytes():
                return False
    return True


def catalog(path: Path, upstream_url: str, trackers: Sequence[str] = ()) -> Path:
    lines = ["version: 1", "mirrors:", "  - name: upstream", "    kind: http", f'    url: "{upstream_url}"']
    for k, url in enumerate(trackers):
        lines += [f"  - name: tracker{k}", "    kind: bittorrent", f'    url: "{url}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def pull_argv(mpath: Path | str, cat: Path, dest: Path, *extra: str) -> list[str]:
    return [*PYTHON_CLI, "pull", str(mpath), "--mirrors", str(cat), "--no-default-catalog",
            "--no-reuse", "--dest", str(dest), "--json", *extra]  # fmt: skip


class Host:
    """One CLI process in a namespace (``host``: an index or a namespace name) and its events."""

    def __init__(
        self, net: Topology, host: int | str, work: Path, name: str, argv: list[str], *, home: str = ""
    ) -> None:
        home_dir = work / f"home-{home or name}"
        env = {x: v for x, v in os.environ.items() if "proxy" not in x.lower()}
        for var, sub in (("XDG_CONFIG_HOME", "c"), ("XDG_STATE_HOME", "s"), ("XDG_CACHE_HOME", "k")):
            env[var] = str(home_dir / sub)
        self.name = name
        self.started = time.monotonic()
        self.finished: float | None = None
        self.result: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.stderr_path = work / f"stderr-{name}.txt"
        self.err = open(self.stderr_path, "w")  # noqa: SIM115 - closed by stop()
        self.proc = net.popen(host, argv, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env)
        self._reader = threading.Thread(target=self._watch, daemon=True)
        self._reader.start()

    def _watch(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            with self._cond:
                self.events.append(ev)
                if ev.get("event") == "PullFinished":
                    self.finished = time.monotonic()
                    self.result = ev
                self._cond.notify_all()

    @property
    def failed(self) -> bool:
        """It ended (and all its output was read) without finishing a pull."""
        return self.finished is None and self.proc.poll() is not None and not self._reader.is_alive()

    @property
    def seconds(self) -> float:
        return (self.finished or float("nan")) - self.started

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first event (seen so far or to come) for which ``pred`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            k = 0
            while True:
                while k < len(self.events):
                    if pred(self.events[k]):
                        return self.events[k]
                    k += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(f"{self.name}: no such event; stderr: {self.stderr_tail()}")
                self._cond.wait(min(left, 0.2))

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == kind]

    def stderr_tail(self) -> str:
        self.err.flush()
        return self.stderr_path.read_text()[-2000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)
        self.err.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        self.err.close()


def wait_all(hosts: Sequence[Host], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(h.finished is None for h in hosts):
        if any(h.failed for h in hosts):
            break
        time.sleep(0.1)


def wait_and_stop(
    hosts: Sequence[Host], timeout: float, up: Upstream | None = None, *, also: Sequence[Host] = ()
) -> int:
    """Wait up to ``timeout`` s for ``hosts`` to finish their pulls (``wait_all``), then stop them
    and ``also``, whatever happened; the bytes ``up`` had served by then (0 without one)."""
    try:
        wait_all(hosts, timeout)
        return up.bytes_served if up is not None else 0
    finally:
        for h in [*hosts, *also]:
            h.stop()
