"""A plain libtorrent peer B watched while it pulls from a dsmirror machine A (the hand-over tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import libtorrent as lt


def watch_until_seeding(
    ses_b: Any, hb: Any, failed: Callable[[], bool], timeout: float = 60
) -> tuple[list[float], list[tuple[float, str]], bool]:
    """Follow B's alerts until its torrent ``hb`` is complete, ``failed()`` or ``timeout``: when B
    received each 16 KiB block, B's connections that closed (when, why), and whether B finished."""
    blocks: list[float] = []
    dropped: list[tuple[float, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not failed():
        ses_b.wait_for_alert(50)
        for a in ses_b.pop_alerts():
            if isinstance(a, lt.peer_disconnected_alert):
                dropped.append((time.monotonic(), a.message()))
            elif isinstance(a, lt.block_finished_alert):
                blocks.append(time.monotonic())
        if hb.status().is_seeding:
            break
    return blocks, dropped, hb.status().is_seeding
