"""The store's whole-file hashing: once per byte, and resumed from the journal, not from the start.

A file whose pieces all have published hashes is never read back (the pieces bind it); a file
without piece hashes (or without a whole-file digest, or from an assembled registry manifest) is
hashed in order as its pieces verify, and where its hasher stands is journaled (H records), so a
resume reads back only the pieces after the last committed state. The H records are checked here
against a SHA-256 written out in Python from FIPS 180-4, not against the store's own hasher.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import dsmirror
from dsmirror import Manifest, Store
from dsmirror._formats.manifest import FileEntry, NoPieceHashes
from dsmirror._verify.sha256 import RESUMABLE, ResumableSha256
from dsmirror.testing import write_random_tree

KiB = 1 << 10
PS = 16 * KiB
SIZES = {"a.bin": 6 * PS + 100, "b.bin": 3 * PS}
HEADER = 44

pytestmark = pytest.mark.skipif(not RESUMABLE, reason="no libcrypto with SHA256_Init here")


# -- SHA-256's compression function (FIPS 180-4), to check H records independently ---------------
_K = [
    int(x, 16)
    for x in [
        "428a2f98",
        "71374491",
        "b5c0fbcf",
        "e9b5dba5",
        "3956c25b",
        "59f111f1",
        "923f82a4",
        "ab1c5ed5",
        "d807aa98",
        "12835b01",
        "243185be",
        "550c7dc3",
        "72be5d74",
        "80deb1fe",
        "9bdc06a7",
        "c19bf174",
        "e49b69c1",
        "efbe4786",
        "0fc19dc6",
        "240ca1cc",
        "2de92c6f",
        "4a7484aa",
        "5cb0a9dc",
        "76f988da",
        "983e5152",
        "a831c66d",
        "b00327c8",
        "bf597fc7",
        "c6e00bf3",
        "d5a79147",
        "06ca6351",
        "14292967",
        "27b70a85",
        "2e1b2138",
        "4d2c6dfc",
        "53380d13",
        "650a7354",
        "766a0abb",
        "81c2c92e",
        "92722c85",
        "a2bfe8a1",
        "a81a664b",
        "c24b8b70",
        "c76c51a3",
        "d192e819",
        "d6990624",
        "f40e3585",
        "106aa070",
        "19a4c116",
        "1e376c08",
        "2748774c",
        "34b0bcb5",
        "391c0cb3",
        "4ed8aa4a",
        "5b9cca4f",
        "682e6ff3",
        "748f82ee",
        "78a5636f",
        "84c87814",
        "8cc70208",
        "90befffa",
        "a4506ceb",
        "bef9a3f7",
        "c67178f2",
    ]
]
_IV = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & 0xFFFFFFFF


def sha256_state(data: bytes) -> list[int]:
    """The eight state words after hashing ``data`` (a multiple of 64 bytes), before padding."""
    assert len(data) % 64 == 0
    h = list(_IV)
    for blk in range(0, len(data), 64):
        w = list(struct.unpack(">16I", data[blk : blk + 64]))
        for t in range(16, 64):
            s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
            s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
            w.append((w[t - 16] + s0 + w[t - 7] + s1) & 0xFFFFFFFF)
        a, b, c, d, e, f, g, hh = h
        for t in range(64):
            t1 = (
                hh + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
            ) & 0xFFFFFFFF
            t2 = ((_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & 0xFFFFFFFF
            a, b, c, d, e, f, g, hh = (t1 + t2) & 0xFFFFFFFF, a, b, c, (d + t1) & 0xFFFFFFFF, e, f, g
        h = [(x + y) & 0xFFFFFFFF for x, y in zip(h, [a, b, c, d, e, f, g, hh], strict=True)]
    return h


def test_the_reference_compression_is_sha256() -> None:
    """The padding of b"" is one block; its state after that block is SHA-256(b"")."""
    pad = b"\x80" + bytes(63)
    assert struct.pack(">8I", *sha256_state(pad)).hex() == hashlib.sha256(b"").hexdigest()


# -- the documented records, written independently of the store ------------------------------------
def journal_header(m: Manifest, magic: bytes = b"DSMJRNL2") -> bytes:
    head = magic + bytes.fromhex(m.sha256)
    return head + struct.pack("<I", zlib.crc32(head))


def record(kind: str, index: int = 0) -> bytes:
    head = struct.pack("<B3xI", ord(kind), index)
    return head + struct.pack("<I", zlib.crc32(head))


def state_record(fi: int, count: int, words: Iterable[int]) -> bytes:
    head = struct.pack("<B3xII8I", ord("H"), fi, count, *words)
    return head + struct.pack("<I", zlib.crc32(head))


def W(*indices: int) -> bytes:
    return b"".join(record("W", i) for i in indices)


def C(journal: bytes) -> bytes:
    """``journal`` with a commit that covers every record in it."""
    return journal + record("C", len(journal))


def h_records(data: bytes) -> list[tuple[int, int, tuple[int, ...]]]:
    """(file, pieces counted, state words) of every H record, in order."""
    out = []
    off = HEADER
    while off < len(data):
        if data[off] == ord("H"):
            _, fi, count, *words, crc = struct.unpack_from("<B3xII8II", data, off)
            assert crc == zlib.crc32(data[off : off + 44])
            out.append((fi, count, tuple(words)))
            off += 48
        else:
            off += 12
    return out


# -- helpers -------------------------------------------------------------------------------------
class Model:
    def __init__(self, root: Path, m: Manifest) -> None:
        self.root, self.m = root, m
        self.data = {f.path: (root / f.path).read_bytes() for f in m.files}

    def piece(self, i: int) -> bytes:
        p = self.m.pieces[i]
        return self.data[p.path][p.offset : p.offset + p.length]

    def fill(self, store: Store, indices: Iterable[int]) -> None:
        """As the engine does: write, then mark verified (with provenance when there is no hash)."""
        for i in indices:
            p = self.m.pieces[i]
            store.write(p, 0, self.piece(i))
            digest = hashlib.sha256(self.piece(i)).hexdigest()
            assert store.mark_verified(p, source="m1", digest=digest)

    def pieces_of(self, fi: int) -> range:
        return self.m.file_piece_ranges[fi]


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write_random_tree(root, SIZES, seed=3)
    return root


def whole_only(tmp_path: Path) -> Model:
    """Every file with a whole-file SHA-256 and no piece hashes (an HF LFS file, an Ollama blob)."""
    root = _tree(tmp_path)
    full = dsmirror.create_manifest(root, name="hashstate", piece_size=PS)
    files = tuple(FileEntry(f.path, f.size, f.sha256, NoPieceHashes(len(f.pieces))) for f in full.files)
    return Model(root, Manifest(full.name, PS, files))


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Bytes fed to whole-file hashers while the test runs (read back, or as they were written)."""
    got: list[int] = []
    update = ResumableSha256.update

    def counted(self: ResumableSha256, data: bytes | bytearray | memoryview) -> None:
        got.append(memoryview(data).nbytes)
        update(self, data)

    monkeypatch.setattr(ResumableSha256, "update", counted)
    yield got


