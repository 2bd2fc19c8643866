"""Every command line README.md shows is exercised here, so the README and the code cannot drift apart.

The commands are read from README.md (and docs/offline.md, the details it links to; those checks
are marked slow) when the tests are collected: each line of their ``bash`` blocks
(split at ``&&``, comments dropped) and each inline code span of the prose that runs a program
(``dsmirror ...``, ``HF_ENDPOINT=... hf download ...``, ``ollama pull ...``, ...). ``CHECKS`` maps
every one of them, verbatim, to the function that exercises it; a command README shows without an
entry, or an entry README no longer shows, fails ``test_every_readme_command_is_checked``.

Most commands run for real, as README writes them, in subprocesses whose HOME and XDG folders are
inside the test's tmp folder, against loopback only:

- the "registries" (Hugging Face, Ollama) are one ``dsmirror serve`` process serving an HF cache and
  an Ollama store this file writes by hand in the clients' own layouts;
- the "office NAS" (a mirror of kind http) is a ``dsmirror.testing.MirrorServer`` on 127.0.0.2;
- the catalog this file writes names only those, and aliases ``deepseek-r1:7b`` to them; every
  command that reads a catalog gets ``--no-default-catalog --mirrors <it>`` appended, every command
  that can join a BitTorrent swarm ``--no-lsd --listen 127.0.0.1:0``, and nothing else is changed
  except placeholders (``<hex>``, ``...``, ``https://example.org/``, ``192.168.1.20:6881``,
  ``thatbox:8080``) which a check replaces with the real loopback values;
- a ``sitecustomize`` put on the subprocesses' PYTHONPATH refuses (and records) any connection or
  name lookup beyond loopback, so a command that would reach a real registry fails its check.

Commands that cannot run here are checked for what can be checked (``pip install`` lines: the
package metadata they rely on; ``ollama pull``: the exact requests Ollama sends, made with httpx;
``ruff``/``mypy``: their configuration and that the test extras install them) and say so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

import dsmirror
from dsmirror.testing import MirrorServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The documents whose command lines are exercised: README and the details it links to.
SHOWN_IN = (README, ROOT / "docs" / "offline.md")

KiB = 1 << 10
MiB = 1 << 20
REPO_ID = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
FOLDER = "DeepSeek-R1-Distill-Qwen-7B"  # the folder a pull of the alias or the repo creates
HF_REPO_DIR = "models--deepseek-ai--DeepSeek-R1-Distill-Qwen-7B"
OLLAMA_MANIFEST = "manifests/registry.ollama.ai/library/deepseek-r1/7b"
SERVE_LINE = "dsmirror serve --host 0.0.0.0 --port 8080 --upstream"
COMMIT = "5ea5d3f1e8b0c4a0d2f6e9c8b7a6f5e4d3c2b1a0"
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
PROGRAMS = ("dsmirror", "hf", "ollama", "pip", "python", "sha256sum", "ruff", "mypy")
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()"]
HF_CLI = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'hf'; from huggingface_hub.cli.hf import main; main()",
]


# -- reading the commands out of README.md -----------------------------------------------------------
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")


def _strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#(?:\s|$)", line, maxsplit=1)[0].strip()


def _without_optional_parts(command: str) -> str:
    """``cmd --a [--b x|y]`` -> ``cmd --a``: the check spells the optional parts out."""
    return re.sub(r"\s\[[^\]]*\]", "", command)


def _runs_a_program(span: str) -> bool:
    words = [w for w in span.split() if not _ENV_ASSIGNMENT.fullmatch(w)]
    return bool(words) and not words[0].startswith("-") and any(w in PROGRAMS for w in words)


def readme_commands(text: str | None = None) -> list[str]:
    """The command lines README.md shows, in order, each once, whitespace collapsed."""
    text = README.read_text() if text is None else text
    found: list[str] = []
    for lang, body in _FENCE.findall(text):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for raw in body.splitlines():
            line = _strip_comment(raw)
            if line:
                found += [part.strip() for part in line.split(" && ")]
    prose = _FENCE.sub("", text)
    for span in re.findall(r"`([^`]+)`", prose):  # a span may wrap onto the next line
        if _runs_a_program(span):
            # A chain of tools in prose is several commands; a pipe is one (its parts need each other).
            found += [part.strip() for part in span.split(" && ")]
    out: list[str] = []
    for cmd in (" ".join(c.split()) for c in found):
        if cmd not in out:
            out.append(cmd)
    return out


def shown_commands() -> list[tuple[str, str]]:
    """(document, command) for every command line of ``SHOWN_IN``, each command once (first shown)."""
    out: dict[str, str] = {}
    for doc in SHOWN_IN:
        for cmd in readme_commands(doc.read_text()):
            out.setdefault(cmd, str(doc.relative_to(ROOT)))
    return [(doc, cmd) for cmd, doc in out.items()]


def readme_yaml_blocks() -> list[str]:
    return [body for lang, body in _FENCE.findall(README.read_text()) if lang in ("yaml", "yml")]


# -- the table: README command -> how it is exercised ------------------------------------------------
@dataclass(frozen=True)
class Check:
    fn: Callable[[World, str], None]
    how: str  # "run", "static" or "emulated": what the check does with the command
    slow: bool = False


CHECKS: dict[str, Check] = {}


def exercises(*commands: str, how: str = "run", slow: bool = False) -> Callable[..., Any]:
    """Register the decorated function as the check of these README commands (verbatim)."""

    def register(fn: Callable[[World, str], None]) -> Callable[[World, str], None]:
        for cmd in commands:
            assert cmd not in CHECKS, f"two checks for {cmd!r}"
            CHECKS[cmd] = Check(fn, how, slow)
        return fn

    return register


# -- a loopback world for the commands ---------------------------------------------------------------
_GUARD = '''\
"""Installed by tests/test_readme.py: a README command may only talk to loopback."""
import ipaddress
import os
import socket

_LOG = os.environ.get("DSMIRROR_TEST_NET_LOG")


def _local(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%")[0]
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _refuse(what):
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(f"{os.getpid()}: {what}\\n")
    raise ConnectionRefusedError(f"test_readme: only loopback may be reached, not {what}")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse(f"connect {address!r}")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse(f"connect {address!r}")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        _refuse(f"resolve {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_cache(cache: Path, repo_id: str, commit: str, files: Mapping[str, bytes]) -> None:
    """An HF cache the way huggingface_hub writes it (etag: sha256 of LFS files, git blob sha1 else)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    for rel, data in files.items():
        etag = _sha256(data) if len(data) >= MiB else _git_blob_sha1(data)
        (repo / "blobs" / etag).write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))


def write_ollama_store(models: Path, name: str, tag: str, layers: Sequence[tuple[str, bytes]]) -> bytes:
    """An Ollama store holding ``library/<name>:<tag>``; returns the manifest's bytes."""
    (models / "blobs").mkdir(parents=True)

    def blob(media_type: str, data: bytes) -> dict[str, Any]:
        (models / "blobs" / f"sha256-{_sha256(data)}").write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{_sha256(data)}", "size": len(data)}

    config = blob("application/vnd.docker.container.image.v1+json", b'{"model_format":"gguf"}')
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_V2, "config": config}
    doc["layers"] = [blob(media_type, data) for media_type, data in layers]
    raw = json.dumps(doc).encode()
    path = models / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    return raw


