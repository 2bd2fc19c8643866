"""Start-up of ``dsmirror pull``: from exec to its first request and to its first event, beside aria2c.

A small model (two files) and its manifest are made in a temporary folder; the one mirror is a
loopback listener that notes when a connection arrives and when its first request line does, and
never answers (a pull against it cannot make progress, so what is measured is start-up alone).
Each run execs the client afresh (fresh HOME and XDG folders, ``--no-reuse``) and is killed once
both times are known (an unanswered request: nothing is downloaded, so nothing to compare byte for
byte). Runs of dsmirror, aria2c (the same file from the same listener) and a bare
``python -c pass`` (the interpreter's own floor) are interleaved; medians of ``--runs`` runs are
printed with the machine's load before and after.

Also printed: the import time of ``dsmirror.cli`` alone (``from dsmirror.cli import main`` in a
fresh interpreter, minus the bare interpreter) and how many modules a pull has loaded by its first
event.

    python scripts/bench_startup.py [--runs 9] [--compare OLD_CHECKOUT/src]

``pull`` is ``dsmirror pull MANIFEST`` as a user types it (p2p on: the manifest records no swarm);
``--compare`` runs another tree's dsmirror in the same loop, for before/after figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dsmirror import create_manifest

LOCAL = "127.0.0.1"


class Listener:
    """A TCP listener on 127.0.0.1 that records arrival times and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((LOCAL, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connected: float | None = None
        self.requested: float | None = None
        self.first_line = b""
        self._held: list[socket.socket] = []
        self._closing: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        """Forget the last run: its connections are closed by the listener's thread."""
        with self._lock:
            self._closing, self._held = self._held, []
            self.connected = self.requested = None
            self.first_line = b""

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                for c in self._closing:
                    c.close()
                self._closing = []
                socks = [self.sock, *self._held]
            ready, _, _ = select.select(socks, [], [], 0.05)
            now = time.perf_counter()
            for s in ready:
                with self._lock:
                    if s is self.sock:
                        c, _ = self.sock.accept()
                        self._held.append(c)
                        if self.connected is None:
                            self.connected = now
                        continue
                    if s not in self._held:
                        continue
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._held.remove(s)
                        s.close()
                    elif self.requested is None:
                        self.requested = now
                        self.first_line = data.split(b"\r\n", 1)[0]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for c in [*self._held, *self._closing]:
            c.close()
        self.sock.close()


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(home / ".cache"),
        HF_HOME=str(home / ".cache" / "huggingface"),
        COLUMNS="200",
    )
    return env


def _run_once(
    cmd: list[str],
    cwd: Path,
    listener: Listener,
    *,
    events: bool,
    extra_env: dict[str, str],
    timeout: float = 30,
) -> tuple[float, float | None, float]:
    """Exec ``cmd``; return seconds to its first request, to its first stdout line (or None), and
    the CPU seconds (user+sys) it used until it was killed right after both.

    ``events``: wait for the first line too (aria2c writes none before its first progress line).
    """
    listener.reset()
    home = cwd / "home"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(cwd / "dest", ignore_errors=True)
    home.mkdir()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, cwd=cwd, env=_env(home) | extra_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    first_line: float | None = None
    try:
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            if first_line is None:
                r, _, _ = select.select([p.stdout], [], [], 0.005)
                if r and p.stdout.read(65536):
                    first_line = time.perf_counter()
            else:
                time.sleep(0.005)
            if listener.requested is not None and (first_line is not None or not events):
                break
            if p.poll() is not None:
                _, err = p.communicate()
                if listener.requested is None:
                    raise SystemExit(
                        f"{cmd[0]} exited {p.returncode} before a request: {err.decode()[-2000:]}"
                    )
                break
        else:
            raise SystemExit(f"{' '.join(cmd)}: no request within {timeout} s")
    finally:
        p.kill()
        cpu = 0.0
        with contextlib.suppress(ChildProcessError):
            _, _, usage = os.wait4(p.pid, 0)
            cpu = usage.ru_utime + usage.ru_stime
        p.communicate()
    assert listener.requested is not None
    return listener.requested - t0, None if first_line is None else first_line - t0, cpu


def _interpreter_floor(runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_IMPORT = (
    "import time, sys; t = time.perf_counter(); from dsmirror.cli import main; "
    "print(time.perf_counter() - t, len(sys.modules))"
)
_DSMIRROR = "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()"


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:5.0f} ms ({min(xs) * 1000:.0f}-{max(xs) * 1000:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument(
        "--compare",
        type=Path,
        metavar="SRC",
        help="also run the dsmirror whose package is in SRC (e.g. an older checkout's src/), interleaved",
    )
    ap.add_argument(
        "--swarm",
        action="store_true",
        help="also pull with the manifest's own swarm (--prefer p2p, no peers, --no-lsd): its "
        "mirrors wait for the swarm to meet peers (lan_grace) before their first request",
    )
    args = ap.parse_args()
    print(f"load before: {os.getloadavg()}")

    work = Path(tempfile.mkdtemp(prefix="dsmirror-startup-"))
    listener = Listener()
    try:
        src = work / "model"
        src.mkdir()
        (src / "weights.bin").write_bytes(os.urandom(3 << 20))
        (src / "config.json").write_text("{}\n")
        manifest = work / "m.json"
        create_manifest(src).write(manifest)
        catalog = work / "mirrors.yaml"
        url = f"http://{LOCAL}:{listener.port}/"
        catalog.write_text(f'version: 1\nmirrors:\n  - name: m1\n    kind: http\n    url: "{url}"\n')
        pull = [sys.executable, "-c", _DSMIRROR, "pull", str(manifest), "--no-default-catalog"]
        pull += ["--mirrors", str(catalog), "--dest", "dest", "--json", "--no-reuse"]
        trees: dict[str, dict[str, str]] = {"": {}}
        if args.compare is not None:
            trees[f" [{args.compare}]"] = {"PYTHONPATH": str(args.compare.resolve())}
        # name -> (command, extra environment, whether it writes events)
        cases: dict[str, tuple[list[str], dict[str, str], bool]] = {}
        swarm = [*pull, "--prefer", "p2p", "--listen", "127.0.0.1:0", "--no-lsd"]
        for tag, env in trees.items():
            cases[f"pull{tag}"] = (pull, env, True)
            cases[f"pull, display (no --json){tag}"] = ([a for a in pull if a != "--json"], env, False)
            cases[f"pull --no-p2p{tag}"] = ([*pull, "--no-p2p"], env, True)
            if args.swarm:
                cases[f"pull --prefer p2p{tag}"] = (swarm, env, True)
        aria2c = shutil.which("aria2c")
        if aria2c:
            aria = [aria2c, "--no-conf=true", "-d", "dest", "--console-log-level=warn", url + "weights.bin"]
            cases["aria2c"] = (aria, {}, False)
        results: dict[str, list[tuple[float, float | None, float]]] = {k: [] for k in cases}
        imports: dict[str, list[float]] = {tag: [] for tag in trees}
        nmods: dict[str, str] = {}
        floors: list[float] = []
        for _ in range(args.runs):
            for name, (cmd, extra, events) in cases.items():
                results[name].append(_run_once(cmd, work, listener, events=events, extra_env=extra))
            floors.append(_interpreter_floor(1))
            for tag, extra in trees.items():
                out = subprocess.run(
                    [sys.executable, "-c", _IMPORT],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=_env(work / "home") | extra,
                )
                seconds, nmods[tag] = out.stdout.split()
                imports[tag].append(float(seconds))
        print(f"load after:  {os.getloadavg()}   runs: {args.runs}, interleaved (median (min-max))")
        print(f"{'case':<36} {'exec->first request':>24} {'exec->first event':>24} {'CPU user+sys':>24}")
        for name, rs in results.items():
            ev = [e for _, e, _ in rs if e is not None]
            req, cpu = [r for r, _, _ in rs], [c for _, _, c in rs]
            print(f"{name:<36} {_ms(req):>24} {_ms(ev) if ev else '-':>24} {_ms(cpu):>24}")
        print(f"{'python -c pass':<36} {_ms(floors):>24}")
        for tag in trees:
            print(f"{'import dsmirror.cli' + tag:<36} {_ms(imports[tag]):>24}   {nmods[tag]} modules loaded")
        print(f"first request line: {listener.first_line!r}" if listener.first_line else "")
    finally:
        listener.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
