"""The whole-file hasher's lag is bounded by construction, not by how much CPU it gets.

Files without piece hashes (Hugging Face LFS files, Ollama blobs) are checked by their whole-file
SHA-256 only, hashed in order as their pieces arrive; what a kill -9 leaves to read back is what
was stored beyond the hashed prefix (issue 14's floor: the pieces in flight, not the model). The
hasher is a thread: under load it fell behind the connections and a kill left 20-50% of a pull to
read back. ``mark_verified`` now waits while more than ``hash_lag_limit`` bytes are stored, in
order, beyond the hashed prefixes. These tests run a real ``Store`` whose hasher is slowed down
(it sleeps as it reads back, as a thread starved of the GIL does); the resume reads are counted
with the real ``os.pread``/``os.preadv`` calls.
"""

from __future__ import annotations

import random
import shutil
import struct
import threading
import time
from pathlib import Path

import pytest

from dsmirror import Manifest, Store
from dsmirror._formats.manifest import FileEntry, NoPieceHashes
from dsmirror._verify.sha256 import RESUMABLE

KiB = 1 << 10
PS = 16 * KiB
PIECES = 256  # one file of 4 MiB
LIMIT = 16 * PS

pytestmark = pytest.mark.skipif(not RESUMABLE, reason="no libcrypto with SHA256_Init here")


class SlowHasher(Store):
    """A real store whose whole-file hasher takes 1 ms per piece it reads back (16 MB/s)."""

    def _hash_run(self, piece, last, sha, buf):  # type: ignore[no-untyped-def]
        time.sleep((last.index - piece.index + 1) / 1000)
        super()._hash_run(piece, last, sha, buf)


def _manifest(data: bytes) -> Manifest:
    import hashlib

    f = FileEntry("blob.bin", len(data), hashlib.sha256(data).hexdigest(), NoPieceHashes(PIECES))
    return Manifest("lag", PS, (f,))


@pytest.fixture
def blob() -> bytes:
    return random.Random(14).randbytes(PIECES * PS)


def _put(store: Store, m: Manifest, data: bytes, i: int) -> None:
    p = m.pieces[i]
    store.write(p, 0, data[p.offset : p.offset + p.length])
    assert store.mark_verified(p, source="m1", digest="")


def test_a_kill_after_a_fast_burst_reads_back_at_most_the_bound(
    tmp_path: Path, blob: bytes, reads: list[int]
) -> None:
    """All but the last piece arrive faster than the hasher reads; a commit, then a kill -9: the
    resume reads back at most twice the bound (the lag, and the run the hasher was reading), not
    the file (old code: nearly the whole 4 MiB)."""
    m, dest = _manifest(blob), tmp_path / "dest"
    s = SlowHasher.open(dest, m)
    try:
        s.hash_lag_limit = LIMIT
        for i in range(PIECES - 1):
            _put(s, m, blob, i)
        s.commit()
        crashed = tmp_path / "crashed"
        shutil.copytree(dest, crashed)  # what a kill -9 leaves: the files as the kernel has them
    finally:
        s.close()
    reads.clear()
    with Store.open(crashed, m) as s:
        assert s.stats.trusted_pieces == PIECES - 1
        _put(s, m, blob, PIECES - 1)
        assert s.wait_checked(30) and s.file_verified(0)
        # the lag and the run in progress, a piece over the bound each, and the last piece
        assert sum(reads) <= 2 * (LIMIT + PS) + PS, f"read back {sum(reads)} bytes of {len(blob)}"
        s.finalize()
    assert (crashed / "blob.bin").read_bytes() == blob


def _h_counts(dest: Path, m: Manifest) -> list[int]:
    """Pieces counted by each H record of the journal, in order (format: ``_journal/store.py``)."""
    data = (dest / ".dsmirror" / "partial" / m.sha256 / "journal").read_bytes()
    out, off = [], 44
    while off < len(data):
        if data[off] == ord("H"):
            _, _, count = struct.unpack_from("<B3xII", data, off)
            out.append(count)
            off += 48
        else:
            off += 12
    return out


