"""Small durable-filesystem helpers: atomic writes, directory fsync, errno translation."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from dsmirror._core.errors import DiskFull, StorageError

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - no fcntl on Windows
    fcntl = None

__all__ = ["atomic_write_bytes", "datasync", "fsync_dir", "safe_join", "storage_errors"]


def datasync(fd: int) -> None:
    """Make the data written through ``fd`` durable (and its size; not necessarily its times).

    ``fdatasync`` where the system has it (Linux, the BSDs). macOS has none in Python's ``os``,
    and its ``fsync`` leaves the data in the drive's cache: ``F_FULLFSYNC`` flushes that too
    (plain ``fsync`` where the file system refuses it, as some network ones do).
    """
    fdatasync = getattr(os, "fdatasync", None)  # looked up each call: tests watch os's
    if fdatasync is not None:
        fdatasync(fd)
        return
    if _F_FULLFSYNC is not None:
        try:
            fcntl.fcntl(fd, _F_FULLFSYNC)
            return
        except OSError:
            pass
    os.fsync(fd)


_F_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None) if fcntl is not None else None


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes], *, mode: int = 0o644) -> None:
    """Write ``data`` (bytes, or chunks of them) to a temporary name beside ``path``, fsync it,
    rename it over ``path``."""
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                if isinstance(data, bytes | bytearray | memoryview):
                    fh.write(data)
                else:
                    for chunk in data:
                        fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel`` after refusing any existing symlink on the way (paths through symlinks)."""
    cur = root
    for part in rel.split("/"):
        cur = cur / part
        if cur.is_symlink():
            raise StorageError(
                f"{cur} is a symlink; refusing to write through it",
                path=str(cur),
                hint="remove the link or choose another --dest",
            )
    return cur


@contextlib.contextmanager
def storage_errors(path: Path | str) -> Iterator[None]:
    """Translate OSError from local disk work into StorageError subclasses with a clear message."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, StorageError):  # pragma: no cover - StorageError is not an OSError
            raise
        where = exc.filename or path
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(path=str(where), needed=0, available=0) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise StorageError(
                f"permission denied: {where}", path=str(where), hint="choose a --dest you can write to"
            ) from exc
        if exc.errno == errno.EROFS:
            raise StorageError(
                f"read-only file system: {where}", path=str(where), hint="choose a writable --dest"
            ) from exc
        raise StorageError(f"{exc.strerror or exc}: {where}", path=str(where)) from exc
