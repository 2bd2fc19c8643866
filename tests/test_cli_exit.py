"""The end of a ``dsmirror`` process: the heap is frozen at exit, not before.

A real pull from a loopback mirror (``dsmirror.testing.MirrorServer``) in a child process that runs
``dsmirror.cli.main`` itself: an exit hook registered before ``main`` runs after the ones ``main``
registers and reports what it finds. Times are in scripts/bench_mirrors.py (``end s``), not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dsmirror.testing import MirrorServer

pytestmark = pytest.mark.timeout(120)

KiB = 1 << 10

CHILD = """
import atexit, gc, json, sys
from dsmirror.cli import main
seen = {}
atexit.register(lambda: print(json.dumps({**seen, "at_exit": gc.get_freeze_count()}), file=sys.stderr))
try:
    main()
except SystemExit as exc:
    seen["code"] = exc.code
seen["after_main"] = gc.get_freeze_count()
"""


def test_a_pull_freezes_the_heap_at_exit_only(
    make_model: Callable[..., Any],
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
) -> None:
    model = make_model({"a.bin": 900 * KiB, "b.bin": 5}, piece_size=256 * KiB, seed=5)
    catalog = catalog_file(start_mirrors(model.root, 1))
    dest = tmp_path / "dest"
    argv = ["pull", str(model.manifest_path), "--no-default-catalog", "--mirrors", str(catalog)]
    argv += ["--dest", str(dest), "--json", "--no-p2p"]
    home = tmp_path / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "c"), "XDG_STATE_HOME": str(home / "s")}
    env |= {"XDG_CACHE_HOME": str(home / "x"), "PATH": "/usr/bin:/bin", "NO_PROXY": "*"}
    r = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True, timeout=90
    )
    assert r.returncode == 0, r.stderr[-2000:]
    model.assert_identical(dest)
    report = json.loads(r.stderr.strip().splitlines()[-1])
    # main() returned with nothing frozen (a caller in its own process keeps its collector) ...
    assert report["code"] in (0, None) and report["after_main"] == 0, report
    # ... and the interpreter's exit found the heap frozen: its last collections skip it.
    assert report["at_exit"] > 1000, report
