"""Writes that bypass the page cache (``dsmirror._journal.direct``) and the aligned views of ``wire``.

Pieces are written through aligned buffers and O_DIRECT when they are large: the bytes on disk
must be exactly those written, whatever the boundaries (offsets, chunk sizes, files whose size is
no multiple of the alignment, pieces continued after their staged front was written out); each
piece is handed to pwrite(2) before its W record; the fallbacks (no direct descriptor, a direct
write refused with EINVAL) write the same bytes through the page cache; and a file's direct
descriptor counts against the store's descriptor budget. ``wire`` places a body's bytes in phase
with their file offsets and hands out views that end on a boundary, so most writes go out from
the connection's buffer with no copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsmirror._core.errors import StorageError
from dsmirror._fetch import wire
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes
from dsmirror._journal import direct
from dsmirror._journal import store as store_module
from dsmirror._journal.direct import ALIGN, STAGE
from dsmirror._journal.store import Store

MiB = 1 << 20
PIECE = MiB  # >= direct.MIN_PIECE: the store writes directly


def manifest_of(contents: dict[str, bytes], piece: int = PIECE) -> Manifest:
    files = []
    for path, data in contents.items():
        hashes = tuple(hashlib.sha256(data[i : i + piece]).hexdigest() for i in range(0, len(data), piece))
        files.append(FileEntry(path, len(data), hashlib.sha256(data).hexdigest(), hashes))
    return Manifest("direct", piece, tuple(files))


def sizes_around(n: int) -> list[int]:
    return [n - 1, n, n + 1]


# File sizes on, one below and one above the alignment, the staging buffer and the piece size.
_EDGES = (ALIGN, STAGE, PIECE, 2 * PIECE + ALIGN)
SIZES = sorted({s for n in _EDGES for s in sizes_around(n)} | {1, 3 * PIECE + 12_345})


def write_in_chunks(store: Store, m: Manifest, data: dict[str, bytes], rnd: random.Random) -> None:
    """Every piece in random-sized chunks (1 byte to 300 KiB), pieces in a random order."""
    pieces = list(m.pieces)
    rnd.shuffle(pieces)
    for p in pieces:
        body = data[p.path][p.offset : p.offset + p.length]
        pos = 0
        while pos < len(body):
            n = rnd.choice([1, 100, ALIGN - 1, ALIGN, ALIGN + 1, 64 << 10, 300 << 10])
            store.write(p, pos, body[pos : pos + n])
            pos += n
        store.mark_verified(p)


@pytest.mark.parametrize("size", SIZES)
def test_any_chunking_of_any_size_lands_exactly(tmp_path: Path, size: int) -> None:
    rnd = random.Random(size)
    data = {"a.bin": rnd.randbytes(size), "b.bin": rnd.randbytes(size // 3 + 1)}
    m = manifest_of(data)
    with Store.open(tmp_path / "d", m) as store:
        assert store._aligned is not None
        write_in_chunks(store, m, data, rnd)
        assert store._aligned.staged == 0  # every verified piece was written out
        assert store.wait_checked(30)
        store.finalize()
    for path, want in data.items():
        assert (tmp_path / "d" / path).read_bytes() == want


def test_large_aligned_pieces_go_out_directly(tmp_path: Path) -> None:
    data = {"w.bin": random.Random(1).randbytes(4 * PIECE)}
    m = manifest_of(data)
    with Store.open(tmp_path / "d", m) as store:
        write_in_chunks(store, m, data, random.Random(2))
        assert store._aligned is not None
        if store._aligned.direct_bytes == 0:
            pytest.skip("this filesystem has no direct writes")
        assert store._aligned.enabled
        assert store._aligned.direct_bytes >= 3 * PIECE
        store.finalize()
    assert (tmp_path / "d" / "w.bin").read_bytes() == data["w.bin"]


def test_files_hashed_whole_are_written_through_the_page_cache(tmp_path: Path) -> None:
    """A file without piece hashes is read back by the whole-file hasher as its pieces arrive:
    through the page cache, where those reads find it."""
    rnd = random.Random(8)
    data = {"n.bin": rnd.randbytes(3 * PIECE + 5)}
    m = manifest_of(data)
    f = m.files[0]
    m = Manifest("direct", PIECE, (FileEntry(f.path, f.size, f.sha256, NoPieceHashes(len(f.pieces))),))
    with Store.open(tmp_path / "d", m) as store:
        write_in_chunks(store, m, data, rnd)
        assert store._aligned is not None and store._aligned.direct_bytes == 0
        assert store.wait_checked(30)
        store.finalize()
    assert (tmp_path / "d" / "n.bin").read_bytes() == data["n.bin"]


def test_small_pieces_are_written_through_the_page_cache(tmp_path: Path) -> None:
    data = {"s.bin": b"x" * 100_000}
    with Store.open(tmp_path / "d", manifest_of(data, piece=64 << 10)) as store:
        assert store._aligned is None


def test_a_piece_is_handed_to_pwrite_before_its_w_record(tmp_path: Path) -> None:
    """A piece whose bytes came out of order (back first) is staged at its front; marking it
    verified writes it out before the journal says so, and a reopen finds its bytes."""
    data = {"o.bin": random.Random(3).randbytes(2 * PIECE)}
    m = manifest_of(data)
    p = m.pieces[0]
    body = data["o.bin"][: p.length]
    dest = tmp_path / "d"
    store = Store.open(dest, m)
    try:
        store.write(p, PIECE // 2, body[PIECE // 2 :])  # ends the piece: written out
        store.write(p, 0, body[: PIECE // 2 - 10])  # staged: ends before the piece does
        store.write(p, PIECE // 2 - 10, body[PIECE // 2 - 10 : PIECE // 2])  # still staged
        assert store._aligned is not None and store._aligned.staged == 1
        assert store.read_piece(p) == body  # a read writes it out first
        store.write(p, 0, body[:ALIGN])  # staged again
        store.mark_verified(p)
        assert store._aligned.staged == 0
        store.commit()
    finally:
        os.close(store._lock_fd)  # as a kill -9 would leave it: nothing flushed by close()
        store._lock_fd = -1
        store._files.close_all()
    with Store.open(dest, m) as again:
        assert again.stats.trusted_pieces == 1
        assert again.read_piece(p) == body


def test_unverified_staged_bytes_are_dropped_at_close(tmp_path: Path) -> None:
    data = {"u.bin": random.Random(4).randbytes(PIECE)}
    m = manifest_of(data)
    with Store.open(tmp_path / "d", m) as store:
        store.write(m.pieces[0], 0, data["u.bin"][: 3 * ALIGN])
        assert store._aligned is not None and store._aligned.staged == 1
    assert store._aligned.staged == 0
    with Store.open(tmp_path / "d", m) as again:
        assert again.stats.trusted_pieces == 0


@pytest.mark.parametrize("how", ["no-direct-descriptor", "einval-on-write"])
def test_fallbacks_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Where the system has no direct descriptor (tmpfs before Linux 6.6, systems with neither
    O_DIRECT nor F_NOCACHE) or refuses a direct write (EINVAL), the bytes go through the page
    cache, the same ones."""
    if how == "no-direct-descriptor":
        monkeypatch.setattr(store_module, "open_direct", lambda path: None)
    else:
        real = os.pwrite
        direct_fds: set[int] = set()
        real_open = direct.open_direct

        def opened(path: Any) -> int | None:
            fd = real_open(path)
            if fd is not None:
                direct_fds.add(fd)
            return fd

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if fd in direct_fds:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, data, offset)

        monkeypatch.setattr(store_module, "open_direct", opened)
        monkeypatch.setattr(os, "pwrite", pwrite)
    rnd = random.Random(5)
    data = {"f.bin": rnd.randbytes(3 * PIECE + 777)}
    m = manifest_of(data)
    with Store.open(tmp_path / "d", m) as store:
        write_in_chunks(store, m, data, rnd)
        assert store._aligned is not None
        assert store._aligned.direct_bytes == 0
        if how == "einval-on-write" and direct_fds:
            assert not store._aligned.enabled  # switched off for good
        store.finalize()
    assert (tmp_path / "d" / "f.bin").read_bytes() == data["f.bin"]


