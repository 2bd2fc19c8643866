"""``dsmirror doctor``: why downloads are slow or fail from *this* machine, and what to do about it.

The checks follow the path a download takes, so the first one that fails says where it breaks:

Per catalog mirror (all mirrors at once, each step bounded by its own timeout)
    DNS resolution -> TCP connect -> TLS handshake (certificate verified, never skipped; a bad
    certificate is reported as such) -> one small HTTP request for status, time to first byte and
    the server's ``Date`` -> then, one mirror after the other so they do not share the link, a
    short throughput sample (at most ``sample_bytes`` or ``sample_seconds``). With a REF the request
    and the sample go to the model's largest file through the same URL mapping a pull uses;
    without, to the mirror's URL. DNS, TCP and TLS are measured directly; the HTTP request goes
    through the proxy the environment names, as a pull does.

This machine
    proxy variables, clock skew against the servers' ``Date`` headers (signed CDN URLs and TLS
    fail on a wrong clock), free disk where the model goes (against its size with a REF), whether
    the BitTorrent listen port can be bound and whether LAN discovery (LSD) is on, and whether the
    Ollama store and the Hugging Face cache are writable.

``advise`` turns a report into concrete lines ("hf-mirror.com answers 3x faster than
huggingface.co from here: use --region cn"); it is a pure function of the report.

The parts: ``report`` (the data), ``mirrors`` (the per-mirror checks), ``proxies``, ``machine``
(disk, stores, BitTorrent port), ``advice``, and ``run`` (``run_doctor``, the whole run).
"""

from __future__ import annotations

from dsmirror._doctor.advice import advise
from dsmirror._doctor.machine import check_disk, check_store, check_torrent
from dsmirror._doctor.mirrors import check_mirrors
from dsmirror._doctor.proxies import proxy_env
from dsmirror._doctor.report import (
    DiskCheck,
    DoctorConfig,
    DoctorReport,
    MirrorCheck,
    StoreCheck,
    TorrentCheck,
)
from dsmirror._doctor.run import run_doctor

__all__ = [
    "DiskCheck",
    "DoctorConfig",
    "DoctorReport",
    "MirrorCheck",
    "StoreCheck",
    "TorrentCheck",
    "advise",
    "check_disk",
    "check_mirrors",
    "check_store",
    "check_torrent",
    "proxy_env",
    "run_doctor",
]
