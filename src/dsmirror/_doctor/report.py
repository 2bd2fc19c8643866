"""What ``dsmirror doctor`` found: the settings of its checks and the report they fill in.

The report is plain frozen data (``DoctorReport.to_dict`` is the ``--json`` output), so the advice
(``advice.advise``) is a pure function of it and can be tested on hand-made reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DiskCheck", "DoctorConfig", "DoctorReport", "MirrorCheck", "StoreCheck", "TorrentCheck"]


@dataclass(frozen=True)
class DoctorConfig:
    dns_timeout: float = 3.0
    connect_timeout: float = 3.0
    tls_timeout: float = 5.0
    http_timeout: float = 8.0  # to the response headers
    sample_bytes: int = 4 << 20
    sample_seconds: float = 2.0
    deadline: float = 25.0  # for all mirror checks together


@dataclass(frozen=True)
class MirrorCheck:
    name: str
    kind: str
    url: str  # what was requested (the mirror URL, or the model's largest file there)
    host: str
    port: int
    region: str
    official: bool
    #: ok, slow, dns-failed, refused, unreachable, timeout, bad-cert, tls-error, http-error, skipped
    status: str = "skipped"
    addresses: tuple[str, ...] = ()
    dns: float | None = None  # seconds
    connect: float | None = None
    tls: float | None = None
    tls_version: str | None = None
    http_status: int | None = None
    ttfb: float | None = None  # request sent -> response headers
    redirect: str | None = None  # Location host, if the mirror redirects (CDN)
    rate: float | None = None  # bytes/s over the sample
    sampled: int = 0
    skew: float | None = None  # local clock minus the server's Date, seconds
    via_proxy: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class DiskCheck:
    path: str  # the folder checked (nearest existing parent of the destination)
    free: int
    needed: int | None  # the model's size, with a REF


@dataclass(frozen=True)
class StoreCheck:
    what: str  # "Ollama store", "Hugging Face cache"
    path: str
    exists: bool
    writable: bool
    detail: str = ""


@dataclass(frozen=True)
class TorrentCheck:
    listen: str
    port: int
    tcp_ok: bool
    udp_ok: bool
    lsd: bool
    dht: bool
    detail: str = ""


@dataclass(frozen=True)
class DoctorReport:
    ref: str | None
    model: str | None
    model_size: int | None
    mirrors: tuple[MirrorCheck, ...]
    proxies: Mapping[str, str]  # variable -> value with credentials removed
    clock_skew: float | None  # median over the servers that sent a Date
    disk: DiskCheck | None
    stores: tuple[StoreCheck, ...]
    torrent: TorrentCheck | None
    seconds: float
    notes: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
