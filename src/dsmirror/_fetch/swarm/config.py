"""The parts of the swarm's API that need no libtorrent: its configuration and the seeding events.

Code that only builds a ``SwarmConfig`` or looks at events (``pull --no-p2p``, the command line)
imports this module, so that libtorrent and the rest of ``dsmirror._fetch.swarm`` (and
``dsmirror._share``) load only when a pull or a seeder actually joins a swarm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.errors import UsageError
from dsmirror._core.events import Event

__all__ = [
    "PeerStatus",
    "SeedStatus",
    "SeedingStarted",
    "SeedingStopped",
    "SwarmConfig",
    "TorrentStatus",
    "parse_endpoint",
]


# -- configuration ---------------------------------------------------------------------------------
def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); UsageError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(
            f"cannot read address {text!r}", hint="write it like 192.168.1.20:6881 or [::1]:6881"
        )
    return host, int(port)


@dataclass(frozen=True)
class SwarmConfig:
    """How a pull or a seeder joins BitTorrent swarms (``--listen``, ``--peer``, ...)."""

    enabled: bool = True  # --no-p2p: never use a swarm
    listen: str | None = None  # HOST:PORT; default 0.0.0.0:6881 (or the next free port)
    peers: tuple[str, ...] = ()  # HOST:PORT dialled directly (no multicast, tests)
    lsd: bool = True  # local service discovery (LAN multicast)
    dht: bool = False
    upload_rate: int | None = None  # bytes/s, all peers (LAN ones too)
    download_rate: int | None = None
    max_peers: int | None = None
    torrent: Path | None = None  # the .torrent of the pulled manifest (metadata without peers)
    #: pull --seed: keep seeding the model after the pull. The pull leaves its session open for
    #: the seeding step after it (``dsmirror._share.seed.seed_after_pull``), which closes it.
    seed: bool = False
    trackers: tuple[str, ...] = ()  # announce URLs: the catalog's mirrors of kind bittorrent

    def __post_init__(self) -> None:
        for p in self.peers:
            parse_endpoint(p)
        if self.listen:
            parse_endpoint(self.listen)

    @property
    def peer_endpoints(self) -> list[tuple[str, int]]:
        return [parse_endpoint(p) for p in self.peers]


# -- seeding events --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerStatus:
    address: str
    client: str
    upload_rate: float  # bytes/s
    uploaded: int
    download_rate: float
    progress: float  # of the peer, 0..1


@dataclass(frozen=True)
class TorrentStatus:
    name: str
    info_hash: str
    state: str
    upload_rate: float
    uploaded: int
    peers: tuple[PeerStatus, ...]


@dataclass(frozen=True)
class SeedingStarted(Event):
    torrents: tuple[str, ...]
    magnets: tuple[str, ...]
    listen_port: int


@dataclass(frozen=True)
class SeedStatus(Event):
    upload_rate: float
    uploaded: int
    torrents: tuple[TorrentStatus, ...]


@dataclass(frozen=True)
class SeedingStopped(Event):
    uploaded: int
    seconds: float
