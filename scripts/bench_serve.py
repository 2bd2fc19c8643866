"""Throughput of ``dsmirror serve`` against ``python -m http.server`` and nginx, on loopback.

One large file (``--size``, default 1 GiB) is served by each server; curl clients fetch it:

- ``1 x full``: one client downloads the whole file;
- ``8 x full``: eight clients download the whole file at once (aggregate MB/s);
- ``8 x 1/8``: eight clients each download one eighth with ``curl -r`` (a segmented download,
  what aria2c or dsmirror itself does against one mirror).

dsmirror serves the file from a Hugging Face cache layout (``models--bench--big/blobs/<sha256>``,
a snapshot symlink, ``refs/main``) through its ``resolve`` route, as ``hf download`` would fetch
it; the other servers serve the same file by its plain name. Each figure is the median of
``--repeat`` runs. nginx is used when installed (``apt-get install -y nginx``), with a temporary
config on a loopback port (sendfile on, access log off, one worker per core). Every download's
size is checked; ``--check`` also hashes each client's bytes against the file's SHA-256.

    python scripts/bench_serve.py --size 1GiB --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dsmirror._core.units import parse_size
from dsmirror.testing import write_random_tree

MB = 1_000_000
QUIET = ["--no-default-catalog", "--quiet", "--rescan", "0"]
CACHE = Path("/tmp/dsmirror-bench-serve")
REPO = "bench/big"
DSMIRROR = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def prepare(size: int) -> tuple[Path, Path, str]:
    """(plain folder with big.bin, HF cache holding the same bytes, sha256); cached across runs."""
    plain = CACHE / f"plain-{size}"
    big = plain / "big.bin"
    digest_file = plain / "big.bin.sha256"
    if not (big.is_file() and big.stat().st_size == size and digest_file.is_file()):
        shutil.rmtree(plain, ignore_errors=True)
        plain.mkdir(parents=True)
        print(f"writing a {size / MB:.0f} MB test file ...", file=sys.stderr)
        digests = write_random_tree(plain, {"big.bin": size})
        digest_file.write_text(digests["big.bin"])
    sha256 = digest_file.read_text().strip()
    hub = CACHE / f"hub-{size}"
    repo_dir = hub / ("models--" + REPO.replace("/", "--"))
    blob = repo_dir / "blobs" / sha256
    if not blob.is_file():
        shutil.rmtree(hub, ignore_errors=True)
        blob.parent.mkdir(parents=True)
        os.link(big, blob)  # same bytes, no copy
        commit = hashlib.sha1(sha256.encode()).hexdigest()
        (repo_dir / "refs").mkdir()
        (repo_dir / "refs" / "main").write_text(commit)
        snap = repo_dir / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "big.bin").symlink_to(f"../../blobs/{sha256}")
    return plain, hub, sha256


# -- servers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def dsmirror_serve(hub: Path) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
        env["HOME"] = home
        proc = subprocess.Popen(
            [*DSMIRROR, "serve", "--port", "0", "--hf-cache", str(hub), "--ollama-models", home, *QUIET],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("dsmirror serve: listening on "):
                raise RuntimeError(f"dsmirror serve did not start: {line!r}")
            url = line.rsplit(" ", 1)[1].strip()
            yield f"{url}/{REPO}/resolve/main/big.bin"
        finally:
            proc.terminate()
            proc.wait(15)


@contextlib.contextmanager
def http_server(plain: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(plain)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        yield f"http://127.0.0.1:{port}/big.bin"
    finally:
        proc.terminate()
        proc.wait(15)


NGINX_CONF = """
worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@contextlib.contextmanager
def nginx(plain: Path) -> Iterator[str]:
    binary = nginx_binary()
    assert binary is not None
    port = free_port()
    with tempfile.TemporaryDirectory() as prefix:
        conf = Path(prefix) / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, root=plain, user=user))
        proc = subprocess.Popen(
            [binary, "-p", prefix, "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_listening(port)
            yield f"http://127.0.0.1:{port}/big.bin"
        finally:
            proc.terminate()
            proc.wait(15)


# -- clients -------------------------------------------------------------------------------------


class NoRangeSupport(Exception):
    pass


def run_clients(url: str, size: int, clients: int, ranges: bool, check: str | None) -> float:
    """Start ``clients`` curls at once; aggregate MB/s over the wall time until all are done."""
    parts = []
    for i in range(clients):
        if ranges:
            lo, hi = i * size // clients, (i + 1) * size // clients - 1
            parts.append((lo, hi))
        else:
            parts.append((0, size - 1))
    errors: list[str] = []
    no_range: list[bool] = []

    def one(lo: int, hi: int) -> None:
        argv = ["curl", "-s", "--fail", "--noproxy", "*", "-H", "Accept-Encoding: identity"]
        if ranges:
            argv += ["-r", f"{lo}-{hi}"]
        if check and not ranges:
            proc = subprocess.Popen([*argv, url], stdout=subprocess.PIPE)
            digest = hashlib.sha256()
            got = 0
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                digest.update(chunk)
                got += len(chunk)
            proc.wait()
            if got != size or digest.hexdigest() != check:
                errors.append(f"{url}: wrong bytes ({got} bytes)")
            return
        out = subprocess.run(
            [*argv, "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url],
            capture_output=True,
            text=True,
        )
        status, _, got = out.stdout.partition(" ")
        if ranges and status == "200":
            no_range.append(True)  # the server ignored the Range header and sent everything
        elif out.returncode != 0 or int(got or 0) != hi - lo + 1:
            errors.append(f"{url}: curl exit {out.returncode}, {got} bytes of {hi - lo + 1}")

    threads = [threading.Thread(target=one, args=p) for p in parts]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    if errors:
        raise RuntimeError("; ".join(errors))
    if no_range:
        raise NoRangeSupport(url)
    return sum(hi - lo + 1 for lo, hi in parts) / seconds / MB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="size of the served file (default 1GiB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients of the parallel rows")
    ap.add_argument("--check", action="store_true", help="hash every full download (slower clients)")
    ap.add_argument("--only", action="append", help="dsmirror, http.server or nginx (repeatable)")
    args = ap.parse_args()
    if shutil.which("curl") is None:
        sys.exit("curl is required (apt-get install -y curl)")
    size = int(parse_size(args.size))
    plain, hub, sha256 = prepare(size)
    servers = {
        "dsmirror serve": lambda: dsmirror_serve(hub),
        "python -m http.server": lambda: http_server(plain),
    }
    if nginx_binary():
        servers["nginx"] = lambda: nginx(plain)
    else:
        print("nginx not installed: skipped (apt-get install -y nginx)", file=sys.stderr)
    if args.only:
        servers = {k: v for k, v in servers.items() if any(o in k for o in args.only)}
    n = args.clients
    modes = [("1 x full", 1, False), (f"{n} x full", n, False), (f"{n} x 1/{n}", n, True)]
    results: dict[str, list[float | None]] = {}
    for name, start in servers.items():
        with start() as url:
            run_clients(url, size, 1, False, None)  # warm up: the page cache, the server's imports
            row: list[float | None] = []
            for label, clients, ranges in modes:
                try:
                    runs = [
                        run_clients(url, size, clients, ranges, sha256 if args.check else None)
                        for _ in range(args.repeat)
                    ]
                except NoRangeSupport:
                    print(f"{name:24} {label:10} no Range support", file=sys.stderr)
                    row.append(None)
                    continue
                row.append(statistics.median(runs))
                print(
                    f"{name:24} {label:10} " + " ".join(f"{r:8.0f}" for r in runs) + " MB/s", file=sys.stderr
                )
            results[name] = row
    cpus = os.cpu_count()
    print(
        f"\nServing one {size / MB:.0f} MB file over loopback, curl clients, median of {args.repeat} (MB/s);"
    )
    print(f"{cpus} CPUs, the file in the page cache.\n")
    header = f"| {'server':24} | " + " | ".join(f"{label:>10}" for label, _, _ in modes) + " |"
    print(header)
    print("|" + "-" * 26 + "|" + "|".join("-" * 12 for _ in modes) + "|")
    for name, row in results.items():
        cells = [f"{v:10.0f}" if v is not None else f"{'no Range':>10}" for v in row]
        print(f"| {name:24} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
