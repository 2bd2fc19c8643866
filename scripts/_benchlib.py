"""Shared parts of the benchmarks (``bench_pull.py``, ``bench_mirrors.py``): loopback only.

- a generated model cached under ``/tmp/dsmirror-bench`` (content is deterministic, so a cached
  copy is as good as a new one; ``--fresh`` rebuilds it) with its manifest;
- throttled :class:`dsmirror.testing.MirrorServer` mirrors, each on its own 127.0.0.x address (aria2c
  counts its per-server connection limit per host, so mirrors that differ only by port would
  handicap it), the catalog YAML naming them and the Metalink exported from it;
- running a client as a child process and measuring it with ``wait4(2)``: wall time, user and
  system CPU seconds, and peak RSS of that child alone (the mirrors run in this process, so
  their work is never charged to the client);
- checking every downloaded file against the manifest's SHA-256, and printing tables.

Clients get an environment without proxy variables and with fresh XDG config/state/cache
folders per run, so no run learns from an earlier one and nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dsmirror import Manifest, create_manifest, load_manifest
from dsmirror.testing import MirrorServer, write_random_tree

CACHE = Path("/tmp/dsmirror-bench")
MIB = 1 << 20
GIB = 1 << 30
MB = 1_000_000
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
DSMIRROR = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()",
]
ARIA2C_BASE = [
    "--no-conf=true",
    "--allow-overwrite=true",
    "--auto-file-renaming=false",
    "--console-log-level=warn",
    "--summary-interval=0",
    "--file-allocation=falloc",
    "--enable-mmap=false",
    "-x16",
    "-s16",
    "-k8M",
]


# -- the model -------------------------------------------------------------------------------------


def model_sizes(total: int) -> dict[str, int]:
    """Three safetensors shards and two small JSON files adding up to ``total`` bytes.

    The shard sizes are not multiples of the piece size, like real shards.
    """
    small = {"config.json": 1_337, "tokenizer.json": min(7 * MIB + 13, max(1, total // 150))}
    rest = max(3, total - sum(small.values()))
    shard = rest // 3
    sizes = {
        f"model-0000{i}-of-00003.safetensors": shard + (rest - 3 * shard if i == 3 else 0) for i in (1, 2, 3)
    }
    return sizes | small


@dataclasses.dataclass(frozen=True)
class Model:
    root: Path  # the files the mirrors serve
    manifest_path: Path
    manifest: Manifest

    @property
    def size(self) -> int:
        return self.manifest.total_size


def compile_client() -> None:
    """Byte-compile the dsmirror package, as ``pip install`` of a wheel does.

    An editable checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (as on the CI machines) would
    otherwise compile every module again at each start of the client, which no installed
    dsmirror does; aria2c is a compiled binary. ``compileall`` writes the ``.pyc`` files even then.
    """
    import dsmirror

    package = str(Path(dsmirror.__file__).parent)
    subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True)


def prepare_model(total: int, piece_size: int, *, fresh: bool = False) -> Model:
    """The cached generated model of about ``total`` bytes and its manifest; built when missing.

    Also byte-compiles the client (``compile_client``): every benchmark starts here.
    """
    compile_client()
    folder = CACHE / f"model-{total}-{piece_size}"
    root, manifest_path = folder / "files", folder / "manifest.json"
    sizes = model_sizes(total)
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if manifest_path.exists():
        manifest = load_manifest(manifest_path)
        if {f.path: f.size for f in manifest.files} == sizes and all(
            (root / p).is_file() and (root / p).stat().st_size == n for p, n in sizes.items()
        ):
            return Model(root, manifest_path, manifest)
        shutil.rmtree(folder)
    print(f"generating a {total / GIB:.2f} GiB model under {folder} ...", flush=True)
    t0 = time.perf_counter()
    write_random_tree(root, sizes, seed=1)
    t1 = time.perf_counter()
    manifest = create_manifest(root, name="bench-model", piece_size=piece_size)
    t2 = time.perf_counter()
    manifest.write(manifest_path)
    print(
        f"  written in {t1 - t0:.1f} s; manifest created in {t2 - t1:.2f} s "
        f"({total / (t2 - t1) / MB:.0f} MB/s hashing, every piece + every file)",
        flush=True,
    )
    return Model(root, manifest_path, manifest)


# -- mirrors ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MirrorSpec:
    name: str
    host: str
    rate: float | None  # bytes/s, None: unthrottled
    latency: float  # seconds
    region: str = "global"
    priority: int = 10


def require_loopback(host: str) -> None:
    if ipaddress.ip_address(host) not in LOOPBACK:
        raise SystemExit(f"refusing to bind {host}: the benchmarks only use 127.0.0.0/8")


@contextlib.contextmanager
def mirrors_serving(root: Path, specs: Sequence[MirrorSpec]) -> Iterator[list[MirrorServer]]:
    for spec in specs:
        require_loopback(spec.host)
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(MirrorServer(root, host=s.host, rate=s.rate, latency=s.latency))
            for s in specs
        ]
        yield servers


class SendfileServer:
    """A plain asyncio HTTP/1.1 server of the files under ``root``: Range requests answered with
    ``sendfile(2)`` (as ``loop.sendfile`` does, counting each byte sent, also of an answer the
    client cut), keep-alive, nothing else (no throttle, no faults).

    It runs in a thread of the benchmark process (the client is another process, so none of its
    work is charged to the client) and does as little per byte as a server can in Python: the
    kernel copies the file to the socket. Same surface as :class:`MirrorServer` for the benches:
    ``url``, ``bytes_served``, ``reset_counters()``, a context manager.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        require_loopback(host)
        self._root = Path(root).resolve()
        self._host = host
        self._port = 0
        self._loop: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: Any = None
        self.bytes_served = 0
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}/"

    def reset_counters(self) -> None:
        self.bytes_served = 0
        self.requests = 0

    def __enter__(self) -> SendfileServer:
        self._thread = threading.Thread(target=self._main, name="sendfile-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the sendfile server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        import asyncio

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._handle, self._host, 0, backlog=256)
            self._port = server.sockets[0].getsockname()[1]
            self._ready.set()
            async with server:
                await self._stop.wait()

        asyncio.run(serve())

    async def _sendfile(self, sock: int, fd: int, offset: int, count: int) -> None:
        """``sendfile(2)`` of ``count`` bytes, waiting while the socket is full (what
        ``loop.sendfile`` does on a transport with nothing buffered), counting every byte sent."""

        while count:
            try:
                sent = os.sendfile(sock, fd, offset, min(count, 1 << 20))
            except BlockingIOError:
                await self._writable(sock)
                continue
            if not sent:
                raise ConnectionError("the file ended early")
            offset += sent
            count -= sent
            self.bytes_served += sent

    async def _writable(self, sock: int) -> None:
        import asyncio

        loop = self._loop
        ready = loop.create_future()
        # The private pair loop.sendfile uses itself: add_writer refuses a transport's fd.
        loop._add_writer(sock, _wake, ready)
        try:
            await asyncio.wait_for(ready, 60)
        finally:
            loop._remove_writer(sock)

    async def _send(self, sock: int, data: bytes) -> None:
        """All of ``data`` on the socket, in order with the bodies sent by ``_sendfile`` (never
        through the transport: bytes it buffered would go out after a body sent around it)."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(sock, view) :]
            except BlockingIOError:
                await self._writable(sock)

    async def _handle(self, reader: Any, writer: Any) -> None:
        sock = writer.get_extra_info("socket").fileno()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                path = (self._root / target.split("?", 1)[0].lstrip("/")).resolve()
                if method not in ("GET", "HEAD") or not path.is_file() or self._root not in path.parents:
                    await self._send(sock, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                size = path.stat().st_size
                start, end, status = 0, size - 1, "200 OK"
                extra = ""
                rng = headers.get("range", "")
                if rng.startswith("bytes=") and "," not in rng:
                    a, _, b = rng[6:].partition("-")
                    if a:
                        start, end = int(a), min(int(b), size - 1) if b else size - 1
                    else:
                        start, end = max(0, size - int(b)), size - 1
                    if start > end:
                        await self._send(
                            sock,
                            f"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{size}\r\n"
                            "Content-Length: 0\r\n\r\n".encode(),
                        )
                        continue
                    status, extra = "206 Partial Content", f"Content-Range: bytes {start}-{end}/{size}\r\n"
                n = end - start + 1
                await self._send(
                    sock,
                    f"HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n"
                    f"Accept-Ranges: bytes\r\n{extra}Content-Length: {n}\r\n\r\n".encode(),
                )
                self.requests += 1
                if method == "GET":
                    with open(path, "rb") as fh:
                        await self._sendfile(sock, fh.fileno(), start, n)
        except (OSError, ValueError, EOFError, Exception):  # client gone, junk: end the connection
            pass
        except BaseException:  # cancelled as the server stops: end quietly
            pass
        finally:
            writer.close()


def _wake(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


class NginxServer:
    """Debian's nginx (``/usr/sbin/nginx``) serving ``root`` on ``host``, from a temporary prefix.

    Started as a child process with its own configuration (no system config, pid file, logs or
    temp folders; ``daemon off``, one worker, ``sendfile on``); bytes served are read from its
    access log (``$body_bytes_sent`` of each request, then its status, connection number,
    seconds and Range). Stopped with SIGQUIT (graceful), then
    killed if it lingers.
    """

    BINARY = "/usr/sbin/nginx"

    def __init__(self, root: Path, host: str = "127.0.0.1", *, workers: int = 1) -> None:
        require_loopback(host)
        self._root = Path(root).resolve()
        self._host = host
        self._workers = workers
        self._prefix = CACHE / f"nginx-{host}"
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}/"

    @property
    def _log(self) -> Path:
        return self._prefix / "access.log"

    @property
    def bytes_served(self) -> int:
        with open(self._log, "rb") as fh:
            fh.seek(self._log_from)
            lines = fh.read().splitlines()
        return sum(int(line.split()[0]) for line in lines if line.split() and line.split()[0].isdigit())

    def reset_counters(self) -> None:
        self._log_from = self._log.stat().st_size if self._log.exists() else 0

    def __enter__(self) -> NginxServer:
        import socket

        clear(self._prefix)
        with socket.socket() as s:  # a free port (nginx cannot report the one it picked)
            s.bind((self._host, 0))
            self._port = s.getsockname()[1]
        p = self._prefix
        user = "user root root;\n" if os.geteuid() == 0 else ""  # workers can read the cache as root
        conf = f"""{user}worker_processes {self._workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ application/octet-stream safetensors; application/json json; }}
    default_type application/octet-stream;
    log_format bytes '$body_bytes_sent $status $connection $request_time "$http_range"';
    access_log {p}/access.log bytes;
    client_body_temp_path {p}/tmp-body;
    proxy_temp_path {p}/tmp-proxy;
    fastcgi_temp_path {p}/tmp-fastcgi;
    uwsgi_temp_path {p}/tmp-uwsgi;
    scgi_temp_path {p}/tmp-scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    server {{
        listen {self._host}:{self._port};
        root {self._root};
        location / {{ }}
    }}
}}
"""
        (p / "nginx.conf").write_text(conf)
        self._log.touch()
        self._proc = subprocess.Popen(
            [self.BINARY, "-p", str(p), "-c", str(p / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(p / "stderr.log", "wb"),  # the child keeps it
        )
        import socket as _socket

        deadline = time.monotonic() + 10
        while True:
            try:
                _socket.create_connection((self._host, self._port), timeout=1).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    err = (
                        (p / "stderr.log").read_text(errors="replace")
                        + (p / "error.log").read_text(errors="replace")
                        if (p / "error.log").exists()
                        else ""
                    )
                    self.__exit__()
                    raise RuntimeError(f"nginx did not start: {err.strip()[-500:]}") from None
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGQUIT)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


SERVERS = ("dsmirror", "sendfile", "nginx")


@contextlib.contextmanager
def servers_serving(kind: str, root: Path, specs: Sequence[MirrorSpec]) -> Iterator[list[Any]]:
    """``mirrors_serving`` for ``kind`` ``dsmirror`` (MirrorServer, which can throttle), or the
    unthrottled ``sendfile`` (SendfileServer) and ``nginx`` (NginxServer) mirrors, one per spec."""
    if kind == "dsmirror":
        with mirrors_serving(root, specs) as servers:
            yield servers
        return
    if any(s.rate is not None or s.latency for s in specs):
        raise SystemExit(f"--server {kind} cannot throttle or add latency: use --server dsmirror")
    cls = {"sendfile": SendfileServer, "nginx": NginxServer}[kind]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(cls(root, host=s.host)) for s in specs]


def write_catalog(
    path: Path,
    specs: Sequence[MirrorSpec],
    servers: Sequence[Any],
    max_connections: int | None = None,
) -> None:
    lines = ["version: 1", "mirrors:"]
    for spec, server in zip(specs, servers, strict=True):
        lines += [
            f"  - name: {spec.name}",
            "    kind: http",
            f"    url: {server.url}",
            f"    region: {spec.region}",
            f"    priority: {spec.priority}",
        ]
        if max_connections is not None:
            lines.append(f"    max_connections: {max_connections}")
    path.write_text("\n".join(lines) + "\n")


def dsmirror_pull_flags() -> list[str]:
    """Flags that keep ``dsmirror pull`` a plain download over loopback, among those it knows.

    No reuse of local copies (a benchmark measures fetching), no BitTorrent, no multicast
    discovery of LAN peers (nothing may leave 127.0.0.0/8); older versions lack some flags.
    """
    env = client_env(CACHE / "help-env") | {"COLUMNS": "250"}
    usage = subprocess.run([*DSMIRROR, "pull", "--help"], env=env, capture_output=True, text=True).stdout
    return [flag for flag in ("--no-reuse", "--no-p2p", "--no-lsd", "--no-dht") if flag in usage]


def export_meta4(manifest_path: Path, catalog: Path, out: Path) -> None:
    """``dsmirror manifest export --meta4``: the Metalink aria2c gets, with the same pieces."""
    argv = [*DSMIRROR, "manifest", "export", str(manifest_path), "--meta4", "--mirrors", str(catalog)]
    subprocess.run(
        [*argv, "-o", str(out)],
        check=True,
        env=client_env(out.parent / "export-env"),
        stdout=subprocess.DEVNULL,
    )


# -- running clients -------------------------------------------------------------------------------


def client_env(home: Path) -> dict[str, str]:
    """The environment of a client: no proxies, fresh XDG folders under ``home``."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_STATE_HOME", "state"), ("XDG_CACHE_HOME", "cache")):
        env[var] = str(home / sub)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    return env


