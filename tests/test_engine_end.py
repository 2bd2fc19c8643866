"""The end of a pull: the engine's loop notices the last piece when it is verified, not at its next turn.

Real loopback mirrors (``dsmirror.testing.MirrorServer``) serve a small model. The loop's turn
(``engine.DRIVE_TURN``) is made far longer than the pull: a loop that only looked at its turn
would end the pull that much later. Nothing here measures speed; the margin is seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dsmirror import PullFinished
from dsmirror._fetch import engine
from dsmirror.testing import MirrorServer

KiB = 1 << 10
MiB = 1 << 20

pytestmark = pytest.mark.timeout(120)

#: The loop's turn in these tests; the pulls take well under a second on loopback.
LONG_TURN = 30.0


@pytest.mark.parametrize("mirrors", [1, 3])
def test_the_last_piece_ends_the_pull_without_waiting_for_the_loops_turn(
    mirrors: int,
    make_model: Callable[..., Any],
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = make_model({"a.bin": 3 * MiB + 5, "b.bin": 700 * KiB}, piece_size=256 * KiB, seed=11)
    servers = start_mirrors(model.root, mirrors, rate=16 * MiB)
    catalog = catalog_file(servers)
    monkeypatch.setattr(engine, "DRIVE_TURN", LONG_TURN)
    t0 = time.monotonic()
    events = lib_pull(model, catalog, tmp_path / "dest", deadline=LONG_TURN + 30)
    took = time.monotonic() - t0
    model.assert_identical(tmp_path / "dest")
    assert [e for e in events if isinstance(e, PullFinished)]
    # Its first turn began before the first byte: only a wake-up can end it before LONG_TURN.
    assert took < LONG_TURN / 3, took
