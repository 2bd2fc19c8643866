"""Piece writes that bypass the page cache: staged in aligned buffers, written with O_DIRECT.

Why: a pull writes each byte once and, when the manifest's piece hashes bind a file, never reads
it back; through the page cache each write still copies into freshly allocated, charged and
dirtied pages, which the kernel's writeback threads then write out on the same cores, and every
commit's fdatasync waits for that writeback. Written with O_DIRECT from a few reused page-aligned
buffers, the bytes go from the buffer to the device and a commit has next to nothing left to
write. Measured in ``scripts/bench_pull.py`` (figures in the commit that added this module).

How: ``AlignedWriter.write`` gets a piece's bytes in order, a chunk at a time (the fetch engine's
socket reads), copies them into a page-aligned buffer of ``STAGE`` bytes standing for an aligned
stretch of the file, and writes each full buffer with one pwrite(2) on the file's O_DIRECT
descriptor. The rest of a piece goes out when its last byte arrives, or when it is ``flush``-ed
(the store does that before it journals the piece: its W record still means "every byte was
handed to pwrite(2)"), or when more than ``MAX_STAGED`` pieces are staged (the least recently
written is written out: a connection that stopped inside a piece holds no buffer for long).
What is not aligned goes through the file's ordinary descriptor: the bytes before the first
``ALIGN`` boundary when a write starts off one (a piece continued by another connection after its
staged front was written out), and the last bytes of a file whose size is no multiple of ``ALIGN``
(never past the end: a direct write there would grow the file). Both descriptors belong to one
file, so an fdatasync through either makes both kinds of write durable (one inode); the store's
commits and ``OpenFiles``' sync-before-close are unchanged.

Where there is no such descriptor, writes are as before (the ordinary descriptor, the page
cache): ``open_direct`` returns None where the system has neither ``O_DIRECT`` nor macOS's
``F_NOCACHE``, or the filesystem refuses the flag (EINVAL, EOPNOTSUPP); and a direct write refused
with EINVAL (a device that wants a larger alignment than ``ALIGN``) switches the writer off for
good: what it staged, and everything after, is written through the ordinary descriptor.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager

__all__ = ["ALIGN", "MAX_STAGED", "MIN_PIECE", "STAGE", "AlignedWriter", "open_direct"]

#: Alignment of direct writes' memory, file offsets and lengths: the page size, a multiple of every
#: common logical block size (512 or 4096); a device that wants more refuses (EINVAL): see above.
ALIGN = 4096
#: Bytes of one staging buffer, and of each full direct write.
STAGE = 1 << 20
#: Pieces staged at once at most (one buffer each): about one per connection.
MAX_STAGED = 32
#: Buffers kept for reuse (a fresh mapping is zero-filled page by page as it is touched).
_POOL = 16
#: Smallest piece size written this way: smaller pieces are written by smaller, synchronous
#: direct writes, where the page cache's write-behind serves better.
MIN_PIECE = 256 << 10

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP))

#: A descriptor of file ``fi`` for a block that writes to it: with ``direct``, its direct one (-1
#: where it has none: ``OpenFiles.use``).
UseFile = Callable[[int, bool], AbstractContextManager[int]]


def open_direct(path: str | os.PathLike[str]) -> int | None:
    """A write-only descriptor of ``path`` whose writes bypass the page cache, or None.

    Linux: ``O_DIRECT``; macOS: ``F_NOCACHE`` on a descriptor of its own (it has no O_DIRECT).
    None where the system has neither or the filesystem refuses it.
    """
    flags = os.O_WRONLY | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    direct = getattr(os, "O_DIRECT", 0)
    nocache = getattr(fcntl, "F_NOCACHE", None)
    if not direct and nocache is None:
        return None
    try:
        fd = os.open(path, flags | direct)
    except OSError as exc:
        if exc.errno in _REFUSED:
            return None
        raise
    if not direct and nocache is not None:
        try:
            fcntl.fcntl(fd, nocache, 1)
        except OSError:
            os.close(fd)
            return None
    return fd


class _Buffer:
    __slots__ = ("mem", "view")

    def __init__(self) -> None:
        self.mem = mmap.mmap(-1, STAGE)  # page-aligned, as a direct write's memory must be
        self.view = memoryview(self.mem)

    def free(self) -> None:
        self.view.release()
        # A view of it may live on in a traceback (a write that failed): then the mapping goes
        # with the last such view, not now.
        with contextlib.suppress(BufferError):
            self.mem.close()


class _Staged:
    """A piece's bytes not written yet: ``fill`` bytes of ``buf`` stand for file ``fi`` at ``base``."""

    __slots__ = ("base", "buf", "fi", "fill")

    def __init__(self, fi: int, base: int, buf: _Buffer) -> None:
        self.fi = fi
        self.base = base  # a multiple of ALIGN
        self.buf = buf
        self.fill = 0

    @property
    def end(self) -> int:
        return self.base + self.fill


