"""libtorrent's own copy during a pull, and its resume data (``bt/``, ``bt.resume``).

Where libtorrent keeps its data during a pull
=============================================
In its own folder inside the store's partial area::

    DEST/.dsmirror/partial/<manifest sha256>/
      data/...             the store's partial files (see ``dsmirror._journal.store``)
      bt/<path>...         libtorrent's copy: the same relative paths (content files are renamed
                           to the manifest's paths; BEP 47 pad files are never written), sparse
      bt.resume            bencoded {"resume": <libtorrent resume data>, "stats": {path: [size, mtime_ns]}}
      bt.lock              flock(2)-ed while a finished pull's torrent still serves from ``bt/``
                           (``pull --seed``, until the seeder takes it over); empty

libtorrent writes only into ``bt/``, never into the store's files: a piece libtorrent is still
writing when the scheduler gives it to a mirror can then never overwrite verified bytes. The cost
is a second copy of the verified pieces while the pull runs (what the swarm downloads and what the
mirrors delivered and were handed to libtorrent); ``bt/`` is deleted when the pull finishes, and
seeding afterwards reads the installed files. ``bt.resume`` is saved every minute and when a pull
stops unfinished, so a resumed pull does not re-hash ``bt/``; it is only trusted while every file
under ``bt/`` still has the size and mtime recorded with it (libtorrent trusts resume data blindly),
otherwise libtorrent re-checks ``bt/``. Pieces the store has verified but libtorrent lacks are
handed to it again at start.

A finished pull's copy is deleted by whoever ends it (the pull, or with ``--seed`` the seeder
that took its torrent over). A process killed between the install and that left it behind, a
whole copy of the model nothing read again (the next pull of the installed model is a no-op):
the next pull that finds the store complete deletes it (``drop_stale_copy``), unless a live
torrent still serves from it (``hold_copy``: its ``bt.lock`` is held).

A pull from peers alone (``dsmirror._fetch.swarm.only``) keeps ``bt/`` and ``bt.resume`` the same
way in its own partial area.

The deadlines here bound waits for libtorrent's disk thread (its alerts), so they use the real
monotonic clock.

Documented in docs/formats.md#the-swarm-bt-btresume-and-torrents.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

from dsmirror._core.errors import StorageError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._fetch.swarm.session import SwarmSession

__all__ = [
    "RESUME_EVERY",
    "bt_stats",
    "drop_copy",
    "drop_stale_copy",
    "flush_writes",
    "hold_copy",
    "read_resume",
    "save_resume",
    "write_resume",
]

RESUME_EVERY = 60.0  # seconds between saves of bt.resume while a pull runs


def hold_copy(area: Path) -> int:
    """Lock ``area/bt.lock`` while a finished pull's torrent serves from ``bt/``: a descriptor
    for ``drop_copy``, or -1 (no lock to be had: a later pull may then delete the copy, and the
    torrent reads nothing until the seeder repoints it)."""
    try:
        fd = os.open(area / "bt.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError:
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return -1
    return fd


def drop_copy(area: Path, lock: int = -1) -> None:
    """Delete libtorrent's copy of a finished pull (``bt/``, ``bt.resume``), then its lock."""
    shutil.rmtree(area / "bt", ignore_errors=True)
    for name in ("bt.resume", "bt.lock"):
        with contextlib.suppress(OSError):
            (area / name).unlink()
    if lock >= 0:
        with contextlib.suppress(OSError):
            os.close(lock)
    with contextlib.suppress(OSError):
        area.rmdir()  # the store left it when it finished; nothing else is in it now


def drop_stale_copy(area: Path) -> bool:
    """Delete a finished pull's copy nobody serves from (see the module docstring); whether one
    was deleted. Call only for a complete store."""
    if not (area / "bt").exists() and not (area / "bt.resume").exists():
        return False
    lock = hold_copy(area)
    if lock < 0 and (area / "bt.lock").exists():
        return False  # a seeder still serves from it
    drop_copy(area, lock)
    return True


def read_resume(area: Path) -> Any:
    """``add_torrent_params`` from ``area/bt.resume``, or None (none saved, or ``bt/`` changed since)."""
    path = area / "bt.resume"
    try:
        saved: Any = lt.bdecode(path.read_bytes())
        stats = {k.decode(): list(v) for k, v in saved[b"stats"].items()}
        resume = bytes(saved[b"resume"])
    except (OSError, RuntimeError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return None
    if bt_stats(area / "bt") != stats:
        return None  # files changed behind libtorrent's back: let it re-check them
    try:
        return lt.read_resume_data(resume)
    except RuntimeError:
        return None


def flush_writes(session: SwarmSession, handle: Any, timeout: float) -> bool:
    """Wait until libtorrent has written every block it accepted so far into its files.

    A piece passes libtorrent's hash check while its blocks may still wait in the disk thread's
    write buffer (libtorrent 2: a finished file can still be all zeros on disk). ``flush_cache``
    releases the files behind a fence, after every write queued before it, and then posts
    ``cache_flushed_alert``. Other alerts popped meanwhile are dropped: only for the end of a run.
    """
    handle.flush_cache()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not session.stopping:
        if any(isinstance(a, lt.cache_flushed_alert) for a in session.alerts(0.2)):
            return True
    return False


def save_resume(session: SwarmSession, handle: Any, area: Path, *, wait: bool) -> None:
    """Ask for resume data (with the info dict: a magnet needs no metadata again); with ``wait``,
    flush first (so the recorded sizes and mtimes of ``bt/`` are final and the resume data is
    trusted next time) and write it before returning (other alerts are dropped: only for the end).
    """
    if handle is None or not handle.is_valid():
        return
    if wait:
        flush_writes(session, handle, 10.0)
    flags = lt.save_resume_flags_t.save_info_dict | lt.save_resume_flags_t.flush_disk_cache
    handle.save_resume_data(flags)
    if not wait:
        return
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not session.stopping:
        for a in session.alerts(0.2):
            if isinstance(a, lt.save_resume_data_alert):
                write_resume(area, a)
                return
            if isinstance(a, lt.save_resume_data_failed_alert):
                return


def write_resume(area: Path, a: Any) -> None:
    """Write ``area/bt.resume`` from a ``save_resume_data_alert`` (format: module docstring)."""
    record: Any = {
        b"resume": bytes(lt.write_resume_data_buf(a.params)),
        b"stats": {k.encode(): v for k, v in bt_stats(area / "bt").items()},
    }
    with contextlib.suppress(StorageError):
        atomic_write_bytes(area / "bt.resume", bytes(lt.bencode(record)))


def bt_stats(bt: Path) -> dict[str, list[int]]:
    """``[size, mtime_ns]`` of every file under ``bt``, by its path relative to ``bt``."""
    out: dict[str, list[int]] = {}
    if not bt.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(bt):
        for fn in files:
            p = Path(dirpath) / fn
            with contextlib.suppress(OSError):
                st = p.stat()
                out[p.relative_to(bt).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out