def test_open_direct_without_o_direct_uses_f_nocache_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS has no O_DIRECT: F_NOCACHE on a descriptor of its own; a system with neither: None."""
    f = tmp_path / "x"
    f.write_bytes(b"")
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(direct.fcntl, "F_NOCACHE", 48, raising=False)
    monkeypatch.setattr(direct.fcntl, "fcntl", lambda fd, cmd, arg: calls.append((cmd, arg)) or 0)
    fd = direct.open_direct(f)
    assert fd is not None and calls == [(48, 1)]
    os.close(fd)
    monkeypatch.delattr(direct.fcntl, "F_NOCACHE")
    assert direct.open_direct(f) is None


def test_a_refused_flag_at_open_is_no_direct_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.open

    def refusing(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *a, **kw)

    (tmp_path / "x").write_bytes(b"")
    monkeypatch.setattr(os, "open", refusing)
    if getattr(os, "O_DIRECT", 0):
        assert direct.open_direct(tmp_path / "x") is None


def test_direct_descriptors_count_against_the_budget_and_are_synced_before_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many files under a budget of 16 descriptors: the direct ones count too, and no file is
    closed with bytes written since its last fdatasync (through either descriptor: one inode)."""
    monkeypatch.setattr(store_module, "fd_budget", lambda: 16)
    rnd = random.Random(6)
    data = {f"f{k:03d}.bin": rnd.randbytes(PIECE + k * 1000) for k in range(40)}
    m = manifest_of(data)
    real_open, real_pwrite, real_sync, real_close = os.open, os.pwrite, os.fdatasync, os.close
    ino: dict[int, int] = {}
    dirty: set[int] = set()
    spy: dict[str, Any] = {"most": 0, "closed_dirty": []}

    def opened(path: Any, flags: int, *a: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *a, **kw)
        if "/data/" in str(path):
            ino[fd] = os.fstat(fd).st_ino
            spy["most"] = max(spy["most"], len(ino))
        return fd

    def pwrite(fd: int, b: Any, off: int) -> int:
        if fd in ino:
            dirty.add(ino[fd])
        return real_pwrite(fd, b, off)

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        dirty.discard(ino.get(fd, -1))

    def close(fd: int) -> None:
        i = ino.pop(fd, None)
        if i is not None and i in dirty and i not in ino.values():
            spy["closed_dirty"].append(i)
        real_close(fd)

    for name, fn in (("open", opened), ("pwrite", pwrite), ("fdatasync", fdatasync), ("close", close)):
        monkeypatch.setattr(os, name, fn)
    dest = tmp_path / "d"
    with Store.open(dest, m) as store:
        write_in_chunks(store, m, data, rnd)
        store.commit()
        assert store._aligned is not None and store._aligned.direct_bytes > 0
    assert spy["most"] <= 16 + 1
    assert spy["closed_dirty"] == []
    with Store.open(dest, m) as again:
        assert again.stats.trusted_pieces == m.num_pieces
        again.finalize()
    assert all((dest / p).read_bytes() == b for p, b in data.items())


