"""Writing into folders a user owns (the HF cache, the Ollama store, a ``--dest``) without being led
elsewhere: no write through a symlinked folder, links replaced atomically, only real folders removed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dsmirror._core.errors import StorageError

__all__ = ["check_parents", "real_dir", "replace_symlink"]


def check_parents(root: Path, rel: str) -> Path:
    """``root / rel`` after refusing a symlink among the folders on the way (the last part may be one)."""
    cur = root
    parts = rel.split("/")
    for part in parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise StorageError(f"{cur} is a symlink; refusing to write through it", path=str(cur))
    return cur / parts[-1]


def replace_symlink(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target``, atomically (a temp link renamed over it)."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    if link.is_dir() and not link.is_symlink():
        raise StorageError(f"{link} is a folder where a file link belongs", path=str(link))
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.dsmirror-link"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def real_dir(path: Path) -> None:
    """StorageError unless ``path`` is a folder and not a symlink to one."""
    if path.is_symlink() or not path.is_dir():
        raise StorageError(f"{path} is not a real folder (a symlink?); not touching it", path=str(path))