@dataclasses.dataclass
class Measurement:
    wall: float = 0.0  # seconds
    user: float = 0.0  # CPU seconds
    sys: float = 0.0
    maxrss: int = 0  # bytes, the largest of the processes measured
    returncode: int = 0

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def add(self, other: Measurement) -> Measurement:
        """This and ``other`` run one after the other (e.g. a client and then ``sync``)."""
        return Measurement(
            self.wall + other.wall,
            self.user + other.user,
            self.sys + other.sys,
            max(self.maxrss, other.maxrss),
            self.returncode or other.returncode,
        )


#: GNU time, which forks the client from its own small process and reports the client's rusage.
#: Measured from here, a child's peak RSS would be at least this process's own (the mirrors, the
#: manifest; ~45 MiB): Linux starts a child's high-water mark at its parent's RSS at fork (and
#: vfork/posix_spawn, as subprocess uses, at the parent's own peak) and keeps it across exec.
#: (``/bin/true`` run by a 300 MiB Python reported 313 MiB by wait4, 1 MiB through GNU time.)
TIME = "/usr/bin/time"


def run_measured(
    argv: Sequence[str], *, env: Mapping[str, str], stdout: Path, stderr: Path, timeout: float
) -> Measurement:
    """Run ``argv`` to completion (killed after ``timeout`` s); its own wall, CPU and peak RSS.

    Through GNU time (``TIME``) when it is installed, so the peak RSS is the client's own; else
    with wait4 here, and the RSS is only an upper bound (see ``TIME``).
    """
    report = stdout.with_name(stdout.name + ".rusage")
    timed = Path(TIME).exists()
    full = [TIME, "-q", "-o", str(report), "-f", "%U %S %M", *argv] if timed else list(argv)
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=dict(env), start_new_session=True)
        killer = threading.Timer(timeout, _kill_group, (proc.pid,))
        killer.start()
        try:
            # wait4 gives the rusage of this child alone (and of children it waited for), unlike
            # RUSAGE_CHILDREN deltas, whose ru_maxrss is the maximum over every child ever reaped.
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    user, sys_, maxrss = usage.ru_utime, usage.ru_stime, usage.ru_maxrss * 1024
    if timed:
        with contextlib.suppress(OSError, ValueError, IndexError):
            u, s, kib = report.read_text().split()[-3:]
            user, sys_, maxrss = float(u), float(s), int(kib) * 1024
    return Measurement(wall, user, sys_, maxrss, proc.returncode)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, 9)  # GNU time and the client under it


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); whether it worked."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                events.append(obj)
    return events


def bad_outputs(manifest: Manifest, dest: Path) -> list[str]:
    """Files under ``dest`` that are missing or differ from the manifest (whole-file SHA-256)."""
    bad = []
    for f in manifest.files:
        p = dest / f.path
        if not p.is_file() or p.stat().st_size != f.size:
            bad.append(f.path)
            continue
        with open(p, "rb") as fh:
            if hashlib.file_digest(fh, "sha256").hexdigest() != f.sha256:
                bad.append(f.path)
    return bad


def clear(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


# -- reporting -------------------------------------------------------------------------------------


def machine_note() -> str:
    """CPUs and load average: a loaded machine slows the client, the mirrors and the hashing."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load} (1/5/15 min)"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned: the first to the left, the others to the right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def fmt_mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


def parse_size(text: str) -> int:
    from dsmirror._core.units import parse_size as parse

    return parse(text)