# -- wire: views in phase with the file -----------------------------------------------------------
DATA = random.Random(7).randbytes(3 * MiB + 333)


@contextlib.contextmanager
def serving(send: Any) -> Iterator[int]:
    """A server on 127.0.0.1 answering each GET with ``send(conn, start, end)``; its port."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    got = conn.recv(65536)
                    if not got:
                        return
                    buf += got
                head, buf = buf.split(b"\r\n\r\n", 1)
                rng = head.split(b"Range: bytes=")[1].split(b"\r\n")[0]
                start, end = (int(x) for x in rng.split(b"-"))
                conn.sendall(
                    b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
                    b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (end - start + 1, start, end, len(DATA))
                )
                send(conn, start, end)

    threading.Thread(target=run, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def fetch_views(port: int, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(file offset, length, in phase) of each view ``iter_body(align=start)`` hands out."""
    from dsmirror._fetch.transport import Sockets

    pool = wire.Pool(Sockets(), connect_timeout=5, stall_timeout=5, max_idle=2, user_agent="t")
    out = []
    got = bytearray()
    try:
        resp = pool.get("127.0.0.1", port, "/f", {"Range": f"bytes={start}-{end}"})
        at = start
        for v in resp.iter_body(borrowed=True, align=start):
            assert isinstance(v, memoryview)
            out.append((at, len(v), direct._address(v) % ALIGN == at % ALIGN))
            got += v
            at += len(v)
        resp.close()
    finally:
        pool.close()
    assert bytes(got) == DATA[start : end + 1]
    return out


@pytest.mark.parametrize("start", [0, 1, ALIGN - 1, ALIGN, 5 * ALIGN + 17, MiB])
def test_views_are_in_phase_and_end_on_boundaries(start: int) -> None:
    def send(conn: socket.socket, s: int, e: int) -> None:
        conn.sendall(DATA[s : e + 1])

    with serving(send) as port:
        views = fetch_views(port, start, len(DATA) - 1)
    assert all(ok for _, _, ok in views)
    # Every view but the last ends on a boundary: the store writes them in place.
    assert all((at + n) % ALIGN == 0 for at, n, _ in views[:-1])