class AlignedWriter:
    """Writes of pieces through aligned buffers and O_DIRECT descriptors (see the module docstring).

    ``use(fi, direct)`` lends file ``fi``'s descriptor for a block: its ordinary one, or its direct
    one (-1: the file has none, its bytes go through the ordinary one). Thread-safe; the bytes
    of one piece come in order from one thread at a time (the engine's piece locks), and a write
    that does not continue a piece's staged bytes writes those out first.
    """

    def __init__(self, use: UseFile) -> None:
        self._use = use
        self.enabled = True  # False once a direct write was refused
        self.direct_bytes = 0  # written through direct descriptors (tests, benchmarks)
        self._lock = threading.Lock()
        self._staged: OrderedDict[int, _Staged] = OrderedDict()  # piece index -> its bytes
        self._pool: list[_Buffer] = []
        #: Pieces whose staged bytes a thread holds now (taken from ``_staged``, being written to or
        #: written out): another thread's ``write`` or ``flush`` of one waits until they are handed
        #: to pwrite(2), so a flush never returns before them, nor do newer bytes land first.
        self._busy: set[int] = set()
        self._idle = threading.Condition(self._lock)
        #: Pieces whose staged bytes another thread failed to write out: raised at their next
        #: ``write`` or ``flush``, so such a piece is never journaled without its bytes.
        self._failed: dict[int, OSError] = {}

    def write(self, index: int, fi: int, offset: int, data: bytes | bytearray | memoryview, end: int) -> None:
        """Bytes of piece ``index`` at ``offset`` of file ``fi``; the piece ends at ``end``."""
        mv = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
        st = self._claim(index)
        try:
            old = self._write(index, st, fi, offset, mv, end)
        finally:
            with self._lock:
                self._busy.discard(index)
                self._idle.notify_all()
        for i, s in old:
            self._evict(i, s)

    def _write(
        self, index: int, st: _Staged | None, fi: int, offset: int, mv: memoryview, end: int
    ) -> list[tuple[int, _Staged]]:
        """``write`` with ``index`` claimed; the staged pieces it pushed out (claimed too), to be
        written out once ``index`` is released."""
        if st is not None and (st.end != offset or self._in_place(mv, offset, end)):
            self._write_out(st)  # what it staged goes first
            st = None
        if st is None and self._in_place(mv, offset, end):
            # Aligned where it is (a connection's buffer, ``dsmirror._fetch.wire.ALIGN``): written
            # from there, no copy; an unaligned end of the file plainly.
            n = len(mv) - len(mv) % ALIGN
            self._direct(fi, mv[:n], offset)
            if n < len(mv):
                self._plain(fi, mv[n:], offset + n)
            return []
        if st is None:
            head = min(len(mv), -offset % ALIGN) if self.enabled else len(mv)
            if head:
                self._plain(fi, mv[:head], offset)
                offset += head
                mv = mv[head:]
            if not mv:
                return []
            st = _Staged(fi, offset, self._take_buffer())
        try:
            while mv:
                k = min(len(mv), STAGE - st.fill)
                st.buf.view[st.fill : st.fill + k] = mv[:k]
                st.fill += k
                mv = mv[k:]
                if st.fill == STAGE:
                    self._direct(st.fi, st.buf.view, st.base)
                    st.base += STAGE
                    st.fill = 0
        except BaseException:
            self._give_buffer(st.buf)  # the piece's bytes are lost: its write fails
            raise
        if st.end >= end:
            self._write_out(st)
            return []
        old: list[tuple[int, _Staged]] = []
        with self._lock:
            self._staged[index] = st
            while len(self._staged) > MAX_STAGED:
                i, s = self._staged.popitem(last=False)
                self._busy.add(i)  # pushed out: claimed until written
                old.append((i, s))
        return old

    def _claim(self, index: int) -> _Staged | None:
        """Take piece ``index``'s staged bytes for this thread (None: it has none), once no other
        thread holds them; raise the error a write-out of its bytes by another thread met."""
        with self._lock:
            while index in self._busy:
                self._idle.wait()
            err = self._failed.pop(index, None)
            if err is not None:
                raise err
            self._busy.add(index)
            return self._staged.pop(index, None)

    def _evict(self, index: int, st: _Staged) -> None:
        """Write out the staged bytes of piece ``index``, pushed out by another piece's write: an
        error is kept for the piece (its next ``write`` or ``flush``), not raised here."""
        try:
            self._write_out(st)
        except OSError as exc:
            with self._lock:
                self._failed[index] = exc.with_traceback(None)  # its frames hold views of buffers
        finally:
            with self._lock:
                self._busy.discard(index)
                self._idle.notify_all()

    def _in_place(self, mv: memoryview, offset: int, end: int) -> bool:
        """Whether ``mv`` can be written directly as it is: aligned in memory and in the file, and
        whole blocks or up to the end of the piece (at least one block), and writer on."""
        if not self.enabled or offset % ALIGN or len(mv) < ALIGN:
            return False
        if len(mv) % ALIGN and offset + len(mv) != end:
            return False
        return _address(mv) % ALIGN == 0

    def flush(self, index: int) -> None:
        """Write out what piece ``index`` has staged (before it is journaled, or read)."""
        st = self._claim(index)
        try:
            if st is not None:
                self._write_out(st)
        finally:
            with self._lock:
                self._busy.discard(index)
                self._idle.notify_all()

    def discard(self) -> None:
        """Forget every staged byte (the store closes: those pieces are not journaled) and the pool."""
        with self._lock:
            bufs = [st.buf for st in self._staged.values()] + self._pool
            self._staged.clear()
            self._failed.clear()
            self._pool = []
        for b in bufs:
            b.free()

    @property
    def staged(self) -> int:
        """Pieces with staged bytes now."""
        with self._lock:
            return len(self._staged)

    def _write_out(self, st: _Staged) -> None:
        """Write ``st``'s bytes: the aligned front directly, an unaligned last part plainly."""
        try:
            n = st.fill
            aligned = n - n % ALIGN
            if aligned:
                self._direct(st.fi, st.buf.view[:aligned], st.base)
            if n > aligned:
                self._plain(st.fi, st.buf.view[aligned:n], st.base + aligned)
        finally:
            self._give_buffer(st.buf)

    def _direct(self, fi: int, view: memoryview, offset: int) -> None:
        """Write ``view`` (aligned) at ``offset`` through the direct descriptor where it can.

        What a short write leaves goes out plainly if it no longer starts on a boundary (a direct
        write there is refused); only EINVAL or the like switches the writer off.
        """
        if self.enabled:
            with self._use(fi, True) as fd:
                if fd >= 0:
                    done = 0
                    try:
                        while done < len(view) and not done % ALIGN:
                            done += _pwrite(fd, view[done:], offset + done)
                    except OSError as exc:
                        if exc.errno not in _REFUSED:
                            raise
                        self.enabled = False  # refused here: plain writes from now on
                    self.direct_bytes += done
                    view, offset = view[done:], offset + done
        if view:
            self._plain(fi, view, offset)

    def _plain(self, fi: int, view: memoryview, offset: int) -> None:
        with self._use(fi, False) as fd:
            _pwrite_all(fd, view, offset)

    def _take_buffer(self) -> _Buffer:
        with self._lock:
            if self._pool:
                return self._pool.pop()
        return _Buffer()

    def _give_buffer(self, buf: _Buffer) -> None:
        with self._lock:
            if len(self._pool) < _POOL:
                self._pool.append(buf)
                return
        buf.free()


def _address(mv: memoryview) -> int:
    """Where ``mv``'s first byte is in memory (-1 if it cannot be told: a read-only buffer)."""
    if mv.readonly or not mv.c_contiguous:
        return -1
    return ctypes.addressof(ctypes.c_char.from_buffer(mv))


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """pwrite(2) all of ``view``: a regular file writes less only when it fills the disk (ENOSPC
    follows) or a signal interrupts it."""
    done = 0
    while done < len(view):
        done += _pwrite(fd, view[done:], offset + done)


def _pwrite(fd: int, view: memoryview, offset: int) -> int:
    """One pwrite(2); a write of nothing (never for a regular file with room) is an error, not a
    loop forever."""
    n = os.pwrite(fd, view, offset)
    if n <= 0:
        raise OSError(errno.EIO, "pwrite wrote nothing")
    return n
