"""``dsmirror doctor`` against loopback mirrors: fast, slow, refusing, and one with a bad certificate."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror._doctor import (
    DiskCheck,
    DoctorConfig,
    DoctorReport,
    MirrorCheck,
    StoreCheck,
    TorrentCheck,
    advise,
    check_torrent,
    run_doctor,
)
from dsmirror.testing import MirrorServer, write_random_tree

MiB = 1 << 20
FAST_CFG = DoctorConfig(sample_bytes=2 * MiB, sample_seconds=0.5, deadline=15.0)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client rejects our certificate: that is the point


@pytest.fixture
def bad_tls_url(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.4 with a self-signed certificate made just now (openssl CLI)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    r = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        timeout=60,
    )
    if r.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate: {r.stderr.decode()[:200]}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = _QuietServer(("127.0.0.4", 0), _Hello)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"https://127.0.0.4:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _closed_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loopback_catalog(
    tmp_path: Path, start_mirrors: Callable[..., list[MirrorServer]], bad_tls_url: str
) -> tuple[Path, Path, dict[str, MirrorServer]]:
    """fast (region cn), slow (official, global), refused, badtls; and a manifest of a 4 MiB model."""
    root = tmp_path / "root"
    write_random_tree(root, {"model.bin": 4 * MiB, "config.json": 300})
    manifest = dsmirror.create_manifest(root, name="doctor-model", piece_size=1 * MiB)
    mpath = tmp_path / "doctor.manifest.json"
    manifest.write(mpath)
    fast, slow = start_mirrors(root, [{}, {"rate": 256 * 1024}])
    refused = f"http://127.0.0.3:{_closed_port('127.0.0.3')}/"
    cat = tmp_path / "mirrors.yaml"
    cat.write_text(
        "version: 1\nmirrors:\n"
        f"  - {{name: fast, kind: http, url: '{fast.url}', region: cn}}\n"
        f"  - {{name: slow, kind: http, url: '{slow.url}', region: global, official: true}}\n"
        f"  - {{name: refused, kind: http, url: '{refused}'}}\n"
        f"  - {{name: badtls, kind: http, url: '{bad_tls_url}'}}\n"
    )
    return cat, mpath, {"fast": fast, "slow": slow}


def _run(cat: Path, tmp_path: Path, ref: str | None) -> DoctorReport:
    catalog = dsmirror.load_default_catalog({}, [cat], replace=True)
    home = tmp_path / "home"
    settings = dsmirror.Settings.from_env({"HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")})
    return run_doctor(
        catalog, settings, ref=ref, dest=tmp_path / "dest", config=FAST_CFG, listen="127.0.0.1:0"
    )


def test_each_loopback_mirror_is_reported_correctly(
    tmp_path: Path, loopback_catalog: tuple[Path, Path, dict[str, MirrorServer]]
) -> None:
    cat, mpath, servers = loopback_catalog
    r = _run(cat, tmp_path, str(mpath))
    by = {c.name: c for c in r.mirrors}
    assert set(by) == {"fast", "slow", "refused", "badtls"}
    fast, slow = by["fast"], by["slow"]
    assert fast.status == "ok" and fast.http_status == 206 and fast.rate and fast.connect is not None
    assert fast.url.endswith("/model.bin")  # the model's largest file, as a pull would ask for it
    assert slow.status == "slow" and slow.rate and slow.rate < 600 * 1024
    assert fast.rate > 4 * slow.rate
    assert by["refused"].status == "refused" and by["refused"].dns is not None
    bad = by["badtls"]
    assert bad.status == "bad-cert" and bad.connect is not None and bad.tls is None
    assert bad.error is not None and "certificate" in bad.error
    # Bounded: the slow sample stopped after sample_seconds, not after the whole file.
    assert servers["slow"].bytes_served < 2 * MiB
    assert r.model_size == 4 * MiB + 300 and r.disk is not None and r.disk.needed == r.model_size
    assert r.clock_skew is not None and abs(r.clock_skew) < 5
    text = "\n".join(r.advice)
    assert "127.0.0.1 answers" in text and "faster than 127.0.0.2" in text and "--region cn" in text
    assert "refused" in text and "refuses connections" in text
    assert "certificate" in text and "never turns certificate checks off" in text
    assert r.seconds < 15


def test_cli_json_and_table(
    tmp_path: Path,
    loopback_catalog: tuple[Path, Path, dict[str, MirrorServer]],
    run_cli: Callable[..., Any],
) -> None:
    cat, mpath, _ = loopback_catalog
    args = ["doctor", "--mirrors", cat, "--no-default-catalog", "--sample", "1MiB", "--sample-seconds", "0.3"]
    r = run_cli(*args, "--json", "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    status = {m["name"]: m["status"] for m in doc["mirrors"]}
    assert status["refused"] == "refused" and status["badtls"] == "bad-cert"
    assert status["fast"] in ("ok", "slow") and doc["advice"]
    assert {s["what"] for s in doc["stores"]} == {"Ollama store", "Hugging Face cache"}
    r = run_cli(*args, str(mpath), "--listen", "127.0.0.1:0")
    assert r.returncode == 0, r.stderr
    assert "bad-cert" in r.stdout and "refused" in r.stdout and "advice" in r.stdout


def _check(name: str, status: str = "ok", **kw: Any) -> MirrorCheck:
    base: dict[str, Any] = {"url": f"https://{name}/", "host": name, "port": 443, "region": "global"}
    base.update(kw)
    return MirrorCheck(name=name, kind="hf", official=False, status=status, **base)


def _report(*checks: MirrorCheck, **kw: Any) -> DoctorReport:
    fields: dict[str, Any] = {
        "ref": None,
        "model": None,
        "model_size": None,
        "mirrors": checks,
        "proxies": {},
        "clock_skew": 0.0,
        "disk": DiskCheck("/data", 100 << 30, None),
        "stores": (
            StoreCheck("Ollama store", "/o", True, True),
            StoreCheck("Hugging Face cache", "/h", True, True),
        ),
        "torrent": TorrentCheck("0.0.0.0:6881", 6881, True, True, True, False),
        "seconds": 1.0,
    }
    fields.update(kw)
    return DoctorReport(**fields)


def test_advice_lines() -> None:
    hf = _check("huggingface.co", rate=1e6, ttfb=0.4)
    cn = _check("hf-mirror.com", rate=3.2e6, ttfb=0.1, region="cn")
    assert advise(_report(hf, cn)) == [
        "hf-mirror.com answers 3x faster than huggingface.co from here (3.1 MiB/s vs 976.6 KiB/s): "
        "use --region cn"
    ]
    # without throughput samples, time to first byte decides
    lines = advise(_report(_check("a", ttfb=0.9), _check("b", ttfb=0.1)))
    assert lines and lines[0].startswith("b answers 9x faster than a")
    r = _report(
        disk=DiskCheck("/data", 4 * 10**9, 19 * 10**9),
        clock_skew=-3600.0,
        proxies={"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost"},
        stores=(StoreCheck("Ollama store", "/o", True, False, "no write permission on /o"),),
        torrent=TorrentCheck("0.0.0.0:6881", 6881, False, True, True, False, "TCP: Address already in use"),
    )
    text = "\n".join(advise(r))
    assert "only 3.7 GiB free in /data for a 17.7 GiB model" in text
    assert "-3600 s off" in text
    assert "HTTPS_PROXY=http://proxy:3128 is set" in text and "NO_PROXY" not in text
    assert "cannot write to the Ollama store /o" in text and "OLLAMA_MODELS" in text
    assert "BitTorrent cannot listen on 0.0.0.0:6881" in text
    # nothing answering at all
    dead = advise(
        _report(_check("x", "dns-failed", error="cannot resolve x"), _check("y", "timeout", error="t"))
    )
    assert dead[0].startswith("no mirror answered")


def test_torrent_port_in_use_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t = check_torrent(f"127.0.0.1:{port}", lsd=True, dht=False)
        assert not t.tcp_ok and "in use" in t.detail.lower()
    with contextlib.suppress(OSError):
        assert check_torrent("127.0.0.1:0", lsd=False, dht=False).tcp_ok