def test_a_trickling_source_still_gets_its_bytes_handed_out_at_each_boundary() -> None:
    """Bytes that arrive slowly are handed out as soon as they reach a boundary: no waiting for
    a full buffer (the scheduler sees a slow source's progress as it comes)."""

    def send(conn: socket.socket, s: int, e: int) -> None:
        body = DATA[s : e + 1]
        for i in range(0, len(body), 3000):
            conn.sendall(body[i : i + 3000])
            time.sleep(0.002)

    with serving(send) as port:
        views = fetch_views(port, 100, 100 + 40 * ALIGN)
    assert all(ok for _, _, ok in views)
    assert all((at + n) % ALIGN == 0 for at, n, _ in views[:-1])
    assert len(views) > 10  # handed out as they came, not in one piece at the end


# -- staged bytes pushed out by another thread's write -------------------------------------------
class _File:
    """One real file of ``pieces`` pieces and its descriptors, lent as ``AlignedWriter`` asks;
    ``gate`` runs each time a descriptor is lent (to hold or fail a write in a given thread)."""

    def __init__(self, path: Path, pieces: int) -> None:
        path.write_bytes(b"")
        os.truncate(path, pieces * PIECE)
        self.fd = os.open(path, os.O_RDWR)
        self.direct_fd = direct.open_direct(path)
        self.gate: Any = None

    @contextlib.contextmanager
    def use(self, fi: int, want_direct: bool) -> Iterator[int]:
        if self.gate is not None:
            self.gate()
        if want_direct:
            yield -1 if self.direct_fd is None else self.direct_fd
        else:
            yield self.fd

    def close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd is not None:
                os.close(fd)


def _stage_one_more_than_max(w: direct.AlignedWriter) -> None:
    """Stage the front of pieces 1 .. MAX_STAGED: the least recently staged (piece 0) is pushed out."""
    for i in range(1, direct.MAX_STAGED + 1):
        w.write(i, 0, i * PIECE, bytes([i]) * (2 * ALIGN), (i + 1) * PIECE)


def _held_in(name: str, f: _File) -> tuple[threading.Event, threading.Event]:
    """Hold every descriptor lent in thread ``name`` until the second event is set; the first is
    set when one is asked for."""
    entered, release = threading.Event(), threading.Event()

    def gate() -> None:
        if threading.current_thread().name == name:
            entered.set()
            assert release.wait(10)

    f.gate = gate
    return entered, release


def test_a_flush_waits_for_the_write_out_another_thread_has_in_flight(tmp_path: Path) -> None:
    """Piece 0's staged front is pushed out by another connection's write, which is slow to
    write it (a busy disk); the flush before piece 0's W record must not return until those bytes
    were handed to pwrite(2) (it found nothing staged and returned at once: the journal could say
    the piece was written, a commit cover it, and the bytes land after, or never)."""
    f = _File(tmp_path / "f", direct.MAX_STAGED + 1)
    w = direct.AlignedWriter(f.use)
    front = random.Random(9).randbytes(2 * ALIGN)
    try:
        w.write(0, 0, 0, front, PIECE)
        entered, release = _held_in("pusher", f)
        t = threading.Thread(target=_stage_one_more_than_max, args=(w,), name="pusher")
        t.start()
        assert entered.wait(10)
        threading.Timer(0.3, release.set).start()
        w.flush(0)
        assert os.pread(f.fd, len(front), 0) == front  # on disk (or in the cache) when flush returns
        t.join(10)
    finally:
        release.set()
        w.discard()
        f.close()


def test_newer_bytes_of_a_piece_land_after_its_older_ones_in_flight(tmp_path: Path) -> None:
    """Piece 0's front from a connection that stopped is being written out by another thread when
    the piece is written again, whole, from another source: the newer bytes must be the ones left
    on disk (the older ones landed last, over a piece about to be journaled as verified)."""
    f = _File(tmp_path / "f", direct.MAX_STAGED + 1)
    w = direct.AlignedWriter(f.use)
    older = b"\x01" * (2 * ALIGN)
    newer = random.Random(10).randbytes(PIECE)
    try:
        w.write(0, 0, 0, older, PIECE)
        entered, release = _held_in("pusher", f)
        t = threading.Thread(target=_stage_one_more_than_max, args=(w,), name="pusher")
        t.start()
        assert entered.wait(10)
        threading.Timer(0.3, release.set).start()
        w.write(0, 0, 0, newer, PIECE)  # the whole piece: written out before this returns
        w.flush(0)
        t.join(10)
        assert os.pread(f.fd, PIECE, 0) == newer
    finally:
        release.set()
        w.discard()
        f.close()


