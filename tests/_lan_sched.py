"""A scheduler of a simulated LAN pull for the LAN scheduling tests (test_swarm, test_lan_share):
one HTTP mirror ("upstream") and one swarm ("swarm") over a one-file model of ``n`` 1 MiB pieces,
on a fake clock; ``have`` is the swarm's map of what peers have."""

from __future__ import annotations

import dsmirror

MiB = 1 << 20


def lan_sched(
    n: int, *, conns: int = 4, prefer: str = "auto", clock: dsmirror.FakeClock | None = None
) -> tuple[dsmirror.Scheduler, bytearray]:
    files = (dsmirror.FileEntry("f.bin", n * MiB, "0" * 64, tuple(f"{k:064x}" for k in range(n))),)
    m = dsmirror.Manifest("sim", MiB, files)
    infos = [
        dsmirror.SourceInfo("upstream", "http", "upstream.example", max_connections=conns),
        dsmirror.SourceInfo("swarm", "bittorrent", "swarm", max_connections=8),
    ]
    s = dsmirror.Scheduler(
        m, bytearray(n), infos, clock or dsmirror.FakeClock(), dsmirror.SchedulerConfig(prefer=prefer)
    )
    have = bytearray(n)
    s.set_peer_pieces("swarm", have)
    return s, have


def advance(s: dsmirror.Scheduler, seconds: float) -> None:
    assert isinstance(s.clock, dsmirror.FakeClock)
    s.clock.advance(seconds)
