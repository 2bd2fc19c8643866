"""Checking this machine: free disk where the model goes, whether the Ollama store and the Hugging
Face cache are writable, and whether the BitTorrent listen port can be bound."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from dsmirror._doctor.report import DiskCheck, StoreCheck, TorrentCheck

__all__ = ["check_disk", "check_store", "check_torrent"]


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(dest: Path, needed: int | None) -> DiskCheck:
    where = _existing_parent(dest)
    return DiskCheck(str(where), shutil.disk_usage(where).free, needed)


def check_store(what: str, path: Path) -> StoreCheck:
    """Whether dsmirror could write there (the folder, or the nearest parent it would create it in)."""
    exists = path.is_dir()
    where = path if exists else _existing_parent(path)
    writable = os.access(where, os.W_OK | os.X_OK)
    detail = "" if exists else f"does not exist yet; would be created in {where}"
    if not writable:
        detail = f"no write permission on {where}" if os.access(where, os.F_OK) else f"{where} is missing"
    return StoreCheck(what, str(path), exists, writable, detail)


def check_torrent(listen: str | None, lsd: bool, dht: bool) -> TorrentCheck:
    """Whether the BitTorrent listen port can be bound (TCP and UDP); LSD/DHT as configured."""
    from dsmirror._fetch.swarm.config import parse_endpoint

    text = listen or "0.0.0.0:6881"
    host, port = parse_endpoint(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    results = []
    details = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(family, kind)
        try:
            s.bind((host, port))
            results.append(True)
        except OSError as exc:
            results.append(False)
            details.append(f"{'TCP' if kind == socket.SOCK_STREAM else 'UDP'}: {exc.strerror or exc}")
        finally:
            s.close()
    return TorrentCheck(text, port, results[0], results[1], lsd, dht, "; ".join(details))
