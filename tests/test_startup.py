"""Start-up cost of ``dsmirror pull``: what a plain HTTP pull imports, and one TLS context per process.

``import dsmirror`` loads its public names on first use, the command modules import the code of
other commands (doctor, bundles, seeding, the registries' clients, libtorrent) inside those
commands, and every HTTP client shares one verifying SSL context instead of loading the trust
store for each source.
"""

from __future__ import annotations

import importlib
import json
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror._fetch import http as _sources
from dsmirror._fetch.http import HttpSource, shared_ssl_context
from dsmirror._formats.catalog import plain_url_for
from dsmirror._schedule.info import SourceInfo
from dsmirror.testing import MirrorServer

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10

# Modules a pull of a manifest over HTTP mirrors with --no-p2p never needs.
OPTIONAL = (
    "libtorrent",
    "dsmirror._fetch.swarm.session",
    "dsmirror._fetch.swarm.resume",
    "dsmirror._fetch.swarm.source",
    "dsmirror._fetch.swarm.only",
    "dsmirror._share",
    "dsmirror._resolve.swarm",
    "dsmirror._fetch.swarm.torrent",
    "dsmirror._doctor",
    "dsmirror._bundle",
    "dsmirror._install",
    "dsmirror._resolve.registries",
    "dsmirror._formats.metalink",
    "dsmirror._formats.signature",
    "dsmirror._verify.signature",
    "dsmirror._resolve.signature",
    "model_signing",
    "sigstore",
    "dsmirror._demo",
    "dsmirror._serve",
    "dsmirror.testing",
    "huggingface_hub",
    "aiohttp",
)


def _optional(loaded: set[str]) -> set[str]:
    return {m for m in loaded if any(m == o or m.startswith(o + ".") for o in OPTIONAL)}


def _loaded_after(
    args: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``dsmirror ARGS`` in a subprocess; return it and the modules loaded when it exited."""
    out = cwd / "modules.json"
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
        "sys.argv[0] = 'dsmirror'\n"
        "from dsmirror.cli import main\n"
        "main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    return r, set(json.loads(out.read_text()))


def test_every_public_name_is_reachable_and_listed() -> None:
    assert "__version__" in dsmirror.__all__
    for name in dsmirror.__all__:
        assert getattr(dsmirror, name) is not None, name
        assert name in dir(dsmirror), name
    # The names are the submodules' own objects, not copies.
    assert dsmirror.pull is importlib.import_module("dsmirror._pull").pull
    assert dsmirror.HttpSource is HttpSource
    ns: dict[str, Any] = {}
    exec("from dsmirror import *", ns)
    assert set(dsmirror.__all__) <= set(ns)
    with pytest.raises(AttributeError):
        dsmirror.no_such_name  # noqa: B018


def test_import_dsmirror_loads_no_submodule() -> None:
    code = "import sys, dsmirror; print(sorted(m for m in sys.modules if m.startswith('dsmirror.')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"


def test_pull_help_loads_no_optional_module(cli_env: dict[str, str], tmp_path: Path) -> None:
    r, loaded = _loaded_after(["pull", "--help"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--no-p2p" in r.stdout
    assert not _optional(loaded)


def test_http_pull_without_p2p_loads_no_optional_module(
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    model = make_model({"weights.bin": 200 * KiB + 3, "config.json": 99}, piece_size=64 * KiB)
    catalog = catalog_file(start_mirrors(model.root, 2))
    dest = tmp_path / "dest"
    args = ["pull", str(model.manifest_path), "--no-default-catalog", "--mirrors", str(catalog)]
    args += ["--dest", str(dest), "--json", "--no-reuse", "--no-p2p", "--no-lsd", "--no-dht"]
    r, loaded = _loaded_after(args, cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["event"] == "PullFinished"
    model.assert_identical(dest)
    assert not _optional(loaded)


def _info(name: str) -> SourceInfo:
    return SourceInfo(name=name, kind="http", host=f"{name}.example")


def test_http_sources_share_one_verifying_ssl_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(_sources, "_ssl_contexts", {})
    made: list[ssl.SSLContext] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        ctx = real(*args, **kwargs)
        made.append(ctx)
        return ctx

    monkeypatch.setattr(ssl, "create_default_context", counting)
    sources = [HttpSource(_info(f"m{i}"), plain_url_for(f"http://m{i}.example/")) for i in range(3)]
    sources.append(HttpSource(_info("tls"), plain_url_for("https://tls.example/")))
    try:
        assert not made  # made on first use: a pull from plain-http mirrors needs none
        for s in sources:
            assert s._client is s._client  # each source's httpx client, made once
        assert len(made) == 1  # httpx alone makes one per client
        ctx = shared_ssl_context()
        assert ctx is made[0]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.get_ca_certs()  # certifi's bundle, as httpx loads by default
    finally:
        for s in sources:
            s.close()


def test_ssl_cert_file_still_picks_the_trust_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import certifi

    monkeypatch.setattr(_sources, "_ssl_contexts", {})
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    default = shared_ssl_context()
    # One CA out of certifi's bundle: a context made from it trusts exactly that one.
    pem = Path(certifi.where()).read_text()
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"
    cafile = tmp_path / "ca.pem"
    cafile.write_text(first[first.index("-----BEGIN CERTIFICATE-----") :])
    monkeypatch.setenv("SSL_CERT_FILE", str(cafile))
    custom = shared_ssl_context()
    assert custom is not default
    assert len(custom.get_ca_certs()) == 1
    assert shared_ssl_context() is custom
    monkeypatch.delenv("SSL_CERT_FILE")
    assert shared_ssl_context() is default
