"""The real ``dsmirror`` command as a child process, for tests and benchmarks: loopback only.

- :data:`DSMIRROR_CLI`: the argv that runs the installed CLI with this interpreter;
- :func:`cli_env`: an environment that keeps the child to itself: a private HOME, XDG folders,
  Hugging Face and Ollama stores under it, no proxy variables, none of the developer's ``HF_*``,
  ``HUGGING*``, ``OLLAMA*`` or ``XDG_*`` settings, and a Hugging Face endpoint that answers
  nothing (``127.0.0.1:9``), so a pull can only reach the catalogs and mirrors it is given;
- :func:`mirror_catalog`: a catalog file of such mirrors, in order of priority;
- :func:`json_events`: the events a ``--json`` run printed;
- :func:`hf_liar`: a Hugging Face endpoint (a :class:`~dsmirror.testing.MirrorServer` over the
  Hub's ``resolve`` path) that flips a byte of every body of one file it serves.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dsmirror.testing.mirror import Faults, MirrorServer

__all__ = ["DEAD_ENDPOINT", "DSMIRROR_CLI", "cli_env", "hf_liar", "json_events", "mirror_catalog"]

DSMIRROR_CLI: tuple[str, ...] = (
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'dsmirror'; from dsmirror.cli import main; main()",
)
#: A Hugging Face endpoint nothing listens on: what the child falls back to is refused at once.
DEAD_ENDPOINT = "http://127.0.0.1:9"
_FOREIGN = ("HF_", "HUGGING", "OLLAMA", "XDG_")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``dsmirror`` child whose home is ``home`` (see the module docstring);
    ``extra`` is applied last (``HF_ENDPOINT=...`` for a client that asks a box, say)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN) and "proxy" not in k.lower()}
    env.update(
        HOME=str(home),
        NO_PROXY="*",
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        HF_HOME=str(home / "hf-home"),
        HF_HUB_CACHE=str(home / "hf-cache"),
        OLLAMA_MODELS=str(home / "ollama"),
        HF_ENDPOINT=DEAD_ENDPOINT,
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    env.update(extra)
    return env


def mirror_catalog(path: Path, mirrors: Sequence[tuple[str, str, str]], *, max_connections: int) -> Path:
    """Write a catalog of ``mirrors`` ((name, kind, url), first preferred), each allowed
    ``max_connections``, to ``path``."""
    doc = {
        "version": 1,
        "mirrors": [
            {"name": n, "kind": k, "url": u, "priority": i, "max_connections": max_connections}
            for i, (n, k, u) in enumerate(mirrors, 1)
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def json_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON events of a ``--json`` run's standard output, in order."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def hf_liar(
    root: Path,
    repo_id: str,
    commit: str,
    path: str,
    origin: Path,
    *,
    host: str = "127.0.0.3",
    count: int | None = None,
) -> MirrorServer:
    """A Hugging Face endpoint serving ``origin`` as ``path`` of ``repo_id`` at ``commit``, from
    ``root`` (a hard link is made there), with a byte flipped in every body it sends of it
    (in the first ``count`` bodies only, if given). Not started: use it as a context manager."""
    rel = f"{repo_id}/resolve/{commit}/{path}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    os.link(origin, root / rel)
    return MirrorServer(root, host=host, faults=Faults(corrupt=True, paths={rel}, count=count))
