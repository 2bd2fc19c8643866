"""Records of plain-folder installs: how ``dsmirror ls``, ``rm`` and reuse find ``--format dir`` pulls.

The HF cache and the Ollama store list their own models; a plain folder (``--format dir``,
``DEST/<path>``) does not, so each install leaves a record in dsmirror's state folder,
``$XDG_STATE_HOME/dsmirror/installs/<key>.json``, ``<key>`` = SHA-256 of ``dest + "\\0" + name``::

    {"version": 1, "format": "dir", "ref": "deepseek-r1:7b", "name": "deepseek-r1:7b",
     "dest": "/abs/dest", "manifest_sha256": "<hex>", "files": [["config.json", 519, "<sha256>"], ...]}

``files`` are the manifest's files plus any written besides them (an Ollama manifest), as
``[path, size, sha256]``. Another install of the same name into the same folder replaces the record.

Documented in docs/formats.md#install-records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dsmirror._formats.manifest import Manifest

__all__ = ["RECORD_VERSION", "read_records", "record_bytes", "record_path"]

RECORD_VERSION = 1


def _records_dir(state_dir: Path) -> Path:
    return state_dir / "installs"


def record_path(state_dir: Path, dest: Path, name: str) -> Path:
    """Where the record of model ``name`` installed into ``dest`` (absolute) is kept."""
    key = hashlib.sha256(f"{dest}\0{name}".encode()).hexdigest()
    return _records_dir(state_dir) / f"{key}.json"


def record_bytes(
    ref: str, fmt: str, manifest: Manifest, dest: Path, extra: Sequence[tuple[str, int, str]] = ()
) -> bytes:
    """The record of ``manifest`` installed into ``dest`` (absolute); ``extra``: (path, size, sha256)."""
    doc = {
        "version": RECORD_VERSION,
        "format": fmt,
        "ref": ref,
        "name": manifest.name,
        "dest": str(dest),
        "manifest_sha256": manifest.sha256,
        "files": [[f.path, f.size, f.sha256] for f in manifest.files] + [list(x) for x in extra],
    }
    return json.dumps(doc, sort_keys=True).encode()


def read_records(state_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(record file, its document) of every readable record of this version, in name order."""
    with contextlib.suppress(OSError):
        for p in sorted(_records_dir(state_dir).glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(p.read_bytes())
                if isinstance(doc, dict) and doc.get("version") == RECORD_VERSION:
                    yield p, doc
