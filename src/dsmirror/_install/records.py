"""What vouches for installed files: the store's install records, and the records of plain folders.

Two kinds of record, read here (formats in their owners):

- the store's ``.dsmirror/installed/<mid>.json`` under each install root (path -> [size, mtime_ns,
  inode] of every file it verified and installed; ``dsmirror._formats.private``, written by
  ``dsmirror._journal.store``): a file whose size, mtime and inode still match was verified by
  dsmirror and has not changed since;
- the state folder's record of a plain-folder install (``dsmirror._formats.installs``), written
  here after a ``--format dir`` pull or import, so that ``dsmirror ls`` finds the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._core.settings import Settings
from dsmirror._formats.installs import record_bytes, record_path
from dsmirror._formats.manifest import Manifest
from dsmirror._formats.private import PrivateArea
from dsmirror._journal.store import Store

__all__ = ["record_after_install", "record_dir_install", "store_records", "vouched"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def store_records(root: Path) -> dict[str, list[int]]:
    """Union of the store's installed records under ``root`` (path -> [size, mtime_ns, inode])."""
    out: dict[str, list[int]] = {}
    folder = PrivateArea(root).installed_dir
    with contextlib.suppress(OSError):
        for p in sorted(folder.glob("*.json")):
            if not _HEX64.match(p.name.removesuffix(".json")):  # <mid>.pieces.json etc. are not records
                continue
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(p.read_bytes())
                if isinstance(doc, dict):
                    out.update({k: v for k, v in doc.items() if isinstance(v, list) and len(v) == 3})
    return out


def vouched(records: Mapping[str, list[int]], rel: str, st: os.stat_result) -> bool:
    """Whether a record vouches for the file at ``rel`` as it is now (``st``)."""
    return records.get(rel) == [st.st_size, st.st_mtime_ns, st.st_ino]


def record_dir_install(
    settings: Settings,
    ref: str,
    fmt: str,
    manifest: Manifest,
    dest: Path,
    extra: Sequence[tuple[str, int, str]] = (),
) -> Path:
    """Write the install record of a plain-folder install (``dsmirror._formats.installs``).

    ``extra``: files written besides the manifest's, as (path, size, sha256).
    """
    dest = dest.absolute()
    path = record_path(settings.state_dir, dest, manifest.name)
    atomic_write_bytes(path, record_bytes(ref, fmt, manifest, dest, extra))
    return path


def record_after_install(
    settings: Settings, ref: str, fmt: str, manifest: Manifest
) -> Callable[[Store], None]:
    def after(store: Store) -> None:
        record_dir_install(settings, ref, fmt, manifest, store.dest)

    return after
