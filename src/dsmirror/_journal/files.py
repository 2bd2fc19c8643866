"""The files of a store: descriptors kept open, the lock of a partial area, files moved into place.

``Store`` (``dsmirror._journal.store``) decides what is written and when it is durable; these are
the file-system steps it and the swarm-only pull (``dsmirror._fetch.swarm.only``) share, so that
there is one way to lock an area and one way to install a verified file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from dsmirror._core.errors import AlreadyInProgress
from dsmirror._core.fsutil import atomic_write_bytes, datasync, fsync_dir, safe_join, storage_errors

__all__ = ["OpenFiles", "fd_budget", "install_file", "lock_area", "write_install_record"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def install_file(src: Path, dest: Path, path: str) -> list[int]:
    """Move the verified file ``src`` to ``dest/path`` durably; its install record entry.

    The file is fsync-ed, renamed over ``dest/path`` (rename(2): the final name only ever holds a
    complete file) and its folder fsync-ed. Returns ``[size, mtime_ns, inode]`` as installed.
    """
    dst = safe_join(dest, path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    st = dst.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_install_record(path: Path, record: Mapping[str, list[int]]) -> None:
    """Write an install record (``.dsmirror/installed/<mid>.json``: path -> [size, mtime_ns, inode])."""
    atomic_write_bytes(path, json.dumps(record, sort_keys=True).encode())


def lock_area(area: Path, dest: Path) -> int:
    """flock(2) ``area/lock`` for this process (AlreadyInProgress if another holds it); the fd.

    The lock is released when the fd is closed (or the process dies).
    """
    with storage_errors(area / "lock"):  # ELOOP: a symlink there, which is never followed
        fd = os.open(area / "lock", os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = None
        with contextlib.suppress(ValueError, OSError):
            pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        os.close(fd)
        raise AlreadyInProgress(path=str(dest), pid=pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


#: How far from the least recently used end ``OpenFiles`` looks for a synced descriptor to close.
EVICT_LOOKAHEAD = 8


def fd_budget() -> int:
    """How many partial files a store keeps open: a quarter of the soft descriptor limit (the
    connections, the journal, reuse's candidate files and Python need the rest), 16 to 256."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(16, min(256, soft // 4))


class OpenFiles:
    """The partial files' descriptors: at most ``limit`` open, the least recently used closed first.

    A model may have more files than the process may open (a soft limit of 1024 descriptors is
    common, macOS's default is 256): a file's descriptor is opened when it is read or written and
    kept while it is in use recently. Durability is as with one descriptor per file: a file written
    since its last fdatasync is synced before its descriptor is closed, so the commit that covers
    its pieces (``Store.commit``) finds its bytes on disk, and no write error goes unreported with
    the descriptor. A descriptor in use by a thread is never closed under it (``use`` pins it).

    A file may also have a second descriptor whose writes bypass the page cache (``use(...,
    direct=True)``, opened by ``open_direct`` on first use: ``dsmirror._journal.direct``). It counts
    against ``limit`` too, is opened only while the file's ordinary one is open and is closed with
    it; writes through either count as the file's, and the fdatasync of the ordinary one makes
    both durable (they share the inode).
    """

    def __init__(
        self,
        reopen: Callable[[int], int],
        limit: int,
        open_direct: Callable[[int], int | None] | None = None,
    ) -> None:
        self._reopen = reopen
        self._open_direct = open_direct
        self.limit = limit
        self.reopened = 0  # descriptors opened again after they were closed: the churn
        self._lock = threading.Lock()
        self._fds: OrderedDict[int, int] = OrderedDict()  # file index -> fd, least recent first
        self._direct: dict[int, int] = {}  # file index -> its direct fd (its ordinary one is open)
        self._no_direct: set[int] = set()  # files whose direct descriptor was refused
        self._pins: dict[int, int] = {}  # file index -> threads using its fd now
        self._writes: dict[int, int] = {}  # file index -> writes through its fd
        self._synced: dict[int, int] = {}  # file index -> writes its last fdatasync covered

    def add(self, fi: int, fd: int) -> None:
        """Keep ``fd``, just opened for file ``fi``."""
        with self._lock:
            self._make_room()
            self._fds[fi] = fd

    @contextlib.contextmanager
    def use(self, fi: int, *, write: bool = False, direct: bool = False) -> Iterator[int]:
        """File ``fi``'s descriptor, open until the block ends; ``write``: the block writes to it.

        ``direct``: its direct descriptor (see the class docstring), or -1 where it has none.
        """
        with self._lock:
            fd = self._fds.get(fi)
            if fd is None:
                self._make_room()
                fd = self._fds[fi] = self._reopen(fi)
                self.reopened += 1
            else:
                self._fds.move_to_end(fi)
            self._pins[fi] = self._pins.get(fi, 0) + 1
            if direct:
                try:
                    fd = self._direct_fd(fi)
                except BaseException:
                    self._unpin(fi)
                    raise
        try:
            yield fd
        finally:
            with self._lock:
                self._unpin(fi)
                if write:
                    self._writes[fi] = self._writes.get(fi, 0) + 1

    def _direct_fd(self, fi: int) -> int:
        """File ``fi``'s direct descriptor, opened now if need be; -1 if it has none (caller holds
        the lock and a pin of ``fi``: its ordinary descriptor stays open). It is optional: out of
        descriptors (EMFILE, ENFILE), the write goes through the ordinary one, the pull goes on."""
        fd = self._direct.get(fi)
        if fd is not None:
            return fd
        if self._open_direct is None or fi in self._no_direct:
            return -1
        self._make_room()
        try:
            got = self._open_direct(fi)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return -1  # no descriptor to spare now: this write goes plainly, a later one may not
            raise
        if got is None:
            self._no_direct.add(fi)
            return -1
        self._direct[fi] = got
        return got

    def sync(self, fi: int) -> None:
        """fdatasync file ``fi`` if its descriptor is open (one closed since was synced first)."""
        with self._lock:
            fd = self._fds.get(fi)
            if fd is None:
                return
            covers = self._writes.get(fi, 0)
            self._pins[fi] = self._pins.get(fi, 0) + 1
        synced = False
        try:
            datasync(fd)
            synced = True
        finally:
            with self._lock:
                self._unpin(fi)
                if synced:
                    self._synced[fi] = max(self._synced.get(fi, 0), covers)

    def close(self, fi: int) -> None:
        """Close file ``fi``'s descriptor (it is being installed: synced by the caller)."""
        with self._lock:
            fds = [self._fds.pop(fi, None), self._direct.pop(fi, None)]
            self._forget(fi)
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def close_all(self) -> None:
        with self._lock:
            fds = [*self._fds.values(), *self._direct.values()]
            self._fds.clear()
            self._direct.clear()
            self._writes.clear()
            self._synced.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _unpin(self, fi: int) -> None:
        left = self._pins[fi] - 1
        if left:
            self._pins[fi] = left
        else:
            del self._pins[fi]

    def _forget(self, fi: int) -> None:
        self._writes.pop(fi, None)
        self._synced.pop(fi, None)

    def _make_room(self) -> None:
        """Below ``limit`` descriptors, if any is idle (caller holds the lock): of the least
        recently used few, a synced one, else the least recently used idle one, synced first.

        Every one in use right now (more threads than ``limit``): one more stays open, briefly.
        """
        while len(self._fds) + len(self._direct) >= self.limit:
            victim = dirty = None
            for k, fi in enumerate(self._fds):
                if fi in self._pins:
                    continue
                if self._synced.get(fi, 0) >= self._writes.get(fi, 0):
                    victim = fi
                    break
                dirty = fi if dirty is None else dirty
                if k >= EVICT_LOOKAHEAD:
                    break
            if victim is None:
                if dirty is None:
                    return
                victim = dirty
                datasync(self._fds[victim])  # written since its last sync: synced before closing
            fd = self._fds.pop(victim)
            direct = self._direct.pop(victim, None)
            self._forget(victim)
            os.close(fd)
            if direct is not None:
                os.close(direct)