def same_files(folder: Path, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, f"{folder / rel} differs"


class Background:
    """A long-running command (``serve``, ``seed``); its output lines are read in threads."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next_line(self, timeout: float) -> str | None:
        """The next line of stdout; None at its end (or if none came within ``timeout``)."""
        if self._eof:
            return None
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            self._eof = True
        else:
            self.stdout.append(line)
        return line

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def wait_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first line of stdout matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and (line := self._next_line(left)) is not None:
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r} from {self.argv[3:]}: {self.output()}")

    def output(self) -> str:
        return "".join(self.stdout)[-2000:] + "".join(self.stderr)[-3000:]

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM (what Ctrl-C or a service manager sends), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.argv[3:]} did not stop on SIGTERM: {self.output()}") from None
        while self._next_line(timeout=10) is not None:
            pass
        return rc


def _parse_cli(argv: Sequence[str]) -> Any:
    """The typer/click command ``dsmirror ARGV`` names, with ARGV parsed by it (nothing is run)."""
    from typer.main import get_command

    from dsmirror.cli import app

    cmd: Any = get_command(app)
    parent, name, args = None, "dsmirror", list(argv)
    while hasattr(cmd, "resolve_command"):  # a group: dsmirror, dsmirror manifest, ...
        ctx = cmd.context_class(cmd, info_name=name, parent=parent)
        name, cmd, args = cmd.resolve_command(ctx, args)
        parent = ctx
    cmd.make_context(name, args, parent=parent)
    return cmd


def _options(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


class World:
    """Loopback registries and mirrors, a catalog naming them, and the folders the commands share.

    The artifacts one command needs from another (the pulled folder ``manifest create`` reads, the
    manifest ``verify`` checks, ...) are made on demand by the ``need_*`` methods, so every check
    also runs alone (``pytest -k``).
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.work = tmp / "work"  # where README's relative paths live
        self.work.mkdir()
        self.home = tmp / "home"
        self.net_log = tmp / "net.log"
        guard = tmp / "guard"
        guard.mkdir()
        (guard / "sitecustomize.py").write_text(_GUARD)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _PROXY_VARS and not k.startswith(("HF_", "HUGGING", "OLLAMA", "XDG_", "DSMIRROR"))
        }
        for var in ("COLUMNS", "LINES", "FORCE_COLOR", "PYTEST_CURRENT_TEST"):
            env.pop(var, None)
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_STATE_HOME=str(self.home / ".local" / "state"),
            XDG_CACHE_HOME=str(self.home / ".cache"),
            HF_ENDPOINT=DEAD,  # an HF client the test did not point anywhere reaches nothing
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_COLOR="1",
            COLUMNS="250",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])]),
            DSMIRROR_TEST_NET_LOG=str(self.net_log),
        )
        self.env = env
        self.hf_cache = self.home / ".cache" / "huggingface" / "hub"
        self.ollama_models = self.home / ".ollama" / "models"
        self._started: list[Background] = []
        self._servers: list[MirrorServer] = []
        self._made: dict[str, Any] = {}

    # -- what is published, and where --------------------------------------------------------------
    def publish(self) -> None:
        """Start the registries and the NAS; write the catalog naming them."""
        rnd = random.Random(7)
        self.files = {
            "config.json": b'{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 8}\n',
            "model.safetensors": rnd.randbytes(3 * MiB + 5),  # an LFS file: its etag is its sha256
            "tokenizer.json": rnd.randbytes(5000),  # a git file: its etag is the git blob sha1
        }
        self.ollama_layers = [
            ("application/vnd.ollama.image.model", rnd.randbytes(2 * MiB + 3)),
            ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
            ("application/vnd.ollama.image.params", b'{"stop": ["<|end_of_sentence|>"]}'),
        ]
        upstream = self.tmp / "upstream"
        write_hf_cache(upstream / "hf", REPO_ID, COMMIT, self.files)
        self.ollama_manifest = write_ollama_store(
            upstream / "ollama", "deepseek-r1", "7b", self.ollama_layers
        )
        no_mirrors = self.tmp / "no-mirrors.yaml"
        no_mirrors.write_text("version: 1\n")
        self.registry = self.start(
            ["serve", "--port", "0", "--hf-cache", str(upstream / "hf"), "--ollama-models",
             str(upstream / "ollama"), "--quiet", "--mirrors", str(no_mirrors)],
            cwd=self.tmp, env=self.machine("registry-home"),
        )  # fmt: skip
        self.registry_url = self.registry.wait_line(r"listening on (\S+)").group(1)
        # The office NAS of README's catalog example: its files under /models/deepseek-r1-7b/.
        nas_root = self.tmp / "nas"
        for rel, data in self.files.items():
            (nas_root / "models" / "deepseek-r1-7b" / rel).parent.mkdir(parents=True, exist_ok=True)
            (nas_root / "models" / "deepseek-r1-7b" / rel).write_bytes(data)
        self.nas_root = nas_root
        self.nas = MirrorServer(nas_root, host="127.0.0.2")
        self.nas.start()
        self._servers.append(self.nas)
        (example,) = readme_yaml_blocks()
        self.nas_catalog = example.replace("http://nas.local/", self.nas.url)
        assert self.nas_catalog != example, "README's catalog example no longer names http://nas.local/"
        doc = yaml.safe_load(self.nas_catalog)
        doc["mirrors"] += [
            {"name": "test-hf", "kind": "hf", "url": self.registry_url, "region": "cn"},
            {"name": "test-ollama", "kind": "ollama", "url": self.registry_url, "official": True},
        ]
        doc["models"] = {"deepseek-r1:7b": {"hf": REPO_ID, "ollama": "library/deepseek-r1:7b"}}
        self.catalog = self.tmp / "test-catalog.yaml"
        self.catalog.write_text(yaml.safe_dump(doc, sort_keys=False))

    def close(self) -> None:
        """Stop everything started, whatever fails on the way (nothing may outlive the tests)."""
        for bg in reversed(self._started):
            try:
                bg.stop()
            except Exception:  # did not stop on SIGTERM (then it was killed), or its output broke
                with contextlib.suppress(ProcessLookupError):
                    bg.proc.kill()
                bg.proc.wait(10)
        for server in self._servers:
            with contextlib.suppress(Exception):
                server.stop()

    # -- running commands ----------------------------------------------------------------------------
    def loopback_options(self, argv: Sequence[str]) -> list[str]:
        """What keeps ``dsmirror ARGV`` on loopback: the test's catalog only, no LAN discovery."""
        opts = _options(_parse_cli(argv))
        extra: list[str] = []
        if "--no-default-catalog" in opts and "--no-default-catalog" not in argv:
            extra.append("--no-default-catalog")
        if "--mirrors" in opts and "--mirrors" not in argv:
            extra += ["--mirrors", str(self.catalog)]
        if "--no-lsd" in opts:
            extra.append("--no-lsd")
            if "--listen" not in argv:
                extra += ["--listen", "127.0.0.1:0"]
        return extra

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**self.env, **(env or {})}

    def _check_net_log(self, what: object) -> None:
        if self.net_log.exists() and (log := self.net_log.read_text()):
            self.net_log.unlink()
            raise AssertionError(f"{what} tried to leave loopback:\n{log}")

    def cli(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        rc: int = 0,
        timeout: float = 120,
        stdin: IO[bytes] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``dsmirror ARGV`` (plus the loopback options) to completion; expect exit code ``rc``."""
        full = [*argv, *self.loopback_options(argv)]
        return self.run_program(
            [*CLI, *full], cwd=cwd, env=env, rc=rc, timeout=timeout, label=full, stdin=stdin
        )

    def run_program(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        rc: int = 0,
        timeout: float = 120,
        label: object = None,
        stdin: IO[bytes] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            list(argv),
            env=self._env(env),
            cwd=cwd or self.work,
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self._check_net_log(label or argv)
        assert r.returncode == rc, (
            f"{label or argv}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        )
        return r

    def start(
        self, argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> Background:
        """Start ``dsmirror ARGV`` (plus the loopback options) in the background."""
        full = [*argv, *self.loopback_options(argv)]
        bg = Background([*CLI, *full], self._env(env), cwd or self.work)
        self._started.append(bg)
        return bg

    def stop(self, bg: Background) -> int:
        rc = bg.stop()
        self._check_net_log(bg.argv[3:])
        return rc

    def readme(
        self,
        command: str,
        subst: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        rc: int = 0,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run a README command as written: placeholders in ``subst`` replaced, loopback options added."""
        env_vars, argv = self.split(command, subst)
        if argv[0] == "dsmirror":
            return self.cli(argv[1:], cwd=cwd, env={**env_vars, **(env or {})}, rc=rc, timeout=timeout)
        program = {"hf": HF_CLI}.get(argv[0], [argv[0]])
        return self.run_program(
            [*program, *argv[1:]], cwd=cwd, env={**env_vars, **(env or {})}, rc=rc, timeout=timeout
        )

    @staticmethod
    def split(command: str, subst: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
        """(leading VAR=value assignments, argv) of ``command``, with ``subst`` applied to each word."""
        words = shlex.split(command)
        subst = dict(subst or {})
        unused = set(subst) - set(words)
        assert not unused, f"{command!r} no longer contains {sorted(unused)}: update its check"
        words = [subst.get(w, w) for w in words]
        env: dict[str, str] = {}
        while words and _ENV_ASSIGNMENT.fullmatch(words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        return env, words

    # -- artifacts one command needs from another ----------------------------------------------------
    def made(self, key: str, value: Any = None) -> None:
        """A check made what ``need_<key>`` would make (the same command), so it is not made again."""
        self._made.setdefault(key, value)

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def need_folder(self) -> Path:
        """``./DeepSeek-R1-Distill-Qwen-7B``: the model's files (what a pull of the alias makes)."""

        def make() -> Path:
            folder = self.work / FOLDER
            if not folder.exists():
                self.cli(["pull", f"hf://{REPO_ID}", "--dest", str(folder)])
            return folder

        return self._once("folder", make)  # type: ignore[no-any-return]

    def need_manifest(self) -> Path:
        """``./r1-7b.manifest.json`` (8 MiB pieces), also served by the NAS next to the files."""

        def make() -> Path:
            path = self.work / "r1-7b.manifest.json"
            if not path.exists():
                folder = self.need_folder()
                self.cli(["manifest", "create", str(folder), "-o", str(path), "--piece-size", "8MiB"])
            shutil.copy(path, self.nas_root / "r1-7b.manifest.json")
            return path

        return self._once("manifest", make)  # type: ignore[no-any-return]

    def manifest(self) -> dsmirror.Manifest:
        return dsmirror.load_manifest(self.need_manifest())

    def need_my_mirrors(self) -> Path:
        """``./my-mirrors.yaml``: README's catalog example, its NAS on loopback."""

        def make() -> Path:
            path = self.work / "my-mirrors.yaml"
            path.write_text(self.nas_catalog)
            return path

        return self._once("my-mirrors", make)  # type: ignore[no-any-return]

    def need_models_r1(self) -> Path:
        """``./models/r1-7b``: the model pulled with its manifest."""

        def make() -> Path:
            dest = self.work / "models" / "r1-7b"
            if not dest.exists():
                self.cli(["pull", str(self.need_manifest()), "--dest", str(dest)])
            return dest

        return self._once("models-r1", make)  # type: ignore[no-any-return]

    def need_ollama_model(self) -> None:
        """``deepseek-r1:7b`` in the Ollama store of the test's HOME."""
        self._once("ollama", lambda: self.cli(["pull", "deepseek-r1:7b", "--format", "ollama"]))

    def need_hf_model(self) -> None:
        """The repo in the Hugging Face cache of the test's HOME."""
        self._once("hf", lambda: self.cli(["pull", f"hf://{REPO_ID}", "--format", "hf"]))

    def need_torrent(self) -> Path:
        """``./r1-7b.torrent`` of the manifest's pieces."""

        def make() -> Path:
            path = self.work / "r1-7b.torrent"
            self.cli(
                ["torrent", "create", str(self.need_manifest()), str(self.need_models_r1()), "-o", str(path)]
            )
            return path

        return self._once("torrent", make)  # type: ignore[no-any-return]

    def need_seeder(self) -> tuple[str, str]:
        """A ``dsmirror seed`` of ``./r1-7b.torrent`` on 127.0.0.1: (its magnet link, HOST:PORT)."""

        def make() -> tuple[str, str]:
            torrent, folder = self.need_torrent(), self.need_models_r1()
            bg = self.start(["seed", str(torrent), "--from", str(folder), "--json"])
            started = json.loads(bg.wait_line(r'^\{.*"SeedingStarted".*$').group(0))
            return started["magnets"][0], f"127.0.0.1:{started['listen_port']}"

        return self._once("seeder", make)  # type: ignore[no-any-return]

    def need_box(self, command: str) -> tuple[str, Background]:
        """README's office box, ``dsmirror serve ... --upstream``, with empty stores of its own."""

        def make() -> tuple[str, Background]:
            _, argv = self.split(command, {"0.0.0.0": "127.0.0.1", "8080": "0"})
            bg = self.start(argv[1:], env=self.machine("box-home"))
            return bg.wait_line(r"listening on (\S+)").group(1), bg

        return self._once("box", make)  # type: ignore[no-any-return]

    def need_bundle(self, model: str) -> tuple[Path, str]:
        """``dsmirror export MODEL`` into a tar: (its path, its manifest sha256)."""

        def make() -> tuple[Path, str]:
            if model.startswith("ollama://"):
                self.need_ollama_model()
            elif model.startswith("hf://"):
                self.need_hf_model()
            out = self.tmp / "bundles" / (re.sub(r"[^a-z0-9]+", "-", model) + ".tar")
            out.parent.mkdir(exist_ok=True)
            r = self.cli(["export", model, "-o", str(out)])
            return out, _printed_sha256(r.stdout)

        return self._once(f"bundle {model}", make)  # type: ignore[no-any-return]

    def machine(self, name: str) -> dict[str, str]:
        """The environment of another machine: its own HOME, config, state and caches."""
        home = self.fresh(name)
        return {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".local" / "state"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }

    def fresh(self, name: str) -> Path:
        """An empty folder below the test's tmp folder."""
        path = self.tmp / name
        path.mkdir(parents=True)
        return path


def _printed_sha256(out: str) -> str:
    m = re.search(r"manifest sha256 ([0-9a-f]{64})", out)
    assert m, out
    return m.group(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("readme"))
    try:
        w.publish()
        yield w
    finally:
        w.close()


# -- the checks, in README's order ------------------------------------------------------------------
@exercises("pip install -e .", how="static")
def installs_the_command(w: World, command: str) -> None:
    """Not run (it would reinstall this checkout): the ``dsmirror`` script README uses next exists."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["dsmirror"] == "dsmirror.cli:main"


@exercises("dsmirror demo", slow=True)
def demo(w: World, command: str) -> None:
    r = w.readme(command, timeout=240)
    assert "verified again from disk: every file matches the manifest" in r.stdout


@exercises("pip install -e '.[test]'", "python -m pytest -q", how="static")
def the_test_command(w: World, command: str) -> None:
    """Not run (this is that suite): the extras exist and CI runs README's test command."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]["test"]
    assert any(req.startswith("pytest") for req in extras)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-e '.[test]' && python -m pytest -q" in ci, "CI no longer runs README's test command"


@exercises("dsmirror pull deepseek-r1:7b --format ollama")
def pull_alias_into_ollama_store(w: World, command: str) -> None:
    w.readme(command)
    # where `ollama run deepseek-r1:7b` looks, with the registry's bytes
    assert (w.ollama_models / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest
    w.made("ollama")
    for _, data in w.ollama_layers:
        assert (w.ollama_models / "blobs" / f"sha256-{_sha256(data)}").read_bytes() == data


@exercises("dsmirror pull hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --format hf")
def pull_repo_into_hf_cache(w: World, command: str) -> None:
    w.readme(command)
    repo = w.hf_cache / HF_REPO_DIR
    assert (repo / "refs" / "main").read_text() == COMMIT
    same_files(repo / "snapshots" / COMMIT, w.files)
    w.made("hf")


@exercises("dsmirror pull hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B@main --region cn --dest ./r1-7b")
def pull_repo_revision_by_region(w: World, command: str) -> None:
    r = w.readme(command)
    assert f"is commit {COMMIT}" in r.stdout
    same_files(w.work / "r1-7b", w.files)


@exercises("dsmirror pull deepseek-r1:7b --prefer=p2p")
def pull_alias_swarm_first(w: World, command: str) -> None:
    w.readme(command)  # no swarm knows this model: the mirrors provide all of it
    same_files(w.work / FOLDER, w.files)


@exercises("dsmirror manifest create ./DeepSeek-R1-Distill-Qwen-7B -o r1-7b.manifest.json --piece-size 8MiB")
def manifest_create(w: World, command: str) -> None:
    w.need_folder()
    cwd = w.fresh("manifest-create")
    shutil.copytree(w.work / FOLDER, cwd / FOLDER)
    r = w.readme(command, cwd=cwd)
    m = dsmirror.load_manifest(cwd / "r1-7b.manifest.json")
    assert m.piece_size == 8 * MiB
    assert {f.path: f.size for f in m.files} == {rel: len(data) for rel, data in w.files.items()}
    assert m.sha256 in r.stdout


@exercises("dsmirror manifest export r1-7b.manifest.json --meta4 --mirrors my-mirrors.yaml -o r1-7b.meta4")
def manifest_export_meta4(w: World, command: str) -> None:
    w.need_manifest()
    w.need_my_mirrors()
    w.readme(command)
    ns = {"m": "urn:ietf:params:xml:ns:metalink"}
    doc = ET.parse(w.work / "r1-7b.meta4").getroot()
    urls = {f.get("name"): f.findtext("m:url", namespaces=ns) for f in doc.findall("m:file", ns)}
    assert urls == {rel: f"{w.nas.url}models/deepseek-r1-7b/{rel}" for rel in w.files}
    aria2c = shutil.which("aria2c")
    if aria2c is None:
        return  # .ci/run installs aria2; without it the Metalink is checked above only
    out = w.fresh("aria2c")
    w.run_program(
        [aria2c, "--no-conf", "--quiet", "--allow-overwrite=true", "--file-allocation=none",
         "--dir", str(out), str(w.work / "r1-7b.meta4")],
        timeout=60,
    )  # fmt: skip
    same_files(out, w.files)


@exercises("dsmirror pull r1-7b.manifest.json --mirrors my-mirrors.yaml --dest ./models/r1-7b")
def pull_manifest_from_mirrors(w: World, command: str) -> None:
    w.need_manifest()
    w.need_my_mirrors()
    cwd = w.fresh("pull-manifest")
    shutil.copy(w.work / "r1-7b.manifest.json", cwd)
    shutil.copy(w.work / "my-mirrors.yaml", cwd)
    served = w.nas.bytes_served
    # A fresh HOME: no copy of the model on this "machine" to reuse, so the NAS sends every byte.
    w.readme(command, cwd=cwd, env=w.machine("pull-manifest-machine"))
    same_files(cwd / "models" / "r1-7b", w.files)
    assert w.nas.bytes_served - served >= sum(map(len, w.files.values()))


@exercises("dsmirror pull https://example.org/r1-7b.manifest.json --manifest-sha256 <hex> --max-rate 20MB/s")
def pull_manifest_url_pinned(w: World, command: str) -> None:
    sha = w.manifest().sha256
    url = f"{w.nas.url}r1-7b.manifest.json"
    cwd = w.fresh("pull-url")
    w.readme(command, {"https://example.org/r1-7b.manifest.json": url, "<hex>": sha}, cwd=cwd)
    same_files(cwd / FOLDER, w.files)  # the folder is named after the manifest's model
    wrong = w.readme(
        command, {"https://example.org/r1-7b.manifest.json": url, "<hex>": "0" * 64}, cwd=cwd, rc=3
    )
    assert sha in wrong.stderr


@exercises("dsmirror verify r1-7b.manifest.json ./models/r1-7b")
def verify(w: World, command: str) -> None:
    w.need_models_r1()
    r = w.readme(command)
    assert "ok: 3 files" in r.stdout


def _publisher_keys(folder: Path) -> None:
    """``publisher.pem`` and ``publisher.pub.pem`` in ``folder``: what ``openssl ecparam -genkey``
    and ``openssl ec -pubout`` make (an EC P-256 key pair, PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    pem, spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (folder / "publisher.pem").write_bytes(private)
    (folder / "publisher.pub.pem").write_bytes(key.public_key().public_bytes(pem, spki))


@exercises("dsmirror manifest sign ./DeepSeek-R1-Distill-Qwen-7B --key publisher.pem --shards -o model.sig")
def manifest_sign(w: World, command: str) -> None:
    import model_signing

    w.need_folder()
    cwd = w.fresh("manifest-sign")
    shutil.copytree(w.work / FOLDER, cwd / FOLDER)
    _publisher_keys(cwd)
    r = w.readme(command, cwd=cwd)
    assert "3 files signed" in r.stdout
    # model-signing's own verifier accepts it, told the shard size (dsmirror's 8 MiB pieces).
    hashing = model_signing.hashing.Config().use_shard_serialization(shard_size=8 * MiB)
    verifying = model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=cwd / "publisher.pub.pem"
    )
    verifying.set_hashing_config(hashing).verify(cwd / FOLDER, cwd / "model.sig")


@exercises(
    "dsmirror pull model.sig --signature-key publisher.pub.pem "
    "--mirrors my-mirrors.yaml --dest ./signed/r1-7b"
)
def pull_signature(w: World, command: str) -> None:
    w.need_folder()
    w.need_my_mirrors()
    cwd = w.fresh("pull-signature")
    shutil.copy(w.work / "my-mirrors.yaml", cwd)
    _publisher_keys(cwd)
    sign = ["manifest", "sign", str(w.work / FOLDER), "--key", str(cwd / "publisher.pem"), "--shards"]
    w.cli([*sign, "-o", str(cwd / "model.sig")])
    w.readme(command, cwd=cwd, env=w.machine("pull-signature-machine"))
    same_files(cwd / "signed" / "r1-7b", w.files)
    assert (cwd / "signed" / "r1-7b" / "model.sig").read_bytes() == (cwd / "model.sig").read_bytes()
    # Checked against another publisher's key: refused before anything is fetched.
    other = w.fresh("pull-signature-other-key")
    shutil.copy(w.work / "my-mirrors.yaml", other)
    shutil.copy(cwd / "model.sig", other)
    _publisher_keys(other)
    r = w.readme(command, cwd=other, env=w.machine("pull-signature-other-machine"), rc=3)
    assert "Key mismatch" in r.stderr and not (other / "signed").exists()


@exercises("dsmirror pull 'magnet:?xt=urn:btih:...' --peer 192.168.1.20:6881 --dest ./r1-7b", slow=True)
def pull_magnet_from_peers(w: World, command: str) -> None:
    magnet, peer = w.need_seeder()
    cwd = w.fresh("peers")
    w.readme(command, {"magnet:?xt=urn:btih:...": magnet, "192.168.1.20:6881": peer}, cwd=cwd, timeout=180)
    same_files(cwd / "r1-7b", w.files)
    assert list((cwd / "r1-7b" / ".dsmirror" / "torrents").glob("*.torrent")), "no torrent kept to seed"


@exercises("dsmirror pull r1-7b.torrent --dest ./r1-7b", slow=True)
def pull_torrent_from_peers(w: World, command: str) -> None:
    _, peer = w.need_seeder()
    cwd = w.fresh("torrent-pull")
    shutil.copy(w.need_torrent(), cwd)
    _, argv = w.split(command)
    # README's line finds its peers by LSD on a LAN; here the seeder is named.
    w.cli([*argv[1:], "--peer", peer], cwd=cwd, timeout=180)
    same_files(cwd / "r1-7b", w.files)


def _seeds(w: World, command: str, name: str, cwd: Path | None = None) -> None:
    """The command seeds ``name`` (its first line says so) until SIGTERM, then exits 0."""
    _, argv = w.split(command)
    bg = w.start(argv[1:], cwd=cwd)
    line = bg.wait_line(rf"^seeding .*{re.escape(name)}.* on port \d+", timeout=90).group(0)
    assert line.count(name) == 1, line  # one model in two swarms is named once
    rc = w.stop(bg)
    assert rc == 0, bg.output()
    assert "stopped seeding" in "".join(bg.stdout)


@exercises("dsmirror seed deepseek-r1:7b", slow=True)
def seed_ollama_model(w: World, command: str) -> None:
    w.need_ollama_model()
    _seeds(w, command, "deepseek-r1")


@exercises("dsmirror seed hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", slow=True)
def seed_hf_snapshot(w: World, command: str) -> None:
    w.need_hf_model()
    _seeds(w, command, "DeepSeek-R1-Distill-Qwen-7B")


@exercises("dsmirror sources deepseek-r1:7b")
def sources(w: World, command: str) -> None:
    r = w.readme(command)
    assert re.search(r"test-hf\W+hf\W+cn\W.*\bok\b", r.stdout), r.stdout


@exercises("dsmirror doctor deepseek-r1:7b")
def doctor(w: World, command: str) -> None:
    r = w.readme(command)
    for part in ("test-hf", "test-ollama", "proxy variables", "free disk", "Ollama store"):
        assert part in r.stdout, r.stdout


@exercises("dsmirror ls")
def ls(w: World, command: str) -> None:
    w.need_ollama_model()
    w.need_hf_model()
    r = w.readme(command)
    assert re.search(r"ollama\s+deepseek-r1:7b\s.*verified", r.stdout), r.stdout
    assert re.search(rf"hf\s+hf://{REPO_ID}@main\s.*verified", r.stdout), r.stdout


@exercises(SERVE_LINE)
def serve_office_box(w: World, command: str) -> None:
    box, _ = w.need_box(command)  # on 127.0.0.1 and a free port here
    status = httpx.get(f"{box}/dsmirror/status", timeout=10)
    assert status.status_code == 200


@exercises("dsmirror serve", how="static")
def serve_mentioned(w: World, command: str) -> None:
    """A mention in prose (``a `dsmirror serve` box``): the command exists and needs no argument."""
    _parse_cli(w.split(command)[1][1:])


@exercises("HF_ENDPOINT=http://thatbox:8080 hf download deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
def hf_client_through_the_box(w: World, command: str) -> None:
    box, _ = w.need_box(SERVE_LINE)
    client_home = w.fresh("hf-client")
    r = w.readme(
        command, {"HF_ENDPOINT=http://thatbox:8080": f"HF_ENDPOINT={box}"}, env={"HF_HOME": str(client_home)}
    )
    snapshot = client_home / "hub" / HF_REPO_DIR / "snapshots" / COMMIT
    assert str(snapshot) in r.stdout
    same_files(snapshot, w.files)
    # The box had nothing: it pulled the files from the registry (verified) into its own cache.
    box_cache = w.tmp / "box-home" / ".cache" / "huggingface" / "hub"
    same_files(box_cache / HF_REPO_DIR / "snapshots" / COMMIT, w.files)


@exercises("ollama pull thatbox:8080/library/deepseek-r1:7b", how="emulated")
def ollama_client_through_the_box(w: World, command: str) -> None:
    """No ollama binary here: the requests ``ollama pull --insecure`` makes, in its order."""
    box, server = w.need_box(SERVE_LINE)
    _, argv = w.split(command)
    host, _, name = argv[2].partition("/")
    assert host == "thatbox:8080"
    repo, _, tag = name.partition(":")
    with httpx.Client(base_url=box, timeout=60) as client:
        r = client.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": MANIFEST_V2})
        assert r.status_code == 200, r.text + server.output()
        assert r.content == w.ollama_manifest
        doc = r.json()
        for layer in [doc["config"], *doc["layers"]]:
            blob = client.get(f"/v2/{repo}/blobs/{layer['digest']}", follow_redirects=True)
            assert blob.status_code == 200, (layer, blob.text, server.output())
            assert f"sha256:{_sha256(blob.content)}" == layer["digest"]
    # Pulled through and kept (under the host of the registry it came from).
    (kept,) = (w.tmp / "box-home" / ".ollama" / "models" / "manifests").glob("*/library/deepseek-r1/7b")
    assert kept.read_bytes() == w.ollama_manifest


@exercises("dsmirror seed r1-7b.manifest.json --from ./models/r1-7b", slow=True)
def seed_pulled_folder(w: World, command: str) -> None:
    w.need_manifest()
    w.need_models_r1()
    _seeds(w, command, FOLDER)


@exercises("dsmirror export ./models/r1-7b -o r1-7b.tar", "dsmirror export MODEL -o model.tar")
def export(w: World, command: str) -> None:
    w.need_models_r1()
    if "MODEL" in shlex.split(command):
        w.need_ollama_model()
        model = "ollama://deepseek-r1:7b"  # MODEL: here an installed Ollama model
        r = w.readme(command, {"MODEL": model})
        tar = w.work / "model.tar"
        size = len(w.ollama_manifest) + sum(len(data) for _, data in w.ollama_layers)
    else:
        model = str(w.need_models_r1())
        r = w.readme(command)
        assert _printed_sha256(r.stdout) == w.manifest().sha256
        tar = w.work / "r1-7b.tar"
        size = sum(map(len, w.files.values()))
    assert tar.stat().st_size > size
    w.made(f"bundle {model}", (tar, _printed_sha256(r.stdout)))


@exercises("dsmirror import r1-7b.tar --manifest-sha256 <hex>")
def import_bundle(w: World, command: str) -> None:
    tar, sha = w.need_bundle(str(w.need_models_r1()))
    cwd = w.fresh("offline")
    shutil.copy(tar, cwd / "r1-7b.tar")
    w.readme(command, {"<hex>": sha}, cwd=cwd)
    same_files(cwd / FOLDER, w.files)  # into ./NAME


@exercises("dsmirror import model.tar --manifest-sha256 HEX [--format dir|hf|ollama]")
def import_bundle_formats(w: World, command: str) -> None:
    assert command.endswith(" [--format dir|hf|ollama]")
    base = _without_optional_parts(command)
    ollama_model, hf_model = "ollama://deepseek-r1:7b", f"hf://{REPO_ID}"
    for fmt, model in (("dir", ollama_model), ("ollama", ollama_model), ("hf", hf_model)):
        tar, sha = w.need_bundle(model)
        cwd = w.fresh(f"import-{fmt}")
        shutil.copy(tar, cwd / "model.tar")
        stores = {"OLLAMA_MODELS": str(cwd / "ollama"), "HF_HOME": str(cwd / "hf")}
        w.readme(f"{base} --format {fmt}", {"HEX": sha}, cwd=cwd, env=stores)
        if fmt == "ollama":
            assert (cwd / "ollama" / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest
        elif fmt == "hf":
            same_files(cwd / "hf" / "hub" / HF_REPO_DIR / "snapshots" / COMMIT, w.files)
        else:  # an Ollama model as a plain folder: the store's layout in ./NAME
            assert (cwd / "deepseek-r1-7b" / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest
    # A bundle of the wrong kind for the format is refused with a hint, and nothing is installed.
    tar, sha = w.need_bundle(ollama_model)
    cwd = w.fresh("import-mismatch")
    shutil.copy(tar, cwd / "model.tar")
    r = w.readme(f"{base} --format hf", {"HEX": sha}, cwd=cwd, env={"HF_HOME": str(cwd / "hf")}, rc=2)
    assert "--format dir" in r.stderr
    assert not (cwd / "hf" / "hub").exists()


@exercises("export ... -o - | ssh host dsmirror import -")
@exercises(
    "dsmirror export ./models/r1-7b -o - | ssh gpu-box dsmirror import - --manifest-sha256 <hex>", slow=True
)
def export_import_stream(w: World, command: str) -> None:
    """The pipe without ssh: ``dsmirror export ./models/r1-7b -o - | dsmirror import -``."""
    left, _, right = command.partition(" | ")
    src, sha = w.need_models_r1(), w.manifest().sha256
    _, export_argv = w.split(left, {"...": str(src)} if "..." in left.split() else None)
    _, import_argv = w.split(right, {"<hex>": sha} if "<hex>" in right.split() else None)
    if export_argv[0] == "dsmirror":
        export_argv = export_argv[1:]  # README's prose abbreviates it to "export ..."
    assert export_argv[0] == "export" and import_argv[0] == "ssh" and import_argv[2] == "dsmirror"
    cwd = w.fresh(f"streamed-{len(import_argv)}")
    exporter = subprocess.Popen(
        [*CLI, *export_argv], env=w.env, cwd=w.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        w.cli(import_argv[3:], cwd=cwd, stdin=exporter.stdout)
    finally:
        assert exporter.stdout is not None
        exporter.stdout.close()
        _, err = exporter.communicate(timeout=60)
    assert exporter.returncode == 0, err
    same_files(cwd / FOLDER, w.files)


def _usb_path(command: str) -> str:
    (path,) = [word for word in shlex.split(command) if word.startswith("/media/usb/")]
    return path


@exercises("dsmirror import /media/usb/ollama --model ollama://deepseek-r1:7b --format ollama")
@exercises(
    "dsmirror import /media/usb/ollama-models --model ollama://deepseek-r1:7b --format ollama", slow=True
)
def import_copied_ollama_store(w: World, command: str) -> None:
    w.need_ollama_model()
    usb = w.fresh(f"usb-{len(command)}")
    shutil.copytree(w.ollama_models, usb / "store", ignore=shutil.ignore_patterns(".dsmirror"))
    target = w.fresh(f"other-machine-{len(command)}") / "ollama"
    w.readme(command, {_usb_path(command): str(usb / "store")}, env={"OLLAMA_MODELS": str(target)})
    assert (target / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest


@exercises("OLLAMA_MODELS=./ollama-models dsmirror pull deepseek-r1:7b --format ollama")
def pull_for_docker(w: World, command: str) -> None:
    cwd = w.fresh("docker")
    w.readme(command, cwd=cwd)
    models = cwd / "ollama-models"
    assert (models / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest
    assert (models / ".dsmirror").is_dir()  # what README says to keep out with .dockerignore


@exercises("sha256sum manifest.json")
def manifest_identity(w: World, command: str) -> None:
    path = w.need_manifest()
    assert _sha256(path.read_bytes()) == w.manifest().sha256
    if shutil.which("sha256sum"):
        r = w.readme(command, {"manifest.json": str(path)})
        assert r.stdout.split()[0] == w.manifest().sha256


@exercises("ruff check .", "ruff format --check .", "mypy", how="static")
def lint_tools(w: World, command: str) -> None:
    """Not run (work in progress elsewhere may fail them): the test extras install them, pyproject
    configures them."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = command.split()[0]
    assert any(req.startswith(tool) for req in pyproject["project"]["optional-dependencies"]["test"])
    assert tool in pyproject["tool"]


@exercises("dsmirror seed ./r1-7b", slow=True)
def seed_swarm_folder(w: World, command: str) -> None:
    magnet, peer = w.need_seeder()
    cwd = w.fresh("seed-swarm-folder")
    w.cli(["pull", magnet, "--peer", peer, "--dest", str(cwd / "r1-7b")], timeout=180)
    _seeds(w, command, FOLDER, cwd=cwd)


# -- docs/offline.md: the details README links to ------------------------------------------------------
@exercises("dsmirror export r1-7b.manifest.json --from ./DeepSeek-R1-Distill-Qwen-7B -o r1-7b.tar", slow=True)
def export_folder_with_manifest(w: World, command: str) -> None:
    cwd = w.fresh("export-from")
    shutil.copy(w.need_manifest(), cwd)
    shutil.copytree(w.need_folder(), cwd / FOLDER)
    r = w.readme(command, cwd=cwd)
    assert _printed_sha256(r.stdout) == w.manifest().sha256
    assert (cwd / "r1-7b.tar").is_file()


@exercises(
    "dsmirror export ollama://deepseek-r1:7b -o r1-7b.tar",
    "dsmirror export hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B -o r1-7b.tar",
    slow=True,
)
def export_installed_model(w: World, command: str) -> None:
    model = shlex.split(command)[2]
    if model.startswith("ollama://"):
        w.need_ollama_model()
    else:
        w.need_hf_model()
    cwd = w.fresh(f"export-{model.split(':')[0]}")
    r = w.readme(command, cwd=cwd)
    w.made(f"bundle {model}", (cwd / "r1-7b.tar", _printed_sha256(r.stdout)))


@exercises(
    "dsmirror import r1-7b.tar --manifest-sha256 <hex> --dest ./models/r1-7b",
    "dsmirror import r1-7b.tar --manifest-sha256 <hex> --format ollama",
    "dsmirror import r1-7b.tar --manifest-sha256 <hex> --format hf",
    "dsmirror import r1-7b.tar --manifest-sha256 <hex> --format ollama --dest ./ollama-models",
    slow=True,
)
def import_on_the_air_gapped_machine(w: World, command: str) -> None:
    """Each ``r1-7b.tar`` is the bundle of the kind the format needs (offline.md exports all three)."""
    words = shlex.split(command)
    fmt = words[words.index("--format") + 1] if "--format" in words else "dir"
    model = {"dir": str(w.need_models_r1()), "ollama": "ollama://deepseek-r1:7b", "hf": f"hf://{REPO_ID}"}[
        fmt
    ]
    tar, sha = w.need_bundle(model)
    machine = w.machine(f"air-gapped-{len(words)}-{fmt}")
    cwd = Path(machine["HOME"])
    shutil.copy(tar, cwd / "r1-7b.tar")
    w.readme(command, {"<hex>": sha}, cwd=cwd, env=machine)
    if "--dest" in words:
        dest = cwd / words[words.index("--dest") + 1]
    else:
        dest = {"ollama": cwd / ".ollama" / "models", "hf": cwd / ".cache" / "huggingface" / "hub"}[fmt]
    if fmt == "ollama":
        assert (dest / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest
    elif fmt == "hf":
        same_files(dest / HF_REPO_DIR / "snapshots" / COMMIT, w.files)
    else:
        same_files(dest, w.files)


@exercises(
    "dsmirror import /media/usb/hf-cache --model hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --format hf",
    slow=True,
)
def import_copied_hf_cache(w: World, command: str) -> None:
    w.need_hf_model()
    usb = w.fresh("usb-hf")
    shutil.copytree(w.hf_cache, usb / "cache", symlinks=True, ignore=shutil.ignore_patterns(".dsmirror"))
    machine = w.machine("other-machine-hf")
    w.readme(command, {_usb_path(command): str(usb / "cache")}, env=machine)
    same_files(
        Path(machine["XDG_CACHE_HOME"]) / "huggingface" / "hub" / HF_REPO_DIR / "snapshots" / COMMIT, w.files
    )


@exercises(
    "dsmirror import /media/usb/models/r1-7b --manifest r1-7b.manifest.json",
    "dsmirror import /media/usb/models/r1-7b",
    slow=True,
)
def import_copied_folder(w: World, command: str) -> None:
    """A plain copy needs its manifest; a folder dsmirror installed into carries its own."""
    usb = w.fresh(f"usb-folder-{len(command)}")
    if "--manifest" in command:
        shutil.copytree(w.nas_root / "models" / "deepseek-r1-7b", usb / "r1-7b")  # plain files only
    else:
        shutil.copytree(w.need_models_r1(), usb / "r1-7b")  # with its .dsmirror/
    machine = w.machine(f"other-machine-folder-{len(command)}")
    cwd = Path(machine["HOME"])
    shutil.copy(w.need_manifest(), cwd)
    w.readme(command, {_usb_path(command): str(usb / "r1-7b")}, cwd=cwd, env=machine)
    same_files(cwd / FOLDER, w.files)


def need_docker_folder(w: World) -> Path:
    """offline.md's Docker recipe: ``./ollama-models``, pulled into the Ollama layout."""
    cwd = w.tmp / "docker-build"
    if not (cwd / "ollama-models").exists():
        cwd.mkdir(exist_ok=True)
        w.cli(["pull", "deepseek-r1:7b", "--format", "ollama", "--dest", "./ollama-models"], cwd=cwd)
    return cwd


@exercises("dsmirror pull deepseek-r1:7b --format ollama --dest ./ollama-models", slow=True)
def pull_ollama_layout_into_folder(w: World, command: str) -> None:
    cwd = w.fresh("docker-recipe")
    w.readme(command, cwd=cwd)
    assert (cwd / "ollama-models" / OLLAMA_MANIFEST).read_bytes() == w.ollama_manifest


@exercises("echo 'ollama-models/.dsmirror' >> .dockerignore", slow=True)
def dockerignore(w: World, command: str) -> None:
    """The line names exactly the folder dsmirror keeps its own state in, next to the model."""
    cwd = need_docker_folder(w)
    assert (cwd / "ollama-models" / ".dsmirror").is_dir()
    w.run_program(["bash", "-c", command], cwd=cwd)
    assert "ollama-models/.dsmirror\n" in (cwd / ".dockerignore").read_text()


@exercises("ollama run deepseek-r1:7b", how="emulated", slow=True)
def ollama_finds_the_model(w: World, command: str) -> None:
    """No ollama here: what ``ollama run`` reads is there, its manifest and every blob at its size."""
    store = need_docker_folder(w) / "ollama-models"
    assert shlex.split(command)[2] == "deepseek-r1:7b"  # library/deepseek-r1:7b on registry.ollama.ai
    doc = json.loads((store / OLLAMA_MANIFEST).read_bytes())
    for blob in [doc["config"], *doc["layers"]]:
        path = store / "blobs" / blob["digest"].replace(":", "-")
        assert path.stat().st_size == blob["size"]
        assert _sha256(path.read_bytes()) == blob["digest"].removeprefix("sha256:")


def need_rev2(w: World) -> tuple[Path, Path]:
    """A new revision (config.json changed) on a mirror of its own: (its manifest, its catalog)."""
    made = w._made.get("rev2")
    if made is not None:
        return made  # type: ignore[no-any-return]
    root = w.fresh("rev2-mirror")
    files = {**w.files, "config.json": b'{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 16}\n'}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    mirror = MirrorServer(root, host="127.0.0.3")
    mirror.start()
    w._servers.append(mirror)
    catalog = w.tmp / "rev2.yaml"
    catalog.write_text(f"version: 1\nmirrors:\n  - name: rev2-nas\n    kind: http\n    url: {mirror.url}\n")
    manifest = w.tmp / "r1-7b-rev2.manifest.json"
    w.cli(["manifest", "create", str(root), "-o", str(manifest), "--piece-size", "8MiB"])
    w._made["rev2"] = (manifest, catalog)
    return manifest, catalog


@exercises(
    "dsmirror pull r1-7b-rev2.manifest.json --dest ./models/r1-7b --dry-run",
    "dsmirror pull r1-7b-rev2.manifest.json --dest ./models/r1-7b",
    slow=True,
)
def pull_new_revision(w: World, command: str) -> None:
    """Over the old revision: only the changed file is fetched; a dry run says so and writes nothing."""
    manifest, catalog = need_rev2(w)
    cwd = w.fresh(f"update-{len(command)}")
    shutil.copytree(w.need_models_r1(), cwd / "models" / "r1-7b")
    shutil.copy(manifest, cwd)
    _, argv = w.split(command)
    r = w.cli([*argv[1:], "--no-default-catalog", "--mirrors", str(catalog)], cwd=cwd)
    changed = len(b'{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 16}\n')
    if "--dry-run" in argv:
        assert f"would fetch {changed} B" in r.stdout, r.stdout
        same_files(cwd / "models" / "r1-7b", w.files)  # nothing written
    else:
        assert re.search(rf"\({changed} B downloaded", r.stdout), r.stdout
        assert json.loads((cwd / "models" / "r1-7b" / "config.json").read_bytes())["hidden_size"] == 16


@exercises("dsmirror doctor", "dsmirror doctor --json", slow=True)
def doctor_without_a_model(w: World, command: str) -> None:
    r = w.readme(command)
    if "--json" in command:
        report = json.loads(r.stdout)
        assert {m["name"] for m in report["mirrors"]} >= {"test-hf", "test-ollama", "office-nas"}, report
    else:
        assert "this machine" in r.stdout and "test-hf" in r.stdout


# -- the tests -----------------------------------------------------------------------------------------
def test_every_readme_command_is_checked() -> None:
    shown = [cmd for _, cmd in shown_commands()]
    unchecked = [cmd for cmd in shown if cmd not in CHECKS]
    stale = [cmd for cmd in CHECKS if cmd not in shown]
    assert not unchecked, f"the docs show commands no check exercises; add them to CHECKS: {unchecked}"
    assert not stale, f"checks of commands the docs no longer show: {stale}"


def test_extraction() -> None:
    text = (
        "```bash\n# a comment\ndsmirror pull x --dest ./y   # why\npip install -e . && dsmirror demo\n```\n"
        "Run `dsmirror ls`, or `A=1 hf download org/name`; not `--json`, `mirrors.yaml`, `ollama-x/.y`.\n"
        "```yaml\nversion: 1\n```\n"
    )
    assert readme_commands(text) == [
        "dsmirror pull x --dest ./y",
        "pip install -e .",
        "dsmirror demo",
        "dsmirror ls",
        "A=1 hf download org/name",
    ]


def _param(doc: str, cmd: str) -> Any:
    check = CHECKS.get(cmd)
    marks = [pytest.mark.slow] if check is not None and check.slow else []
    where = "" if doc == "README.md" else f"{Path(doc).name}: "
    return pytest.param(cmd, marks=marks, id=f"{where}{cmd if len(cmd) <= 80 else cmd[:77] + '...'}")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", [_param(doc, cmd) for doc, cmd in shown_commands()])
def test_readme_command(command: str, world: World) -> None:
    check = CHECKS.get(command)
    if check is None:
        pytest.fail(f"no check exercises {command!r} (see test_every_readme_command_is_checked)")
    check.fn(world, command)


def test_readme_commands_parse() -> None:
    """Every ``dsmirror`` command the docs show parses: its subcommand and options exist."""
    for _, cmd in shown_commands():
        words = [w for w in shlex.split(_without_optional_parts(cmd)) if not _ENV_ASSIGNMENT.fullmatch(w)]
        if words[0] == "dsmirror" and "|" not in words:  # a pipe's halves are run by its check
            _parse_cli(words[1:])


def test_pull_options_paragraph() -> None:
    """Every option README's "`pull` options:" paragraph names is an option of ``dsmirror pull``."""
    text = README.read_text()
    start = text.index("`pull` options:")
    paragraph = text[start : text.index("\n\n", start)]
    named = set(re.findall(r"`(--[a-z0-9-]+)", paragraph)) | set(re.findall(r"/(-[a-z])`", paragraph))
    assert len(named) > 10, paragraph
    missing = named - _options(_parse_cli(["pull", "x"]))
    assert not missing, f"README names pull options that do not exist: {sorted(missing)}"


def test_catalog_example_is_a_valid_catalog(tmp_path: Path) -> None:
    (example,) = readme_yaml_blocks()
    path = tmp_path / "mirrors.yaml"
    path.write_text(example)
    (mirror,) = dsmirror.load_catalog(path).mirrors
    assert (mirror.name, mirror.kind, mirror.region) == ("office-nas", "http", "lan")


def _readme_exit_codes() -> dict[int, str]:
    text = README.read_text()
    table = text[text.index("### Exit codes") :]
    table = table[: table.index("\n\n", table.index("| --- |"))]
    return {int(m[0]): m[1] for m in re.findall(r"^\| (\d+) \| (.+?) \|$", table, re.M)}


def test_exit_codes_table() -> None:
    """README's exit codes are the CLI's, each raised by a public error, each tested by test_cli_errors."""
    import dsmirror.cli

    documented = _readme_exit_codes()
    doc = dsmirror.cli.__doc__ or ""
    in_cli = {int(n) for n in re.findall(r"(\d+) [a-z]", doc[doc.index("Exit codes:") :])}
    assert set(documented) == in_cli, (sorted(documented), sorted(in_cli))
    errors = [
        getattr(dsmirror, n) for n in dsmirror.__all__ if n.endswith(("Error", "Progress", "Interrupted"))
    ]
    raised = {cls.exit_code for cls in errors if isinstance(cls, type) and hasattr(cls, "exit_code")}
    assert set(documented) - {0, 1} <= raised, sorted(set(documented) - raised)
    cli_tests = (ROOT / "tests" / "test_cli_errors.py").read_text()
    for code in set(documented) - {0, 1}:
        assert f"returncode == {code}" in cli_tests, f"no test of exit code {code} in test_cli_errors.py"


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", _FENCE.sub("", markdown), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_paths_exist() -> None:
    """Files (and headings) README links to or names (``src/...``, ``docs/...``, ...) exist."""
    text = README.read_text()
    missing = []
    for path, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", text):
        target = ROOT / path
        if not target.exists() or (anchor and anchor not in _anchors(target.read_text())):
            missing.append(f"{path}#{anchor}" if anchor else path)
    for path in re.findall(r"`((?:src|docs|scripts|tests)/[^`*<>]+)`", text):
        if not (ROOT / path).exists():
            missing.append(path)
    assert not missing, f"README names files that do not exist: {missing}"


def test_the_network_guard_refuses_other_hosts(world: World) -> None:
    """The commands' subprocesses cannot reach (or even look up) anything beyond loopback."""
    for code in (
        "import socket; socket.create_connection(('192.0.2.1', 443), timeout=1)",
        "import socket; socket.getaddrinfo('huggingface.co', 443)",
    ):
        with pytest.raises(AssertionError, match="tried to leave loopback"):
            world.run_program([sys.executable, "-c", code], rc=1)
    r = world.run_program([sys.executable, "-c", "import socket; socket.getaddrinfo('127.0.0.2', 80)"])
    assert r.returncode == 0


# -- the docs next to README ------------------------------------------------------------------------
DOCS = sorted((ROOT / "docs").rglob("*.md"))
_MODULE_PATH = re.compile(r"`((?:src|docs|scripts|tests|\.ci)/[^`\s*<>]+|_[a-z_]+/[a-z_/]*(?:\.py)?)`")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_paths_exist(doc: Path) -> None:
    """Modules, files and headings a doc names exist (module paths are relative to src/dsmirror/)."""
    text = doc.read_text()
    missing = []
    for path in _MODULE_PATH.findall(text):
        base = ROOT / "src" / "dsmirror" if path.startswith("_") else ROOT
        if not (base / path).exists():
            missing.append(path)
    for path, anchor in re.findall(r"\]\(([^)#:]+)(?:#([^)]*))?\)", text):
        target = doc.parent / path
        if not target.exists() or (anchor and anchor not in _anchors(target.read_text())):
            missing.append(f"{path}#{anchor}" if anchor else path)
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        if anchor not in _anchors(text):
            missing.append(f"#{anchor}")
    assert not missing, f"{doc.relative_to(ROOT)} names what does not exist (moved?): {missing}"


def _owners(section: str) -> list[str]:
    """The modules a formats.md section's "Owner:" sentence names (not those in parentheses)."""
    m = re.search(r"^Owners?: (.*?)(?:\. |;|$)", re.sub(r"\([^)]*\)", "", section), re.M | re.S)
    return re.findall(r"`(_[a-z_/]+\.py)`", m.group(1)) if m else []


def test_format_owners_link_back() -> None:
    """The module owning each format of docs/formats.md says where its format is documented."""
    text = (ROOT / "docs" / "formats.md").read_text()
    sections = re.split(r"^## ", _FENCE.sub("", text), flags=re.M)[1:]
    unlinked = []
    for section in sections:
        heading, _, body = section.partition("\n")
        (anchor,) = _anchors(f"## {heading}")
        owners = _owners(body.strip())
        if not owners:
            continue
        for module in owners:
            source = (ROOT / "src" / "dsmirror" / module).read_text()
            if f"docs/formats.md#{anchor}" not in source:
                unlinked.append(f"{module} -> #{anchor}")
    assert len(sections) > 10
    assert not unlinked, f"owning modules without 'Documented in docs/formats.md#...': {unlinked}"