def _run_writers(
    s: Store, m: Manifest, blob: bytes, spans: list[list[int]], delay: float
) -> tuple[int, list[BaseException]]:
    """One thread a list of pieces (the first waits ``delay`` before it starts), committing
    meanwhile: how far the hashed prefix (the last H record) trailed the pieces stored in order
    at worst, and the writers' errors."""
    stored: set[int] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def write(k: int, pieces: list[int]) -> None:
        try:
            if k == 0:
                time.sleep(delay)
            for i in pieces:
                _put(s, m, blob, i)
                with lock:
                    stored.add(i)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k, p)) for k, p in enumerate(spans)]
    for t in threads:
        t.start()
    worst = 0
    while any(t.is_alive() for t in threads):
        with lock:  # before the commit: the hasher only moves on meanwhile
            prefix = next((i for i in range(PIECES) if i not in stored), PIECES)
        s.commit()
        counted = max(_h_counts(s.dest, m), default=0)
        worst = max(worst, prefix - counted)
        time.sleep(0.002)
    for t in threads:
        t.join(30)
    return worst, errors


def test_many_writers_never_outrun_the_hasher(tmp_path: Path, blob: bytes) -> None:
    """Eight writer threads, pieces in turn (a little out of order): at every commit the hashed
    prefix trails the pieces stored in order by at most the bound and a piece per writer, twice
    (old code: by most of the file)."""
    m, dest = _manifest(blob), tmp_path / "dest"
    writers = 8
    with SlowHasher.open(dest, m) as s:
        s.hash_lag_limit = LIMIT
        worst, errors = _run_writers(s, m, blob, [list(range(k, PIECES, writers)) for k in range(writers)], 0)
        assert not errors, errors
        assert s.wait_checked(30) and s.file_verified(0)
        s.finalize()
    assert worst * PS <= 2 * (LIMIT + writers * PS), f"the hasher trailed by {worst} pieces"
    assert (dest / "blob.bin").read_bytes() == blob


def test_pieces_beyond_a_gap_do_not_block_the_writers(tmp_path: Path, blob: bytes) -> None:
    """Eight writers, each its own span of the file (as the scheduler hands them out), the first
    starting late: the others' pieces sit beyond a gap the hasher cannot cross, and they must not
    wait for it (no deadlock); once the gap is filled the hasher reads them and the file verifies."""
    m, dest = _manifest(blob), tmp_path / "dest"
    writers, per = 8, PIECES // 8
    with SlowHasher.open(dest, m) as s:
        s.hash_lag_limit = LIMIT
        spans = [list(range(k * per, (k + 1) * per)) for k in range(writers)]
        t0 = time.monotonic()
        _, errors = _run_writers(s, m, blob, spans, 0.3)
        assert not errors, errors
        assert s.wait_checked(30) and s.file_verified(0)
        assert time.monotonic() - t0 < 20
        s.finalize()
    assert (dest / "blob.bin").read_bytes() == blob


# -- in-order pieces are hashed as they are written ----------------------------------------------
def test_pieces_written_in_order_are_never_read_back(tmp_path: Path, blob: bytes, reads: list[int]) -> None:
    """Each piece in order, in writes of 4 KiB as a connection hands them over: the whole-file
    hash takes them as they are written (old code: read back, all 4 MiB)."""
    m, dest = _manifest(blob), tmp_path / "dest"
    with Store.open(dest, m) as s:
        reads.clear()
        for p in m.pieces:
            for at in range(0, p.length, 4 * KiB):
                s.write(p, at, memoryview(blob)[p.offset + at : p.offset + min(p.length, at + 4 * KiB)])
            assert s.mark_verified(p, source="m1", digest="")
        assert s.wait_checked(30) and s.file_verified(0)
        assert sum(reads) == 0, f"read back {sum(reads)} bytes"
        s.finalize()
    assert (dest / "blob.bin").read_bytes() == blob


