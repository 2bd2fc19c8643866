"""The crash-safe store: journal recovery, re-verification, locking, space checks, installation.

The journal is written here by hand from the format drawn in ``dsmirror._journal.store``'s docstring, so
these tests also pin that format: a 44-byte header (magic, manifest SHA-256, CRC-32) and 12-byte
records (kind, piece index or, for C, the journal offset it covers, CRC-32), and 48-byte H records
(where a whole-file hasher stands: tests/test_store_hashstate.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import dsmirror
from dsmirror import AlreadyInProgress, DiskFull, Manifest, StorageError, Store
from dsmirror._core.fsutil import storage_errors
from dsmirror.testing import write_random_tree

KiB = 1 << 10
MiB = 1 << 20
PS = 16 * KiB
SIZES = {"a.bin": 5 * PS + 100, "b/c.bin": 2 * PS, "e.bin": 0, "d.bin": PS - 1}
HEADER = 44
RECORD = 12


# -- the documented journal format, written independently of the store ----------------------------
def journal_header(manifest: Manifest, magic: bytes = b"DSMJRNL2") -> bytes:
    head = magic + bytes.fromhex(manifest.sha256)
    return head + struct.pack("<I", zlib.crc32(head))


def record(kind: str, index: int = 0) -> bytes:
    head = struct.pack("<B3xI", ord(kind), index)
    return head + struct.pack("<I", zlib.crc32(head))


def W(*indices: int) -> bytes:
    return b"".join(record("W", i) for i in indices)


class _Commit(bytes):
    """A C record appended to a journal: it covers the W records before its own offset.

    ``journal + C`` computes that offset from the bytes before it (``bytes.__add__`` defers to a
    subclass's ``__radd__``), so journals read like the sequence of records they hold.
    """

    def __radd__(self, other: bytes) -> bytes:
        return bytes(other) + record("C", len(other))


C = _Commit()


def parse_journal(data: bytes) -> list[tuple[str, int]]:
    """(kind, index) of every record; for H, index is the file and the count and state are skipped."""
    out = []
    off = HEADER
    while off < len(data):
        if data[off] == ord("H"):
            kind, fi, _count, _words, crc = struct.unpack_from("<B3xII32sI", data, off)
            assert crc == zlib.crc32(data[off : off + 44])
            out.append(("H", fi))
            off += 48
            continue
        kind, index, crc = struct.unpack_from("<B3xII", data, off)
        assert crc == zlib.crc32(data[off : off + 8])
        out.append((chr(kind), index))
        off += RECORD
    return out


# -- helpers --------------------------------------------------------------------------------------
class Model:
    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self.m = manifest
        self._bytes = {f.path: (root / f.path).read_bytes() for f in manifest.files}

    def piece_bytes(self, i: int) -> bytes:
        p = self.m.pieces[i]
        return self._bytes[p.path][p.offset : p.offset + p.length]

    def fill(self, store: Store, indices: Iterable[int]) -> None:
        """Write and mark verified, as the engine does for a piece that passed its hash."""
        for i in indices:
            p = self.m.pieces[i]
            store.write(p, 0, self.piece_bytes(i))
            assert store.mark_verified(p)

    def fill_all(self, store: Store) -> None:
        self.fill(store, range(self.m.num_pieces))


@pytest.fixture
def model(tmp_path: Path) -> Model:
    root = tmp_path / "src"
    write_random_tree(root, SIZES, seed=11)
    return Model(root, dsmirror.create_manifest(root, name="store-test", piece_size=PS))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "dest"


def area(dest: Path, m: Manifest) -> Path:
    return dest / ".dsmirror" / "partial" / m.sha256


def done_set(store: Store) -> set[int]:
    return {i for i in range(store.manifest.num_pieces) if store.is_done(i)}


def data_file(dest: Path, m: Manifest, rel: str) -> Path:
    return area(dest, m) / "data" / rel


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def pieces_of(m: Manifest, rel: str) -> list[int]:
    fi = [f.path for f in m.files].index(rel)
    return list(m.file_piece_ranges[fi])


def prepare_area(model: Model, dest: Path, verified: Iterable[int], journal: bytes) -> None:
    """A partial area whose data files hold ``verified`` pieces and whose journal is ``journal``."""
    with Store.open(dest, model.m) as s:
        model.fill(s, verified)
    (area(dest, model.m) / "journal").write_bytes(journal)


# -- the journal ----------------------------------------------------------------------------------
def test_journal_written_as_documented(model: Model, dest: Path) -> None:
    m = model.m
    with Store.open(dest, m) as s:
        model.fill(s, [0, 2])
        s.commit()
        model.fill(s, [1])
        raw = (area(dest, m) / "journal").read_bytes()
        assert raw[:HEADER] == journal_header(m)
        assert (len(raw) - HEADER) % RECORD == 0
        recs = parse_journal(raw)
        # W records for 0 and 2, then a commit; piece 1 is written but not committed yet.
        assert recs[-1] == ("W", 1)
        last_c = max(k for k, r in enumerate(recs) if r[0] == "C")
        assert {i for kind, i in recs[:last_c] if kind == "W"} == {0, 2}
        s.commit()
        assert parse_journal((area(dest, m) / "journal").read_bytes())[-1][0] == "C"
    assert (area(dest, m) / "manifest.json").read_bytes() == m.canonical_bytes


def test_committed_pieces_are_trusted_without_rehashing(model: Model, dest: Path) -> None:
    m = model.m
    with Store.open(dest, m) as s:
        model.fill(s, [0, 1, 5])
        s.commit()
    with Store.open(dest, m) as s:
        assert done_set(s) == {0, 1, 5}
        assert s.stats.trusted_pieces == 3
        assert s.stats.reverified_pieces == s.stats.rejected_pieces == 0
        assert s.verified_bytes == sum(m.pieces[i].length for i in (0, 1, 5))


def test_written_after_last_commit_is_reverified(model: Model, dest: Path) -> None:
    m = model.m
    # 0, 1 committed; 2, 3 and 4 written after the last commit (the process died before the next
    # one). 2 and 3 reached the disk, 4 did not (power loss).
    prepare_area(model, dest, [0, 1, 2, 3], journal_header(m) + C + W(0, 1) + C + W(2, 3, 4))
    seen: list[int] = []
    with Store.open(dest, m, on_reverify=seen.append) as s:
        assert done_set(s) == {0, 1, 2, 3}
        assert s.stats.trusted_pieces == 2
        assert s.stats.reverified_pieces == 2
        assert s.stats.rejected_pieces == 1
        assert sorted(seen) == sorted(m.pieces[i].length for i in (2, 3, 4))
    # And what the first recovery learnt is durable: piece 4 is not trusted on the next open.
    with Store.open(dest, m) as s:
        assert done_set(s) == {0, 1, 2, 3}
        assert s.stats.reverified_pieces == 0


@pytest.mark.parametrize("tail", [1, 5, 11], ids=lambda n: f"{n}-bytes")
def test_torn_tail_record_is_ignored(model: Model, dest: Path, tail: int) -> None:
    m = model.m
    torn = W(2)[:tail]
    prepare_area(model, dest, [0, 1, 2], journal_header(m) + W(0) + C + W(1) + C + torn)
    with Store.open(dest, m) as s:
        assert done_set(s) == {0, 1}
        assert s.stats.trusted_pieces == 2
    raw = (area(dest, m) / "journal").read_bytes()
    assert (len(raw) - HEADER) % RECORD == 0, "the torn record is cut off"


def test_corrupt_record_ends_what_is_trusted(model: Model, dest: Path) -> None:
    m = model.m
    bad = bytearray(W(1))
    bad[-1] ^= 0xFF  # CRC mismatch
    # A record for a piece index that does not exist is just as corrupt.
    for damage in (bytes(bad), record("W", m.num_pieces + 7), record("Z", 1)):
        prepare_area(model, dest, [0, 1, 2], journal_header(m) + W(0) + C + damage + W(2) + C)
        with Store.open(dest, m) as s:
            assert 0 in done_set(s)
            assert s.stats.trusted_pieces == 1  # nothing after the damage is trusted blindly
        shutil.rmtree(dest)


def test_damage_inside_the_journal_keeps_pieces_that_verify(model: Model, dest: Path) -> None:
    m = model.m
    bad = bytearray(W(1))
    bad[-1] ^= 0xFF
    prepare_area(model, dest, [0, 1, 2], journal_header(m) + W(0) + C + bytes(bad) + W(2) + C)
    with Store.open(dest, m) as s:
        assert done_set(s) == {0, 1, 2}


@pytest.mark.parametrize("damage", ["garbage", "other-manifest", "short"])
def test_untrusted_header_reverifies_everything_and_keeps_good_pieces(
    model: Model, dest: Path, damage: str
) -> None:
    m = model.m
    a_pieces = pieces_of(m, "a.bin")
    other = dsmirror.Manifest("other", PS, m.files)
    header = {
        "garbage": os.urandom(HEADER),
        "other-manifest": journal_header(other),
        "short": journal_header(m)[:30],
    }[damage]
    all_pieces = range(m.num_pieces)
    journal = header + W(*all_pieces) + C if damage != "short" else header
    prepare_area(model, dest, all_pieces, journal)
    flip(data_file(dest, m, "a.bin"), PS + 3)  # inside the second piece of a.bin
    with Store.open(dest, m) as s:
        assert done_set(s) == set(all_pieces) - {a_pieces[1]}
        assert s.stats.trusted_pieces == 0
        assert s.stats.reverified_pieces == m.num_pieces - 1
        assert s.stats.rejected_pieces == 1
    raw = (area(dest, m) / "journal").read_bytes()
    assert raw[:HEADER] == journal_header(m), "the journal is rewritten with a good header"


def test_truncated_data_file_keeps_what_verifies(model: Model, dest: Path) -> None:
    m = model.m
    a = pieces_of(m, "a.bin")
    with Store.open(dest, m) as s:
        model.fill_all(s)
        s.commit()
    os.truncate(data_file(dest, m, "a.bin"), 2 * PS + 10)  # pieces 0, 1 whole; 2 cut
    with Store.open(dest, m) as s:
        assert done_set(s) == set(range(m.num_pieces)) - set(a[2:])
        assert s.stats.reverified_pieces == 2
        assert s.stats.rejected_pieces == len(a) - 2
        assert data_file(dest, m, "a.bin").stat().st_size == m.files[0].size


def test_missing_data_file_is_fetched_again(model: Model, dest: Path) -> None:
    m = model.m
    with Store.open(dest, m) as s:
        model.fill_all(s)
        s.commit()
    data_file(dest, m, "b/c.bin").unlink()
    with Store.open(dest, m) as s:
        assert done_set(s) == set(range(m.num_pieces)) - set(pieces_of(m, "b/c.bin"))


@pytest.mark.parametrize("how", ["truncated", "missing", "whole-area-data-removed"])
def test_rejected_pieces_stay_rejected_on_the_next_open(model: Model, dest: Path, how: str) -> None:
    m = model.m
    a = pieces_of(m, "a.bin")
    with Store.open(dest, m) as s:
        model.fill_all(s)
        s.commit()
    if how == "truncated":
        os.truncate(data_file(dest, m, "a.bin"), PS)
    elif how == "missing":
        data_file(dest, m, "a.bin").unlink()
    else:
        shutil.rmtree(area(dest, m) / "data")
    with Store.open(dest, m) as s:
        first = done_set(s)
        assert not set(a[1:]) & first
    # e.g. the pull is interrupted right after it started; the next run opens the store again.
    with Store.open(dest, m) as s:
        assert done_set(s) == first
        if s.complete():
            s.finalize()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("old_journal", [False, True], ids=["journal-2", "journal-1-whole-file-pass"])
def test_changed_partial_file_between_pulls(
    old_journal: bool,
    model: Model,
    dest: Path,
    tmp_path: Path,
    start_mirrors: Callable[..., Any],
    catalog_file: Callable[..., Path],
    lib_pull: Callable[..., Any],
) -> None:
    """A byte of a committed piece changed on disk while no pull ran.

    Committed pieces, and committed whole-file hasher states, are trusted as verified: a resume
    reads back at most the pieces in flight (issue 14), so the pull does not see the change, and
    ``dsmirror verify`` is what finds bytes changed behind dsmirror's back. A version-1 journal
    (no hasher state) of a file that gets a whole-file pass (here: a manifest assembled from a
    registry listing, ``meta.source`` hf) is hashed whole again, which finds and repairs it.
    """
    m = Manifest(model.m.name, PS, model.m.files, meta={"source": "hf"}) if old_journal else model.m
    model = Model(model.root, m)
    mpath = tmp_path / "m.json"
    m.write(mpath)
    with Store.open(dest, m) as s:
        model.fill_all(s)
        s.commit()
    if old_journal:
        journal = journal_header(m, b"DSMJRNL1") + W(*range(m.num_pieces)) + C
        (area(dest, m) / "journal").write_bytes(journal)
    flip(data_file(dest, m, "a.bin"), 3)
    (mirror,) = start_mirrors(model.root, 1)
    lib_pull(mpath, catalog_file([mirror]), dest, deadline=10)
    report = dsmirror.verify_tree(m, dest)
    assert report.ok if old_journal else report.bad_files == ["a.bin"]


# -- fsync ordering ---------------------------------------------------------------------------------
def test_commit_covers_only_pieces_synced_before_it(
    model: Model, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = model.m
    d_piece = pieces_of(m, "d.bin")[0]
    with Store.open(dest, m) as s:
        model.fill(s, [0])  # a.bin is dirty
        journal_fd = s._journal_fd
        real = os.fdatasync
        raced: list[int] = []

        def racing_fdatasync(fd: int) -> None:
            if fd != journal_fd and not raced:
                # Another connection finishes a piece of d.bin while a.bin is being synced.
                raced.append(d_piece)
                model.fill(s, [d_piece])
            real(fd)

        monkeypatch.setattr(os, "fdatasync", racing_fdatasync)
        s.commit()
        monkeypatch.undo()
        assert raced
        recs = parse_journal((area(dest, m) / "journal").read_bytes())
        # A C record covers the W records that lie before the journal offset it names.
        cover = max(i for kind, i in recs if kind == "C")
        covered = {i for k, (kind, i) in enumerate(recs) if kind == "W" and HEADER + k * RECORD < cover}
        assert 0 in covered
        assert d_piece not in covered, "a commit vouches for bytes that were never synced"


def test_reverified_pieces_are_synced_before_they_are_committed(
    model: Model, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = model.m
    # Pieces 1 and 2 were journaled after the last commit: the process was killed before it.
    prepare_area(model, dest, [0, 1, 2], journal_header(m) + W(0) + C + W(1, 2))
    synced: list[str] = []
    real = os.fdatasync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", spy)
    monkeypatch.setattr(os, "fsync", spy)
    with Store.open(dest, m) as s:
        assert s.stats.reverified_pieces == 2
        at_open = list(synced)
    # The journal may be appended to or rewritten atomically (a temporary ".journal.*" renamed).
    journal_synced = [
        k for k, p in enumerate(at_open) if os.path.basename(p).startswith((".journal", "journal"))
    ]
    assert journal_synced, "the re-verified pieces were committed"
    data_synced = [k for k, p in enumerate(at_open) if p.endswith("/data/a.bin")]
    assert data_synced and data_synced[0] < journal_synced[0], at_open


# -- the lock -------------------------------------------------------------------------------------
def test_second_open_in_same_process_is_refused(model: Model, dest: Path) -> None:
    m = model.m
    with Store.open(dest, m) as first:
        model.fill(first, [0])
        with pytest.raises(AlreadyInProgress) as info:
            Store.open(dest, m)
        assert info.value.pid == os.getpid()
        assert info.value.exit_code == 6
        assert "already in progress" in str(info.value)
        # The refused open did not disturb the running one.
        model.fill(first, [1])
        first.commit()
        assert done_set(first) == {0, 1}
    with Store.open(dest, m) as again:
        assert done_set(again) == {0, 1}


def test_second_process_is_refused(model: Model, dest: Path, tmp_path: Path) -> None:
    m = model.m
    mpath = tmp_path / "m.json"
    m.write(mpath)
    code = textwrap.dedent(
        f"""
        import pathlib, dsmirror
        m = dsmirror.load_manifest(pathlib.Path({str(mpath)!r}))
        try:
            dsmirror.Store.open(pathlib.Path({str(dest)!r}), m)
        except dsmirror.AlreadyInProgress as exc:
            print("refused", exc.pid)
        else:
            print("opened")
        """
    )
    with Store.open(dest, m):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.stdout.split() == ["refused", str(os.getpid())], r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "opened", r.stdout + r.stderr


# -- space ----------------------------------------------------------------------------------------
def test_not_enough_space_fails_before_writing(small_tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    root = tmp_path / "big"
    write_random_tree(root, {"big.bin": 12 * MiB, "small.bin": 1000})
    m = dsmirror.create_manifest(root, piece_size=1 * MiB)
    fs = small_tmpfs("8m")
    with pytest.raises(DiskFull) as info:
        Store.open(fs / "dest", m)
    assert info.value.exit_code == 5
    assert info.value.needed >= 12 * MiB
    assert 0 < info.value.available <= 8 * MiB
    assert "not enough free space" in str(info.value)
    # Nothing was preallocated, and no lock is left behind.
    assert shutil.disk_usage(fs).used < 1 * MiB
    with pytest.raises(DiskFull):
        Store.open(fs / "dest", m)


def test_space_margin_is_required_too(small_tmpfs: Callable[..., Path], model: Model) -> None:
    # A tiny model fits in 8 MiB, but not with the 64 MiB safety margin on top.
    fs = small_tmpfs("8m")
    with pytest.raises(DiskFull):
        Store.open(fs / "dest", model.m)


def test_resume_on_a_full_disk_needs_no_new_space(
    small_tmpfs: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dsmirror._journal.store.SPACE_MARGIN", 0)
    root = tmp_path / "m"
    write_random_tree(root, {"a.bin": 5 * MiB})
    model = Model(root, dsmirror.create_manifest(root, piece_size=1 * MiB))
    fs = small_tmpfs("8m")
    with Store.open(fs / "dest", model.m) as s:
        model.fill(s, [0, 1])
    # Someone else fills the disk; the preallocated partial file still holds its space.
    free = shutil.disk_usage(fs).free
    with open(fs / "filler", "wb") as fh:
        fh.write(b"\0" * (free - 64 * KiB))
    with Store.open(fs / "dest", model.m) as s:
        assert done_set(s) == {0, 1}
        model.fill(s, range(2, 5))
        s.finalize()
    assert dsmirror.verify_tree(model.m, fs / "dest").ok


def test_read_only_destination(small_tmpfs: Callable[..., Path], model: Model) -> None:
    fs = small_tmpfs("8m", ro=True)
    for target in (fs, fs / "sub"):
        with pytest.raises(StorageError) as info:
            Store.open(target, model.m)
        assert info.value.exit_code == 5


@pytest.mark.parametrize(
    ("code", "kind", "text"),
    [
        (errno.ENOSPC, DiskFull, "disk full"),
        (errno.EDQUOT, DiskFull, "disk full"),
        (errno.EACCES, StorageError, "permission denied"),
        (errno.EROFS, StorageError, "read-only"),
        (errno.EIO, StorageError, "/x/y"),
    ],
)
def test_os_errors_become_storage_errors(code: int, kind: type[StorageError], text: str) -> None:
    with pytest.raises(kind) as info, storage_errors("/x/y"):
        raise OSError(code, os.strerror(code))
    assert text in str(info.value)
    assert info.value.exit_code == 5


# -- installing -----------------------------------------------------------------------------------
def test_finalize_renames_into_place_and_records_it(model: Model, dest: Path) -> None:
    m = model.m
    with Store.open(dest, m) as s:
        model.fill(s, range(m.num_pieces - 1))
        with pytest.raises(StorageError):
            s.finalize()  # not complete yet
        model.fill(s, [m.num_pieces - 1])
        inodes = {f.path: data_file(dest, m, f.path).stat().st_ino for f in m.files}
        for f in m.files:
            assert not (dest / f.path).exists(), "nothing appears under a final name before finalize"
        installed = s.finalize()
        assert sorted(installed) == sorted(f.path for f in m.files)
    for f in m.files:
        final = dest / f.path
        assert final.read_bytes() == (model.root / f.path).read_bytes()
        assert final.stat().st_ino == inodes[f.path], f"{f.path} was renamed, not copied"
    record = json.loads((dest / ".dsmirror" / "installed" / f"{m.sha256}.json").read_bytes())
    for f in m.files:
        st = (dest / f.path).stat()
        assert record[f.path] == [st.st_size, st.st_mtime_ns, st.st_ino]
    assert not area(dest, m).exists(), "the partial area is gone after a finished pull"
    assert dsmirror.verify_tree(m, dest).ok


def test_reopen_after_install_is_a_no_op(model: Model, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = model.m
    with Store.open(dest, m) as s:
        model.fill_all(s)
        s.finalize()

    def no_hashing(*a: object, **k: object) -> Any:
        raise AssertionError("an unchanged installed file was hashed again")

    monkeypatch.setattr("dsmirror._verify.digest.hash_file_pieces", no_hashing)
    with Store.open(dest, m) as s:
        assert s.complete()
        assert s.stats.reused_files == len(m.files)
        assert s.finalize() == []
    assert not area(dest, m).exists()
    monkeypatch.undo()
    assert dsmirror.verify_tree(m, dest).ok


def test_installed_file_touched_is_rechecked_changed_is_refetched(model: Model, dest: Path) -> None:
    m = model.m
    with Store.open(dest, m) as s:
        model.fill_all(s)
        s.finalize()
    os.utime(dest / "d.bin", ns=(1, 1))  # same bytes, new mtime: hashed again and accepted
    flip(dest / "a.bin", 0)  # changed bytes: that file is fetched again
    with Store.open(dest, m) as s:
        assert done_set(s) == set(range(m.num_pieces)) - set(pieces_of(m, "a.bin"))
        model.fill(s, pieces_of(m, "a.bin"))
        assert s.finalize() == ["a.bin"]
    assert dsmirror.verify_tree(m, dest).ok


def test_finalize_refuses_to_write_through_a_symlink(model: Model, dest: Path, tmp_path: Path) -> None:
    m = model.m
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "b").symlink_to(outside, target_is_directory=True)
    with Store.open(dest, m) as s:
        model.fill_all(s)
        with pytest.raises(StorageError, match="symlink"):
            s.finalize()
    assert list(outside.iterdir()) == []