def area(dest: Path, m: Manifest) -> Path:
    return dest / ".dsmirror" / "partial" / m.sha256


def wait_for_state(store: Store, dest: Path, fi: int, count: int) -> tuple[int, int, tuple[int, ...]]:
    """Commit until the journal holds an H record of file ``fi`` counting ``count`` pieces."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        store.commit()
        for rec in h_records((area(dest, store.manifest) / "journal").read_bytes()):
            if rec[0] == fi and rec[1] == count:
                return rec
        time.sleep(0.01)
    raise AssertionError(f"no H record of file {fi} at {count} pieces")


def crash_copy(dest: Path, to: Path) -> Path:
    """What a kill -9 leaves right now: the files as the kernel has them (no close, no commit)."""
    shutil.copytree(dest, to)
    return to


def v1_journal_of_all_but_the_last_piece(tmp_path: Path) -> tuple[Model, Path]:
    """A store of ``whole_only``'s model holding every piece of a.bin but its last, under a
    version-1 journal (no H records: no hasher state to resume from)."""
    model, dest = whole_only(tmp_path), tmp_path / "dest"
    a = model.pieces_of(0)
    with Store.open(dest, model.m) as s:
        model.fill(s, a[:-1])
    (area(dest, model.m) / "journal").write_bytes(C(journal_header(model.m, b"DSMJRNL1") + W(*a[:-1])))
    return model, dest


# -- tests ---------------------------------------------------------------------------------------
def test_h_records_hold_the_sha256_state_of_the_pieces_they_count(tmp_path: Path) -> None:
    model, dest = whole_only(tmp_path), tmp_path / "dest"
    with Store.open(dest, model.m) as s:
        a = model.pieces_of(0)
        model.fill(s, a[:4])
        fi, count, words = wait_for_state(s, dest, 0, 4)
        raw = (area(dest, model.m) / "journal").read_bytes()
    assert raw[:HEADER] == journal_header(model.m)
    assert list(words) == sha256_state(model.data["a.bin"][: 4 * PS])
    # Covered by a commit: the C after it names an offset beyond it.
    at = raw.index(state_record(fi, count, words))
    covers = [
        struct.unpack_from("<I", raw, off + 4)[0]
        for off in range(HEADER, len(raw), 12)
        if raw[off] == ord("C")
    ]
    assert any(c > at for c in covers)


def test_a_resume_reads_back_only_the_pieces_after_the_saved_state(
    tmp_path: Path, reads: list[int], hashed: list[int]
) -> None:
    model, dest = whole_only(tmp_path), tmp_path / "dest"
    a, b = model.pieces_of(0), model.pieces_of(1)
    s = Store.open(dest, model.m)
    try:
        model.fill(s, [*a[:-1], *b])
        wait_for_state(s, dest, 0, len(a) - 1)
        wait_for_state(s, dest, 1, len(b))
        crashed = crash_copy(dest, tmp_path / "crashed")
    finally:
        s.close()
    reads.clear()
    hashed.clear()
    with Store.open(crashed, model.m) as s:
        assert s.stats.trusted_pieces == len(a) - 1 + len(b)
        model.fill(s, [a[-1]])
        assert s.wait_checked(30)
        assert sum(hashed) == model.m.pieces[a[-1]].length, "hashed more than the piece after the state"
        # that piece came in order: hashed as it was written, not read back
        assert sum(reads) == 0
        s.finalize()
    assert (crashed / "a.bin").read_bytes() == model.data["a.bin"]
    assert (crashed / "b.bin").read_bytes() == model.data["b.bin"]


def test_a_version_1_journal_resumes_and_hashes_from_the_start(tmp_path: Path, reads: list[int]) -> None:
    model, dest = v1_journal_of_all_but_the_last_piece(tmp_path)
    a = model.pieces_of(0)
    reads.clear()
    with Store.open(dest, model.m) as s:
        assert s.stats.trusted_pieces == len(a) - 1 and s.stats.reverified_pieces == 0
        model.fill(s, [a[-1], *list(model.pieces_of(1))])
        assert s.wait_checked(30) and s.file_verified(0)
        assert sum(reads) >= SIZES["a.bin"], "a version-1 journal has no state: the file is hashed again"
        s.finalize()
    assert (dest / "a.bin").read_bytes() == model.data["a.bin"]


def test_stored_pieces_are_hashed_in_runs_not_one_read_a_piece(tmp_path: Path, reads: list[int]) -> None:
    """Pieces already stored when the hasher reaches them are read back as one run (up to 16 MiB a
    read): one read a piece gave up the GIL several times a MiB, and with busy connection threads
    the hasher fell to 20 MB/s, so a kill -9 left most of a fast pull to read back."""
    model, dest = v1_journal_of_all_but_the_last_piece(tmp_path)
    a = model.pieces_of(0)
    reads.clear()
    with Store.open(dest, model.m) as s:
        model.fill(s, [a[-1]])
        deadline = time.monotonic() + 30
        while not s.file_verified(0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.file_verified(0)
        assert sum(reads) == SIZES["a.bin"]
        # the 6 pieces stored before the hasher started in one read, the last one in one more
        assert len(reads) <= 2, f"{len(reads)} reads for {len(a)} pieces"


@pytest.mark.parametrize(
    "case", ["uncovered", "counts-untrusted-pieces", "x-after-it", "damaged", "data-file-resized", "good"]
)
def test_a_state_is_restored_only_when_the_journal_vouches_for_it(
    case: str, tmp_path: Path, hashed: list[int]
) -> None:
    model, dest = whole_only(tmp_path), tmp_path / "dest"
    a = model.pieces_of(0)
    k = 3
    words = sha256_state(model.data["a.bin"][: k * PS])
    with Store.open(dest, model.m) as s:
        model.fill(s, a[:k])
    head = journal_header(model.m)
    journal = {
        "good": C(head + W(*a[:k]) + state_record(0, k, words)),
        "uncovered": C(head + W(*a[:k])) + state_record(0, k, words),
        "counts-untrusted-pieces": C(head + W(*a[: k - 1]) + state_record(0, k, words)),
        "x-after-it": C(C(head + W(*a[:k]) + state_record(0, k, words)) + record("X", a[1])),
        "damaged": C(head + W(*a[:k]) + state_record(0, k, words)[:-1] + b"\0"),
        "data-file-resized": C(head + W(*a[:k]) + state_record(0, k, words)),
    }[case]
    (area(dest, model.m) / "journal").write_bytes(journal)
    if case == "data-file-resized":
        with open(area(dest, model.m) / "data" / "a.bin", "r+b") as fh:
            fh.truncate(SIZES["a.bin"] + 1)
    hashed.clear()
    with Store.open(dest, model.m) as s:
        model.fill(s, [i for i in range(model.m.num_pieces) if not s.is_done(i)])
        assert s.wait_checked(30) and s.file_verified(0), "the file verifies in every case"
    restored = SIZES["a.bin"] - k * PS
    assert sum(hashed) - SIZES["b.bin"] == (restored if case == "good" else SIZES["a.bin"]), case


def test_a_repair_voids_the_saved_state(tmp_path: Path, hashed: list[int]) -> None:
    """Pieces invalidated (their file failed its digest): the file is hashed again from the start,
    also after a crash (the X record comes after the state it voids)."""
    model, dest = whole_only(tmp_path), tmp_path / "dest"
    a = model.pieces_of(0)
    s = Store.open(dest, model.m)
    try:
        model.fill(s, a[:4])
        wait_for_state(s, dest, 0, 4)
        s.invalidate([a[1]])
        s.commit()
        crashed = crash_copy(dest, tmp_path / "crashed")
    finally:
        s.close()
    hashed.clear()
    with Store.open(crashed, model.m) as s:
        assert not s.is_done(a[1])
        model.fill(s, [i for i in range(model.m.num_pieces) if not s.is_done(i)])
        assert s.wait_checked(30) and s.file_verified(0)
        assert sum(hashed) == SIZES["a.bin"] + SIZES["b.bin"]


def test_files_bound_by_their_piece_hashes_are_never_read_back(tmp_path: Path, reads: list[int]) -> None:
    root = _tree(tmp_path)
    m = dsmirror.create_manifest(root, name="bound", piece_size=PS)  # piece hashes and digests
    model, dest = Model(root, m), tmp_path / "dest"
    with Store.open(dest, m) as s:
        model.fill(s, range(m.num_pieces))
        assert s.wait_checked(30) and all(s.file_verified(fi) for fi in range(len(m.files)))
        assert s.take_file_results() == [(0, True), (1, True)]
        s.finalize()
    assert sum(reads) == 0, "hashed twice: the pieces already bind these files"
    for rel, data in model.data.items():
        assert (dest / rel).read_bytes() == data


@pytest.mark.parametrize("how", ["hf-assembled", "no-whole-file-digest"])
def test_a_whole_file_pass_where_the_pieces_do_not_imply_the_digest(
    how: str, tmp_path: Path, hashed: list[int]
) -> None:
    """An HF manifest joins the registry's digest to piece hashes from another document: checked.
    A file with piece hashes and no digest: hashed once more, to learn its digest."""
    root = _tree(tmp_path)
    full = dsmirror.create_manifest(root, name="x", piece_size=PS)
    if how == "hf-assembled":
        m = Manifest(full.name, PS, full.files, meta={"source": "hf"})
    else:
        m = Manifest(full.name, PS, tuple(FileEntry(f.path, f.size, "", f.pieces) for f in full.files))
    model, dest = Model(root, m), tmp_path / "dest"
    with Store.open(dest, m) as s:
        model.fill(s, range(m.num_pieces))
        assert s.wait_checked(30)
        learned = s.learned_manifest()
        s.finalize()
    assert sum(hashed) == sum(SIZES.values())
    assert [f.sha256 for f in learned.files] == [f.sha256 for f in full.files]


def test_a_wrong_digest_still_fails_after_a_resume(tmp_path: Path) -> None:
    """The restored state continues the real digest: a manifest whose whole-file SHA-256 the bytes
    do not have still fails the check after a crash and a resume."""
    root = _tree(tmp_path)
    full = dsmirror.create_manifest(root, name="liar", piece_size=PS)
    files = tuple(FileEntry(f.path, f.size, "0" * 64, NoPieceHashes(len(f.pieces))) for f in full.files)
    model, dest = Model(root, Manifest(full.name, PS, files)), tmp_path / "dest"
    a = model.pieces_of(0)
    s = Store.open(dest, model.m)
    try:
        model.fill(s, a[:-1])
        wait_for_state(s, dest, 0, len(a) - 1)
        crashed = crash_copy(dest, tmp_path / "crashed")
    finally:
        s.close()
    with Store.open(crashed, model.m) as s:
        model.fill(s, [a[-1], *model.pieces_of(1)])
        assert not s.wait_checked(30)
        assert (0, False) in s.take_file_results()