@pytest.mark.parametrize("how", ["rewritten-from-its-start", "front-overwritten", "gap-then-rest"])
def test_the_hash_is_of_the_bytes_stored_last(tmp_path: Path, blob: bytes, how: str) -> None:
    """A piece whose bytes are written again (a dropped connection's front, then another source's
    copy), or not in order: the whole-file check is of what is on disk when the piece is marked.
    Bad bytes that stay on disk fail the file, bad bytes overwritten do not."""
    m, dest = _manifest(blob), tmp_path / "dest"
    k = 5
    p = m.pieces[k]
    good = blob[p.offset : p.offset + p.length]
    bad = bytes(len(good))
    with Store.open(dest, m) as s:
        for i in range(k):
            _put(s, m, blob, i)
        if how == "rewritten-from-its-start":  # a front of wrong bytes, then the whole good piece
            s.write(p, 0, bad[: PS // 2])
            s.write(p, 0, good)
        elif how == "front-overwritten":  # good bytes hashed, then their front overwritten: stays bad
            s.write(p, 0, good)
            s.write(p, 0, bad[:4096])
        else:  # the back first, then the front: not in order, read back (good)
            s.write(p, PS // 2, good[PS // 2 :])
            s.write(p, 0, good[: PS // 2])
        assert s.mark_verified(p, source="m1", digest="")
        for i in range(k + 1, PIECES):
            _put(s, m, blob, i)
        assert s.wait_checked(30) is (how != "front-overwritten")
        assert s.file_result(0) is (how != "front-overwritten")


def test_a_piece_invalidated_behind_the_hasher_rewinds_it_to_a_checkpoint_not_the_start(
    tmp_path: Path, blob: bytes, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the hasher close behind the writers, a late repair (a piece behind it invalidated or
    patched) used to start the file's hash again from its first byte: a pass over all of a 1 GiB
    file per repair (test_liars' late liar took 3x the time). It now starts from the last
    checkpoint (every HASH_CHECKPOINT bytes) before the piece."""
    import dsmirror._journal.store as store_mod

    # 8 checkpoints in the 4 MiB file
    monkeypatch.setattr(store_mod, "HASH_CHECKPOINT", 32 * PS, raising=False)
    m, dest = _manifest(blob), tmp_path / "dest"
    with Store.open(dest, m) as s:
        for i in range(PIECES):
            _put(s, m, blob, i)
        assert s.wait_checked(30) and s.file_verified(0)
        late = PIECES - 10  # in the last checkpoint's stretch
        s.invalidate([late])
        reads.clear()
        _put(s, m, blob, late)
        assert s.wait_checked(30) and s.file_verified(0)
        # Read back: from the checkpoint at piece 224 to the end, not all 256 pieces.
        assert 0 < sum(reads) <= 32 * PS, f"read back {sum(reads)} bytes of {len(blob)}"
        s.finalize()
    assert (dest / "blob.bin").read_bytes() == blob


class GatedHasher(Store):
    """A real store whose hasher, once ``armed``, stops inside its next read-back run (``inside``
    set) until ``gate`` is set."""

    armed = False

    def _hash_run(self, piece, last, sha, buf):  # type: ignore[no-untyped-def]
        if self.armed:
            self.armed = False
            self.inside.set()
            self.gate.wait(60)
        super()._hash_run(piece, last, sha, buf)


@pytest.mark.parametrize("how", ["patch", "invalidate"])
def test_a_repair_of_a_piece_the_hasher_is_reading_does_not_wait_for_it(
    tmp_path: Path, blob: bytes, how: str
) -> None:
    """The hasher held the store's hash lock while it read back a run (up to 16 MiB) and took it
    again at once for the next run, so a witness's patch (or an invalidation) waited until the
    hasher reached the file's end or a gap: 0.34 s a patch in test_liars' late liar (one 1.1 GiB
    file), whose repair of ~450 patches then took 140 s and timed out in CI. Now the repair goes
    on while the run is read, the run's result is dropped, and the hash is of the repaired bytes."""
    m, dest = _manifest(blob), tmp_path / "dest"
    k = 5  # the piece repaired, inside the run the hasher is stopped in
    at = m.pieces[k].offset + 100
    stored = bytearray(blob)
    stored[at] ^= 0xFF  # as a liar sent it
    with GatedHasher.open(dest, m) as s:
        s.inside, s.gate = threading.Event(), threading.Event()
        for i in range(1, PIECES):  # out of order: piece 0 last, so pieces 1.. are read back
            _put(s, m, bytes(stored), i)
        s.armed = True
        _put(s, m, bytes(stored), 0)
        assert s.inside.wait(30), "the hasher never read back a run"

        def repair() -> None:
            if how == "patch":
                assert s.patch(m.pieces[k], [(100, blob[at : at + 1])], ("m1", "")) is not None
            else:
                s.invalidate([k])
                _put(s, m, blob, k)

        t = threading.Thread(target=repair, daemon=True)
        t.start()
        t.join(20)
        done = not t.is_alive()
        s.gate.set()  # lets the hasher go on in any case (the old code's patch waits for it)
        t.join(30)
        assert done, f"the {how} waited for the hasher's run to end"
        assert s.wait_checked(30) and s.file_verified(0)
        s.finalize()
    assert (dest / "blob.bin").read_bytes() == blob
