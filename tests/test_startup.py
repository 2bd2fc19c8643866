"""Start-up cost of ``dsmirror pull``: what a plain HTTP pull imports, and one TLS context per process.

``import dsmirror`` loads its public names on first use; ``dsmirror.cli`` loads no library layer
(every command imports the library inside the command); a manifest pull imports libtorrent only
when it joins a swarm, and typer's pydantic coercion not at all (``cli._app._PlainCoercion``,
checked here against typer's own); every HTTP client shares one verifying SSL context instead of
loading the trust store for each source. Times are in scripts/bench_startup.py, not here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
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
    # typer converts option values with pydantic TypeAdapters unless dsmirror.cli does it itself
    "pydantic",
    "pydantic_core",
    "typer._adapters",
)
# Nor, until it shows help (typer's rich help uses pygments), httpx's own command line: httpx
# imports it (click, rich.syntax, pygments) unless dsmirror.cli tells it it is absent.
OPTIONAL_UNTIL_HELP = ("pygments", "click", "rich.syntax")

# Nor, for a manifest file from plain-http mirrors (requests through ``dsmirror._fetch.wire``, no
# proxy in the environment), the TLS and general HTTP stack: httpx (with h11, idna), ssl,
# urllib.request (whether a proxy applies is read from the environment without it), http.client,
# email (a date in a Retry-After header): ~60 ms of start-up before the first request.
NOT_FOR_PLAIN_HTTP = (
    "httpx",
    "httpcore",
    "h11",
    "idna",
    "ssl",
    "_ssl",
    "urllib.request",
    "http.client",
    "email",
)

# Nor, for any pull before its first request: the other commands' modules (and what they import:
# json, logging for serve, ...).
_OTHER_COMMANDS = ("bundle", "demo", "doctor", "ls", "manifest", "serve", "sources", "torrent", "verify")
NOT_FOR_PULL = tuple(f"dsmirror.cli._{m}_cmd" for m in _OTHER_COMMANDS)

# What ``from dsmirror.cli import main`` may load of dsmirror: no library layer beyond _core.
CLI_IMPORT_ALLOWED = ("dsmirror", "dsmirror._core", "dsmirror.cli")
# Third-party parts of the pull that ``dsmirror --help`` and the other commands do not need.
NOT_AT_CLI_IMPORT = ("httpx", "httpcore", "h11", "yaml", "rich", "ssl")


def _optional(loaded: set[str], optional: tuple[str, ...] = OPTIONAL) -> set[str]:
    return {m for m in loaded if any(m == o or m.startswith(o + ".") for o in optional)}


def _loaded_after(
    args: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``dsmirror ARGS`` in a subprocess; return it and the modules loaded when it exited."""
    out = cwd / "modules.json"
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: open("
        f"{str(out)!r}, 'w').write(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None))))\n"
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


def test_cli_import_loads_no_library_layer() -> None:
    code = (
        "import json, sys; from dsmirror.cli import main; "
        "print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None)))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(r.stdout))
    ours = {m for m in loaded if m == "dsmirror" or m.startswith("dsmirror.")}
    assert not {m for m in ours if not any(m == a or m.startswith(a + ".") for a in CLI_IMPORT_ALLOWED)}
    assert not _optional(loaded, OPTIONAL + OPTIONAL_UNTIL_HELP + NOT_AT_CLI_IMPORT)


def test_help_lists_every_command(cli_env: dict[str, str], tmp_path: Path) -> None:
    r, loaded = _loaded_after(["--help"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    for command in ("pull", "sources", "seed", "serve", "doctor", "verify", "manifest", "torrent"):
        assert f" {command} " in r.stdout, command
    for command in ("export", "import", "demo", "ls", "rm"):
        assert f" {command} " in r.stdout, command
    # The commands' help comes from their modules, which import the library inside the commands.
    assert not {m for m in loaded if m.startswith("dsmirror.") and not m.startswith(CLI_IMPORT_ALLOWED[1:])}


def test_main_builds_only_the_command_it_runs() -> None:
    import typer.main

    from dsmirror.cli import COMMANDS, _app_for, app

    every = set(typer.main.get_group(app).commands)
    assert {"pull", "seed", "manifest", "torrent", "serve"} <= every
    assert set(COMMANDS) == every  # main imports the module of the command it runs
    assert set(typer.main.get_group(_app_for(["dsmirror", "pull", "x"])).commands) == {"pull"}
    assert set(typer.main.get_group(_app_for(["dsmirror", "manifest", "show"])).commands) == {"manifest"}
    for argv in (["dsmirror"], ["dsmirror", "--help"], ["dsmirror", "--version"], ["dsmirror", "pul"]):
        assert _app_for(argv) is app, argv
    assert set(typer.main.get_group(app).commands) == every  # app itself is left whole


def test_typer_reads_pull_s_signature_without_compiling_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """typer reads a command's signature (twice) when it builds it; string annotations (``from
    __future__ import annotations``) are eval()ed and compile()d then, every option's each time
    (16 ms of a pull's start-up). ``pull``'s are made once, when its function is defined."""
    import builtins

    import typer.utils

    from dsmirror.cli._pull_cmd import pull_cmd

    evaluated: list[object] = []
    real_compile, real_eval = builtins.compile, builtins.eval

    def counting_compile(source: Any, *args: Any, **kwargs: Any) -> Any:
        evaluated.append(source)
        return real_compile(source, *args, **kwargs)

    def counting_eval(source: Any, *args: Any, **kwargs: Any) -> Any:
        evaluated.append(source)
        return real_eval(source, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", counting_compile)
    monkeypatch.setattr(builtins, "eval", counting_eval)
    params = typer.utils.get_params_from_function(pull_cmd)
    monkeypatch.undo()
    assert "no_reuse" in params and len(params) > 30
    assert not evaluated, evaluated[:3]  # some 100 on the old code


def test_pull_help_loads_no_optional_module(cli_env: dict[str, str], tmp_path: Path) -> None:
    r, loaded = _loaded_after(["pull", "--help"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--no-p2p" in r.stdout
    assert not _optional(loaded)


@pytest.mark.parametrize(
    ("sizes", "mirrors", "extra"),
    [
        # --no-p2p: no swarm at all
        pytest.param(
            {"weights.bin": 200 * KiB + 3, "config.json": 99},
            2,
            ["--no-p2p", "--no-lsd", "--no-dht"],
            id="http-pull-without-p2p",
        ),
        # ``pull MANIFEST`` as typed (p2p on, LSD on): no swarm is named, so no libtorrent
        pytest.param(
            {"weights.bin": 150 * KiB + 7, "config.json": 42},
            1,
            ["-x", "2", "--give-up-after", "30"],
            id="manifest-pull-with-p2p-on",
        ),
    ],
)
def test_a_json_pull_loads_no_optional_module(
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    cli_env: dict[str, str],
    tmp_path: Path,
    sizes: dict[str, int],
    mirrors: int,
    extra: list[str],
) -> None:
    model = make_model(sizes, piece_size=64 * KiB)
    catalog = catalog_file(start_mirrors(model.root, mirrors))
    dest = tmp_path / "dest"
    args = ["pull", str(model.manifest_path), "--no-default-catalog", "--mirrors", str(catalog)]
    args += ["--dest", str(dest), "--json", "--no-reuse", *extra]
    r, loaded = _loaded_after(args, cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["event"] == "PullFinished"
    model.assert_identical(dest)
    assert not _optional(loaded, OPTIONAL + OPTIONAL_UNTIL_HELP + ("rich",))  # --json: nothing shown by rich
    assert not _optional(loaded, NOT_FOR_PLAIN_HTTP)


def _at_first_connect(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``dsmirror ARGS`` until it first opens a connection (for a plain-http pull: its first
    request); return the modules loaded then, the garbage collections since the command's code
    started and how many objects were frozen."""
    out = cwd / "first-connect.json"
    code = (
        "import gc, json, os, socket, sys, threading\n"
        "once = threading.Lock()  # the first connection's thread writes; any other waits for the exit\n"
        "before = sum(s['collections'] for s in gc.get_stats())  # the interpreter's own start\n"
        "def first_connect(self, *args):\n"
        "    once.acquire()\n"
        "    state = {\n"
        "        'modules': sorted(m for m, v in dict(sys.modules).items() if v is not None),\n"
        "        'collections': sum(s['collections'] for s in gc.get_stats()) - before,\n"
        "        'frozen': gc.get_freeze_count(),\n"
        "    }\n"
        f"    with open({str(out)!r}, 'w') as f:\n"
        "        json.dump(state, f)\n"
        "    os._exit(0)\n"
        "socket.socket.connect = first_connect\n"
        "sys.argv[0] = 'dsmirror'\n"
        "from dsmirror.cli import main\n"
        "main()\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and out.exists(), r.stderr
    state: dict[str, Any] = json.loads(out.read_text())
    return state


def test_a_pull_before_its_first_request(
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """From exec to its first request (start-up: bench_mirrors counts it), ``dsmirror pull MANIFEST
    --no-reuse`` from a plain-http mirror loads nothing it does not need yet, and does not run
    the garbage collector over what the imports made (paused, then frozen)."""
    model = make_model({"weights.bin": 100 * KiB + 1}, piece_size=64 * KiB)
    catalog = catalog_file(start_mirrors(model.root, 1))
    args = ["pull", str(model.manifest_path), "--no-default-catalog", "--mirrors", str(catalog)]
    args += ["--dest", str(tmp_path / "dest"), "--json", "--no-reuse", "--no-p2p", "--no-lsd", "--no-dht"]
    state = _at_first_connect(args, cli_env, tmp_path)
    loaded = set(state["modules"])
    assert "dsmirror._journal.store" in loaded  # it got as far as the store
    assert not _optional(loaded, OPTIONAL + NOT_FOR_PLAIN_HTTP)
    # Not yet: local copies (--no-reuse; recording the manifest comes after the pieces), Ollama
    # names (no ollama:// REF, no alias), the idna codec (getaddrinfo of an ASCII host name).
    assert not _optional(loaded, ("dsmirror._fetch.reuse", "dsmirror._formats.ollama", "encodings.idna"))
    assert not _optional(loaded, NOT_FOR_PULL)
    # Some 40 collections (13 ms) on the old code; a few after the freeze here.
    assert state["collections"] <= 5, state["collections"]
    assert state["frozen"] > 20_000


def test_a_swarm_pull_before_its_first_request(
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A pull that joins its manifest's swarm (bench_lan's hosts: ``pull MANIFEST --seed``, the
    manifest recording info-hashes) has its swarm ready before its mirrors' first request; by then
    it loads what a manifest pull with a swarm needs, not the pull from peers alone or the install."""
    from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes

    model = make_model({"weights.bin": 100 * KiB + 1}, piece_size=64 * KiB)
    manifest = tmp_path / "shared.json"
    with_torrent_hashes(model.manifest, [create_torrent(model.manifest, model.root)]).write(manifest)
    catalog = catalog_file(start_mirrors(model.root, 1))
    args = ["pull", str(manifest), "--no-default-catalog", "--mirrors", str(catalog), "--seed"]
    args += ["--dest", str(tmp_path / "dest"), "--json", "--no-reuse", "--listen", "127.0.0.1:0", "--no-lsd"]
    loaded = set(_at_first_connect(args, cli_env, tmp_path)["modules"])
    assert {"libtorrent", "dsmirror._fetch.swarm.source", "dsmirror._journal.store"} <= loaded
    assert not _optional(loaded, NOT_FOR_PULL)
    # A magnet or .torrent no manifest describes (from peers alone), and the install layer it loads.
    assert not _optional(loaded, ("dsmirror._fetch.swarm.only", "dsmirror._install"))
    # Hashing files (the derived torrent reads none; seeding checks files after the pull).
    assert not _optional(loaded, ("dsmirror._verify.tree", "dsmirror._verify.digest", "concurrent.futures"))


def test_may_join_swarm_agrees_with_attach_swarm(make_model: Callable[..., Any], tmp_path: Path) -> None:
    """Whenever ``attach_swarm`` adds a swarm, ``may_join_swarm`` (which spares libtorrent) said so."""
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes
    from dsmirror._formats.catalog import parse_catalog
    from dsmirror._resolve.plan import PullOptions, PullPlan
    from dsmirror._resolve.ref import parse_ref
    from dsmirror._resolve.resolve import may_join_swarm
    from dsmirror._resolve.swarm import attach_swarm

    model = make_model({"weights.bin": 130 * KiB + 5}, piece_size=64 * KiB)
    torrent = create_torrent(model.manifest, model.root)
    torrent_path = tmp_path / "m.torrent"
    torrent.write(torrent_path)
    recorded = with_torrent_hashes(model.manifest, [torrent])
    assert recorded.torrent and not model.manifest.torrent
    magnet = f"magnet:?xt=urn:btih:{torrent.btih}"
    catalog = parse_catalog(
        "version: 1\nmirrors:\nmodels:\n"
        f"  with-magnet: {{manifest: {json.dumps(str(model.manifest_path))}, magnet: {json.dumps(magnet)}}}\n"
        f"  plain: {{manifest: {json.dumps(str(model.manifest_path))}}}\n",
        "test",
    )
    refs = [parse_ref(str(model.manifest_path), aliases=set(catalog.models))]
    refs += [parse_ref(a, aliases=set(catalog.models)) for a in ("with-magnet", "plain")]
    assert [r.kind for r in refs] == ["manifest-file", "alias", "alias"]
    seen: dict[bool, int] = {True: 0, False: 0}
    for manifest in (model.manifest, recorded):
        for ref in refs:
            for prefer in ("auto", "p2p"):
                for given in (None, torrent_path):
                    for enabled in (True, False):
                        swarm = SwarmConfig(enabled=enabled, listen="127.0.0.1:0", lsd=False, torrent=given)
                        opts = PullOptions(dest=tmp_path / "dest", prefer=prefer, swarm=swarm)
                        plan = PullPlan(manifest, [], tmp_path / "dest")
                        may = may_join_swarm(plan, ref, catalog, opts)
                        joined = attach_swarm(dataclasses.replace(plan, swarms=[]), ref, catalog, opts)
                        for sw in joined.swarms:
                            sw.close()
                        case = (bool(manifest.torrent), ref.text, prefer, given, enabled)
                        assert may or not joined.swarms, case
                        seen[bool(joined.swarms)] += 1
    assert seen[True] and seen[False]
    # The common case, a manifest as ``manifest create`` writes it pulled as typed: no swarm.
    plan = PullPlan(model.manifest, [], tmp_path / "dest")
    assert not may_join_swarm(plan, refs[0], catalog, PullOptions(swarm=SwarmConfig()))


_SAMPLES: dict[Any, tuple[Any, ...]] = {
    str: ("x", "", "hf://org/repo", " spaced ", 7),
    int: ("0", "1", "64", "65", "-1", "007", "+5", " 5", "abc", "1e3", "9" * 25, 5, 0, True, 2.0),
    float: ("0", "0.1", "0.05", "1.5", "-0", "1e3", "inf", "nan", "abc", "300", "300.01", 120.0, 15, False),
    bool: (True, False, "yes"),
}


def _outcome(coercion: Any, value: Any, param: Any, ctx: Any) -> tuple[Any, ...]:
    from typer._click.exceptions import BadParameter

    try:
        v = coercion.coerce(value, param=param, ctx=ctx)
    except BadParameter as exc:
        return ("error", exc.message)
    return ("ok", repr(v), type(v), tuple(type(x) for x in v) if isinstance(v, (list, tuple)) else None)


def test_plain_coercion_gives_what_typer_gives(tmp_path: Path) -> None:
    """Every option of every command, well-formed and malformed values: the same value (and type)
    or the same error as typer's pydantic coercion."""
    import typer.main
    from typer._click import Context
    from typer._click.exceptions import BadParameter
    from typer._coercion import build_runtime_param

    from dsmirror.cli import app
    from dsmirror.cli._app import _PlainCoercion

    (tmp_path / "file").write_text("x")
    paths = (str(tmp_path), str(tmp_path / "file"), str(tmp_path / "missing"), "rel/x", "", "-", tmp_path)
    samples = _SAMPLES | {Path: paths}
    commands = [typer.main.get_group(app)]
    checked: dict[Any, int] = {}
    while commands:
        command = commands.pop()
        commands += getattr(command, "commands", {}).values()
        ctx = Context(command)
        for param in [*command.params, command.get_help_option(ctx)]:
            if not _PlainCoercion.applies(param):
                continue
            desc = param.type_descriptor
            plain, typer_own = _PlainCoercion(param), build_runtime_param(desc)
            element = desc.annotation.__args__[0] if desc.is_list else desc.annotation
            values: list[Any] = [None, *samples[element]]
            if desc.is_list:
                values = [
                    None,
                    (),
                    tuple(samples[element][:2]),
                    [samples[element][0]],
                    tuple(samples[element]),
                ]
            for value in values:
                mine, theirs = _outcome(plain, value, param, ctx), _outcome(typer_own, value, param, ctx)
                assert mine == theirs, (command.name, param.name, value)
            checked[element] = checked.get(element, 0) + 1
    assert set(checked) == {str, int, float, bool, Path}, checked
    assert sum(checked.values()) > 40, checked
    assert BadParameter  # the errors compared above are typer's own


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


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NO_PROXY": "*", "no_proxy": "*"},
        {"https_proxy": "http://p.example:3128"},
        {"http_proxy": "http://p.example:3128"},
        {"HTTP_PROXY": "http://p.example:3128"},
        {"Http_Proxy": "http://p.example:3128"},
        {"ALL_PROXY": "socks5://p.example:1080"},
        {"http_proxy": ""},
        {"HTTP_PROXY": "http://p.example:3128", "http_proxy": ""},
        {"HTTP_PROXY": "http://p.example:3128", "REQUEST_METHOD": "GET"},
        {"xhttp_proxy": "http://p.example:3128", "ftp_proxy": "http://p.example:3128"},
    ],
)
def test_the_proxy_check_without_urllib_agrees_with_getproxies(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """``_may_proxy_http`` spares urllib.request's import, and says what ``getproxies`` says."""
    from urllib.request import getproxies

    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    proxies = getproxies()
    assert _sources._may_proxy_http() == ("http" in proxies or "all" in proxies)