def test_a_failed_write_out_of_a_pushed_out_piece_fails_that_piece(tmp_path: Path) -> None:
    """Writing out piece 0's staged bytes fails (EIO) in the write of another piece, which pushed
    them out: that write goes on (its own bytes are fine), and piece 0's flush raises, so the
    piece is not journaled without its bytes (the error went to the other connection and piece
    0's bytes were dropped: its flush found nothing and returned)."""
    f = _File(tmp_path / "f", direct.MAX_STAGED + 1)
    w = direct.AlignedWriter(f.use)

    def fail() -> None:
        raise OSError(errno.EIO, "Input/output error")

    try:
        w.write(0, 0, 0, b"\x02" * (2 * ALIGN), PIECE)
        f.gate = fail
        _stage_one_more_than_max(w)
        f.gate = None
        with pytest.raises(OSError) as exc:
            w.flush(0)
        assert exc.value.errno == errno.EIO
        w.flush(0)  # raised once; the piece is fetched again
    finally:
        w.discard()
        f.close()


def test_a_short_direct_write_leaves_the_writer_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A direct pwrite(2) that writes less than asked (a signal, a nearly full disk) and leaves an
    unaligned rest: the rest goes out plainly and later pieces still go out directly (the rest was
    written directly at an unaligned offset, refused with EINVAL, and the writer was switched off
    for the rest of the pull)."""
    f = _File(tmp_path / "f", 3)
    if f.direct_fd is None:
        f.close()
        pytest.skip("this filesystem has no direct writes")
    w = direct.AlignedWriter(f.use)
    real = os.pwrite
    short = {"left": 1}

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd == f.direct_fd and short["left"]:
            short["left"] -= 1
            n = len(data) // 2 + 100
            return real(f.fd, memoryview(data)[:n], offset)  # what the kernel wrote of it
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(11).randbytes(3 * PIECE)
    try:
        for i in range(3):
            w.write(i, 0, i * PIECE, data[i * PIECE : (i + 1) * PIECE], (i + 1) * PIECE)
            w.flush(i)
        assert short["left"] == 0
        assert w.enabled
        assert w.direct_bytes >= 2 * PIECE
        assert os.pread(f.fd, 3 * PIECE, 0) == data
    finally:
        w.discard()
        f.close()


def test_out_of_descriptors_for_the_direct_one_the_piece_is_written_plainly(tmp_path: Path) -> None:
    """The direct descriptor is a second one per file, opened on first use: when the process has
    none left (EMFILE: many files under a low ``ulimit -n``, other descriptors in use), the piece is
    written through the ordinary one and the pull goes on (it failed with StorageError)."""
    import resource

    data = {"e.bin": random.Random(12).randbytes(2 * PIECE)}
    m = manifest_of(data)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
    filler: list[int] = []
    try:
        with Store.open(tmp_path / "d", m) as store:
            p = m.pieces[0]
            with contextlib.suppress(OSError):
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            store.write(p, 0, data["e.bin"][: p.length])
            for fd in filler:
                os.close(fd)
            filler = []
            store.mark_verified(p)
            q = m.pieces[1]
            store.write(q, 0, data["e.bin"][q.offset : q.offset + q.length])
            store.mark_verified(q)
            store.finalize()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (tmp_path / "d" / "e.bin").read_bytes() == data["e.bin"]


def test_a_failed_direct_write_is_a_storage_error_and_the_store_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO from a direct write is a StorageError (its path), and closing the store afterwards, with
    the error still held (the engine keeps it as the pull's fatal error), is clean (the error's
    traceback held a view of a staging buffer, and close raised BufferError over it)."""
    real_open = direct.open_direct
    direct_fds: set[int] = set()

    def opened(path: Any) -> int | None:
        fd = real_open(path)
        if fd is not None:
            direct_fds.add(fd)
        return fd

    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if fd in direct_fds:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr(store_module, "open_direct", opened)
    monkeypatch.setattr(os, "pwrite", pwrite)
    data = {"x.bin": random.Random(13).randbytes(2 * PIECE)}
    m = manifest_of(data)
    store = Store.open(tmp_path / "d", m)
    held = []
    store.write(m.pieces[0], 0, data["x.bin"][: 3 * ALIGN])  # staged
    try:
        store.mark_verified(m.pieces[0])  # written out first: fails
    except StorageError as exc:
        held.append(exc)
    if not direct_fds:
        store.close()
        pytest.skip("this filesystem has no direct writes")
    assert held and "x.bin" in str(held[0])
    assert not store.is_done(0)
    store.close()  # no BufferError
    assert store.closed
