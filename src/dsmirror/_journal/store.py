"""The crash-safe store: where pieces land, how progress is journaled, how files move into place.

On-disk layout, for a pull of manifest ``M`` (identity ``<mid>`` = its SHA-256) into ``DEST``::

    DEST/
      <path>...                      final files; only ever created by rename(2) of a verified file
      .dsmirror/
        installed/<mid>.json         what was installed (path, size, mtime_ns, inode), so a re-run of a
                                     finished pull is a no-op without re-hashing; stale ones are re-verified
        partial/<mid>/
          lock                       flock(2)-ed by the running pull; holds its pid (text)
          manifest.json              canonical bytes of M (what this partial area belongs to)
          journal                    append-only progress journal (below)
          data/<path>...             partial files, preallocated to their full size

Journal format (version 2): a 44-byte header ``b"DSMJRNL2" + sha256(M) (32 bytes) + crc32(first 40
bytes) (u32 LE)`` followed by records, all little-endian: 12-byte ones ``struct("<B3xII")`` (kind,
piece index, crc32 of the first 8 bytes) and 48-byte ``H`` records ``struct("<B3xII32sI")``.

    kind b"W"  piece *i* was verified against the manifest and all its bytes were handed to pwrite(2);
               nothing was fsync-ed yet.
    kind b"C"  commit: its index field is a journal offset; every data file was fdatasync-ed after
               that offset was taken and before this record was written, so every W record before
               that offset describes bytes that are durably on disk.
    kind b"X"  piece *i* is no longer trusted (its file failed its whole-file digest and the piece is
               being fetched again from another source, or a witness patched bytes of it: ``patch``).
    kind b"H"  where file *f*'s whole-file hasher stands: ``kind, f, n, h, crc32(first 44 bytes)``:
               the first *n* pieces of file *f* (n x piece_size bytes, a multiple of 64, or the whole
               file when that is one) hash to the SHA-256 state words ``h`` (eight u32,
               ``dsmirror._verify.sha256``). Written by ``commit`` before it takes the offset its C
               covers, and only for pieces whose W records precede it.

A version-1 journal (``DSMJRNL1``, no H records) is read as before: its whole-file digests are
hashed from the first piece again.

For files without published piece hashes, ``provenance`` (text, one line per piece:
``<index> <source name> <sha256 of the bytes received>``, appended, advisory; the digest is empty
when the engine did not hash the piece on its own: no witness or swarm needed it, so each byte was
hashed once, by the whole-file hasher) remembers which source sent which piece, so that a
whole-file mismatch can be traced to the source that sent bad bytes, also after a resume.

Reading it back: pieces whose W record lies before the offset a later C covers are trusted. An H
record is trusted when a C covers it, no X for a piece of its file follows it, its file's data was
not found damaged (wrong size, missing) and every piece it counts is trusted: a restored hasher never
claims bytes that are not durably stored and verified (the C that covers it synced them, and its
pieces' W records precede it). The hasher continues from the last such record of each file, so a
resume reads back only the pieces after it (the last half second's, at the commit interval), not the
file. A torn
or corrupt record (a torn write can only be at the end) ends trust: W records after it are re-
verified. Pieces with a W record no commit covers (written, but the process or the machine died
before a commit) are *re-verified* by hashing: after ``kill -9`` their bytes are in the page cache
and they verify, so nothing is lost; after a power loss they may not, and are fetched again. A
missing, empty or damaged journal, one without a commit record (dsmirror always writes one), or a
data file of the wrong size means the journal cannot be trusted for those files: their pieces are
re-verified from the bytes on disk, and every piece that still verifies is kept.

Opening refuses, before any piece is hashed or anything per piece is allocated, a pull that cannot
fit (the files still missing plus ``SPACE_MARGIN``, 64 MiB), and, before any byte is fetched, a
final name that cannot take its file (a folder in its place, or a file where one of its folders
must go; a symlink on the way is refused when the file is installed). Nothing in the partial area
may be a symlink (its writes must land in ``DEST``): the area's folders are checked and its files
opened with ``O_NOFOLLOW``. Per-piece state is one byte per piece (``bytearray``): memory follows
the pull's piece count, never ``Piece`` objects.

Which files get a whole-file pass at all (``whole_file_pass``): every byte is hashed once where the
manifest's piece hashes already bind the file. A file whose every piece has a published SHA-256 in
the (trusted) manifest is exactly the bytes those hashes name: once each piece verified as it
streamed in, reading the file back to hash it whole could only find the manifest inconsistent with
itself, never a bad byte. So such a file gets no second pass when its whole-file SHA-256 comes from
the same document as its piece hashes (a dsmirror manifest, a signed shard manifest that lists
both): that digest is implied. A whole-file pass (in piece order, reading back the pieces as they
verify, while they are likely still in the page cache) remains where it says something the pieces
do not: a file without piece hashes (the digest is its only check); a file with piece hashes and no
published digest (the digest is learned, for serving and ``installed/<mid>.pieces.json``); and a
manifest assembled from a registry's listing (``meta.source`` in ``ASSEMBLED_SOURCES``: the Hugging
Face resolver joins the registry's LFS SHA-256, which names the blob in the HF cache, to piece
hashes from a published or signed piece manifest, two authorities that may disagree; the Hugging
Face and Ollama resolvers join a registry's digests to a ``dsmirror serve`` box's piece hashes,
``dsmirror._resolve.registries.proof``, and the registry's digest stays the authority).

Writes: pieces of at least ``direct.MIN_PIECE`` (piece sizes a multiple of 4096) of files without a
whole-file pass (those are read back, from the page cache) are written with
O_DIRECT through aligned buffers, or straight from a connection's buffer when ``wire`` placed the
bytes in phase (``dsmirror._journal.direct``), not through the page cache; a piece's staged bytes
are handed to pwrite(2) before its W record, so the records mean what they say above. Where the
system has no direct descriptor or refuses a direct write, writes go through the page cache.

Documented in docs/formats.md#the-store-partial-files-journal-provenance.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.errors import DiskFull, IntegrityError, StorageError
from dsmirror._core.fsutil import atomic_write_bytes, datasync, safe_join, storage_errors
from dsmirror._formats.manifest import FileEntry, Manifest, Piece, PieceHashes
from dsmirror._formats.private import PrivateArea
from dsmirror._journal.direct import ALIGN, MIN_PIECE, AlignedWriter, open_direct
from dsmirror._journal.files import OpenFiles, fd_budget, install_file, lock_area, write_install_record
from dsmirror._journal.provenance import Provenance
from dsmirror._verify.sha256 import ResumableSha256

__all__ = ["ASSEMBLED_SOURCES", "SPACE_MARGIN", "Store", "StoreStats", "whole_file_pass"]

_MAGIC = b"DSMJRNL2"
_MAGIC_V1 = b"DSMJRNL1"  # no H records: still read, its whole-file digests hashed from the start
_HEADER = struct.Struct("<8s32sI")
_RECORD = struct.Struct("<B3xII")
_STATE = struct.Struct("<B3xII32sI")  # H: file index, pieces hashed, SHA-256 state words, crc32
_W = ord("W")
_C = ord("C")
_X = ord("X")
_H = ord("H")
#: How much of a piece the whole-file hasher reads back at once (pieces may be up to 1 GiB).
_READ_CHUNK = 4 << 20
#: the most the whole-file hasher reads back in one step (a run of consecutive stored pieces)
_HASH_RUN = 16 << 20
#: How far the whole-file hashers may fall behind the pieces stored: ``mark_verified`` waits while
#: more than this is stored, in order, beyond the hashed prefix of the files (see ``_await_hasher``).
HASH_LAG = 32 << 20
#: The whole-file hashers keep their state every this many bytes (in memory): a patch or an
#: invalidated piece behind a hasher rewinds it to the last such point before the piece, not to
#: the file's start (with the hasher close behind the writers, see ``HASH_LAG``, each late repair
#: of a 1 GiB file cost a pass over all of it: test_liars' late liar took 3x the time).
HASH_CHECKPOINT = 64 << 20
#: ``meta.source`` of manifests a resolver assembles from a registry's listing, whose whole-file
#: digests come from another authority than their piece hashes (see the module docstring).
ASSEMBLED_SOURCES = frozenset({"hf", "ollama"})


def whole_file_pass(manifest: Manifest, fi: int) -> bool:
    """Whether file ``fi`` is hashed whole (read back in order) besides its piece checks."""
    f = manifest.files[fi]
    if not (f.pieces and f.pieces[0]):
        return True  # no piece hashes: the whole-file digest is the only check
    if not f.sha256:
        return True  # the pieces bind it; its digest is learned (serving, the learned manifest)
    return manifest.meta.get("source") in ASSEMBLED_SOURCES


#: Keep this much space free beyond what the pull needs (the README's "Layout on disk" says so).
SPACE_MARGIN = 64 << 20
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass
class StoreStats:
    trusted_pieces: int = 0  # from committed journal records
    reverified_pieces: int = 0  # W-after-C or untrusted journal: hashed again, kept
    rejected_pieces: int = 0  # journaled but no longer verifying: fetched again
    reused_files: int = 0  # already installed at DEST and unchanged


class Store:
    """Owns the partial area of one pull. Thread-safe for ``write``/``mark_verified``."""

    def __init__(self, dest: Path, manifest: Manifest) -> None:
        self.dest = dest
        self.manifest = manifest
        self.area = PrivateArea(dest).partial(manifest.sha256)
        self.data_dir = self.area / "data"
        self.installed_record = PrivateArea(dest).install_record(manifest.sha256)
        self.stats = StoreStats()
        self._done = bytearray()  # one byte per piece, made once the pull is known to fit
        self._file_done = [False] * len(manifest.files)  # installed under the final name
        self._files = OpenFiles(self._reopen, fd_budget(), self._open_direct)
        #: Pieces written through aligned buffers and O_DIRECT (``dsmirror._journal.direct``) when
        #: they are large and aligned; else (and where the system refuses) through the page cache.
        self._aligned: AlignedWriter | None = None
        if manifest.piece_size >= MIN_PIECE and manifest.piece_size % ALIGN == 0:
            self._aligned = AlignedWriter(self._use_for_writes)
        self._dirty: set[int] = set()
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._journal_fd = -1
        self._journal_end = 0
        self._lock_fd = -1
        self._pending_w = 0
        self._hashers: list[_FileHasher] = []
        #: per file: (pieces hashed, SHA-256 state) every HASH_CHECKPOINT bytes (see _rewind)
        self._checkpoints: list[list[tuple[int, bytes]]] = [[] for _ in manifest.files]
        self._hash_queue: queue.Queue[int | None] = queue.Queue()
        self._hash_thread: threading.Thread | None = None
        self._hash_error: BaseException | None = None
        self._hash_lock = threading.Lock()
        #: whole-file digest result per file: None = not checked yet (or pieces missing)
        self._file_ok: list[bool | None] = [None] * len(manifest.files)
        #: the whole-file digest of each file once its pieces were read back (for learned_manifest)
        self._learned_sha256: dict[int, str] = {}
        self._file_results: list[tuple[int, bool]] = []
        self.provenance = Provenance()  # compact: 34 bytes per piece recorded
        self._prov_fd = -1
        self.closed = False
        # Bytes of the pieces marked done, kept up to date (progress asks several times a second):
        # per file, and in all, received and verified. A file's pieces all have a published hash or
        # none has (the manifest format).
        self._hashed_file = [bool(f.pieces and f.pieces[0]) for f in manifest.files]
        self._needs_pass = [whole_file_pass(manifest, fi) for fi in range(len(manifest.files))]
        #: files whose hasher advanced since the last commit (an H record is due)
        self._advanced: set[int] = set()
        #: whole-file hasher states the journal vouches for: file -> (pieces hashed, state words)
        self._restored: dict[int, tuple[int, bytes]] = {}
        #: files whose data the journal cannot vouch for (missing, wrong size): no state restored
        self._distrusted_files: set[int] = set()
        self._file_stored = [0] * len(manifest.files)
        self._stored = 0
        self._verified = 0
        #: The hashers' lag (under ``_lock``): per file, the first piece not stored at or after its
        #: hashed prefix, the bytes stored in between (what the hasher can read now) and their sum.
        self._lag_end = [r.start for r in manifest.file_piece_ranges]
        self._lag_file = [0] * len(manifest.files)
        self._lag = 0
        #: ``mark_verified`` waits while ``_lag`` is above this (bytes; ``HASH_LAG``)
        self.hash_lag_limit = HASH_LAG
        self._hashed = threading.Condition(self._lock)  # notified as the hasher catches up
        self._hasher_stopped = False

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        dest: Path,
        manifest: Manifest,
        *,
        on_reverify: Callable[[int], None] | None = None,
    ) -> Store:
        """Lock the partial area, recover progress, check space and preallocate the files."""
        store = cls(dest, manifest)
        try:
            store._open(on_reverify)
        except BaseException:
            store.close()
            raise
        return store

    def _open(self, on_reverify: Callable[[int], None] | None) -> None:
        with storage_errors(self.dest):
            self.dest.mkdir(parents=True, exist_ok=True)
            if not os.access(self.dest, os.W_OK):
                raise StorageError(
                    f"cannot write to {self.dest}",
                    path=str(self.dest),
                    hint="choose a --dest you can write to",
                )
            # Through no symlink: the partial area's writes must land inside DEST.
            safe_join(self.dest, self.data_dir.relative_to(self.dest).as_posix())
            self.area.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
            self._check_space(self._space_needed(optimistic=True))
            self._done = bytearray(self.manifest.num_pieces)
            self._check_installed()
            if all(self._file_done):
                self._count_bytes()
                return
            self._check_final_paths()
            if not (self.area / "manifest.json").exists():
                self.manifest.write(self.area / "manifest.json")  # in chunks: 45 MB at 700k pieces
            suspect, states = self._recover_journal()
            self._load_provenance()
            self._prepare_files(suspect)
            self._reverify(suspect, on_reverify)
            self._restore_states(states)
            self._rewrite_journal()
        self._count_bytes()
        self._start_hasher()

    def _acquire_lock(self) -> None:
        self._lock_fd = lock_area(self.area, self.dest)

    def _check_installed(self) -> None:
        """Mark files already installed at DEST (unchanged since we installed them, or verifying)."""
        record: dict[str, list[int]] = {}
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(self.installed_record.read_bytes())
        for fi, f in enumerate(self.manifest.files):
            final = self.dest / f.path
            try:
                st = final.lstat()
            except (FileNotFoundError, NotADirectoryError):  # a file where its folder must go: below
                continue
            if not final.is_file() or final.is_symlink() or st.st_size != f.size:
                continue
            if record.get(f.path) == [st.st_size, st.st_mtime_ns, st.st_ino]:
                self._mark_file_installed(fi)
                continue
            # Present but not known to us: verify before trusting (a user copy, or a changed file).
            from dsmirror._verify.digest import hash_file_pieces

            _, digest, pieces = hash_file_pieces(final, self.manifest.piece_size)
            same = digest == f.sha256 or not f.sha256  # no whole-file digest: its pieces decide
            if same and (not f.pieces or not f.pieces[0] or list(pieces) == list(f.pieces)):
                self._mark_file_installed(fi)

    def _mark_file_installed(self, fi: int) -> None:
        self._file_done[fi] = True
        self.stats.reused_files += 1
        r = self.manifest.file_piece_ranges[fi]
        self._done[r.start : r.stop] = b"\x01" * len(r)

    def _space_needed(self, *, optimistic: bool) -> int:
        """Bytes the files not in place yet still need on disk (beyond their partial files' blocks).

        ``optimistic``: before anything is hashed, a file of the right size at its final name counts
        as in place (it may be reused); that bound refuses at once a pull that cannot fit anyway.
        """
        need = 0
        for fi, f in enumerate(self.manifest.files):
            if self._file_done[fi]:
                continue
            if optimistic:
                with contextlib.suppress(OSError):
                    st = (self.dest / f.path).lstat()
                    if stat.S_ISREG(st.st_mode) and st.st_size == f.size:
                        continue
            try:
                have = (self.data_dir / f.path).stat().st_blocks * 512
            except OSError:
                have = 0
            need += max(0, f.size - have)
        return need

    def _check_space(self, need: int) -> int:
        """Refuse (DiskFull) when ``need`` bytes and the margin do not fit; the free bytes."""
        free = shutil.disk_usage(self.area).free
        if need + SPACE_MARGIN > free and need > 0:
            raise DiskFull(path=str(self.dest), needed=need, available=free, margin=SPACE_MARGIN)
        return free

    def _check_final_paths(self) -> None:
        """Refuse now, not after the download, a final name that cannot take its file.

        A folder where the file must go, or a file where one of its folders must go. (A symlink on
        the way is refused when the file is installed, by ``install_file``.)
        """
        folders: set[Path] = set()  # checked already: files share their folders
        for fi, f in enumerate(self.manifest.files):
            if self._file_done[fi]:
                continue
            at = self.dest
            parts = f.path.split("/")
            for k, part in enumerate(parts):
                at = at / part
                last = k == len(parts) - 1
                if not last and at in folders:
                    continue
                try:
                    mode = at.lstat().st_mode
                except FileNotFoundError:
                    break  # nor anything below it
                if stat.S_ISLNK(mode):
                    break
                if last and stat.S_ISDIR(mode):
                    raise StorageError(
                        f"{at} is a folder, where the file {f.path} must go",
                        path=str(at),
                        hint="move or remove it, or choose another --dest",
                    )
                if not last and not stat.S_ISDIR(mode):
                    raise StorageError(
                        f"{at} is a file, where a folder of {f.path} must go",
                        path=str(at),
                        hint="move or remove it, or choose another --dest",
                    )
                if not last:
                    folders.add(at)

    def _journal_header(self, magic: bytes = _MAGIC) -> bytes:
        head = _HEADER.pack(magic, bytes.fromhex(self.manifest.sha256), 0)
        return head[:40] + struct.pack("<I", zlib.crc32(head[:40]))

    def _recover_journal(self) -> tuple[bytearray, dict[int, tuple[int, bytes]]]:
        """Read the journal; mark trusted pieces done. Returns the pieces to re-verify (1 each) and
        the whole-file hasher states commits cover (file -> (pieces hashed, state words))."""
        path = self.area / "journal"
        n = self.manifest.num_pieces
        ranges = self.manifest.file_piece_ranges
        suspect = bytearray(n)
        states: dict[int, tuple[int, bytes]] = {}
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()
        # Missing, empty, foreign or damaged, or never committed (dsmirror's journal always holds a
        # commit): trust none of it, re-verify every partial file from its bytes.
        distrust = True
        if len(data) >= _HEADER.size and data[: _HEADER.size] in (
            self._journal_header(),
            self._journal_header(_MAGIC_V1),
        ):
            pending: dict[int, int] = {}  # piece -> offset of its W record
            pending_h: list[tuple[int, int, int, bytes]] = []  # (offset, file, pieces, words)
            damaged = False
            committed = False
            off = _HEADER.size
            while off + _RECORD.size <= len(data):
                if data[off] == _H and off + _STATE.size <= len(data):
                    _, fi, count, words, crc = _STATE.unpack_from(data, off)
                    if (
                        crc == zlib.crc32(data[off : off + _STATE.size - 4])
                        and fi < len(ranges)
                        and count <= len(ranges[fi])
                    ):
                        pending_h.append((off, fi, count, words))
                        off += _STATE.size
                        continue
                kind, index, crc = _RECORD.unpack_from(data, off)
                at, off = off, off + _RECORD.size
                if (
                    crc != zlib.crc32(data[at : at + 8])
                    or kind not in (_W, _C, _X)
                    or (kind != _C and index >= n)
                ):
                    # Bit rot inside the journal (a torn write can only be at the end): nothing after
                    # this point is trusted, but every W after it is re-verified rather than lost.
                    damaged = True
                    continue
                if kind == _W:
                    pending[index] = at
                elif kind == _X:
                    pending.pop(index, None)
                    suspect[index] = 0
                    if self._done[index]:
                        self._done[index] = 0
                        self.stats.trusted_pieces -= 1
                    # Its file is hashed again from the start: no earlier state of it holds.
                    fx = self.manifest.pieces[index].file_index
                    states.pop(fx, None)
                    pending_h = [h for h in pending_h if h[1] != fx]
                elif not damaged:
                    committed = True
                    # C covers the W records written before offset ``index`` (their data was synced).
                    for i, woff in list(pending.items()):
                        if woff < index:
                            del pending[i]
                            if not self._done[i]:
                                self._done[i] = 1
                                self.stats.trusted_pieces += 1
                    # ... and the H records before it, which count only pieces of such W records.
                    for hoff, fi, count, words in pending_h:
                        if hoff < index:
                            states[fi] = (count, words)
                    pending_h = [h for h in pending_h if h[0] >= index]
            for i in pending:
                suspect[i] = 1
            # A damaged record may have been any piece's: re-verify every piece not trusted.
            distrust = damaged or not committed
        if distrust:
            for fi, f in enumerate(self.manifest.files):
                if not self._file_done[fi] and (self.data_dir / f.path).exists():
                    r = self.manifest.file_piece_ranges[fi]
                    suspect[r.start : r.stop] = b"\x01" * len(r)
        for i in _ones(suspect):
            if self._done[i]:
                suspect[i] = 0
        return suspect, states

    def _restore_states(self, states: dict[int, tuple[int, bytes]]) -> None:
        """Keep the hasher states whose every counted piece is trusted now, in a trusted file."""
        for fi, (count, words) in states.items():
            r = self.manifest.file_piece_ranges[fi]
            if (
                self._needs_pass[fi]
                and not self._file_done[fi]
                and fi not in self._distrusted_files
                and count
                and self._done.find(0, r.start, r.start + count) < 0
            ):
                self._restored[fi] = (count, words)

    def _rewrite_journal(self) -> None:
        """Compact the journal to what is trusted now (after data was synced), then append to it."""
        for fi, r in enumerate(self.manifest.file_piece_ranges):
            # The journal below vouches for the pieces marked done: their files' bytes must be
            # durable first (re-verified pieces were written by an earlier process).
            if not self._file_done[fi] and self._done.find(1, r.start, r.stop) >= 0:
                with self._files.use(fi) as fd:
                    datasync(fd)
        body = bytearray(self._journal_header())
        for fi, r in enumerate(self.manifest.file_piece_ranges):
            if not self._file_done[fi]:
                for i in _ones(self._done, r.start, r.stop):
                    body += _record(_W, i)
        for fi, (count, words) in sorted(self._restored.items()):
            body += _state_record(fi, count, words)  # after the W records of the pieces it counts
        body += _record(_C, len(body))
        atomic_write_bytes(self.area / "journal", bytes(body))
        self._journal_fd = os.open(self.area / "journal", os.O_WRONLY | os.O_APPEND)
        self._journal_end = len(body)

    def _load_provenance(self) -> None:
        path = self.area / "provenance"
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split(" ")
                if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) < self.manifest.num_pieces:
                    self.provenance[int(parts[0])] = (parts[1], parts[2])
        self._prov_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)

    def _prepare_files(self, suspect: bytearray) -> None:
        """Open (create, preallocate) every partial file after checking free space."""
        m = self.manifest
        for fi, f in enumerate(m.files):
            if self._file_done[fi]:
                continue
            r = m.file_piece_ranges[fi]
            try:
                st = (self.data_dir / f.path).stat()
            except FileNotFoundError:
                self._distrusted_files.add(fi)
                for i in _ones(self._done, r.start, r.stop):
                    self._done[i] = 0
                    self.stats.trusted_pieces -= 1
                    self.stats.rejected_pieces += 1
                suspect[r.start : r.stop] = bytes(len(r))
                continue
            if st.st_size != f.size:
                # Truncated or grown behind our back: the journal cannot vouch for this file.
                self._distrusted_files.add(fi)
                for i in _ones(self._done, r.start, r.stop):
                    self._done[i] = 0
                    self.stats.trusted_pieces -= 1
                    suspect[i] = 1
        free = self._check_space(self._space_needed(optimistic=False))
        for fi, f in enumerate(m.files):
            if self._file_done[fi]:
                continue
            p = safe_join(self.area, f"data/{f.path}")  # no symlink on the way, nor at the end
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
            self._files.add(fi, fd)
            if os.fstat(fd).st_size != f.size:
                os.ftruncate(fd, f.size)
            if f.size:
                try:
                    os.posix_fallocate(fd, 0, f.size)
                except OSError as exc:
                    if exc.errno == 28:
                        raise DiskFull(path=str(self.dest), needed=f.size, available=free) from exc
                    # EOPNOTSUPP and friends: the filesystem cannot reserve; go on without.

    def _reverify(self, suspect: bytearray, on_reverify: Callable[[int], None] | None) -> None:
        for i in _ones(suspect):
            piece = self.manifest.pieces[i]
            if not piece.sha256 and not self.provenance.get(i, ("", ""))[1]:
                # Nothing to check its bytes against (no published hash, none recorded): fetched
                # again without reading it back.
                self.stats.rejected_pieces += 1
                if on_reverify:
                    on_reverify(piece.length)
                continue
            with self._files.use(piece.file_index) as fd:
                data = os.pread(fd, piece.length, piece.offset)
            if piece.sha256 and hashlib.sha256(data).hexdigest() == piece.sha256:
                self._done[i] = 1  # made durable by _rewrite_journal, which syncs the data first
                self.stats.reverified_pieces += 1
            elif not piece.sha256 and hashlib.sha256(data).hexdigest() == self.provenance[i][1]:
                self._done[i] = 1  # no published hash: the bytes are what the source sent
                self.stats.reverified_pieces += 1
            else:
                self.stats.rejected_pieces += 1
            if on_reverify:
                on_reverify(piece.length)

    # -- the whole-file digests, computed in order, in the background --------------------------
    def _start_hasher(self) -> None:
        ps, files = self.manifest.piece_size, self.manifest.files
        self._hashers = [_FileHasher() for _ in files]
        for fi, (count, words) in self._restored.items():
            sha = ResumableSha256.restore(words, min(count * ps, files[fi].size))
            if sha is not None:  # else (no libcrypto here): hashed from the first piece again
                self._hashers[fi] = _FileHasher(sha, count)
        with self._lock:
            for fi, f in enumerate(files):
                # Bound by its piece hashes, all verified already: nothing left to check.
                if not self._needs_pass[fi] and not self._file_done[fi] and self._file_stored[fi] == f.size:
                    self._set_file_ok(fi, True)
                self._track_lag(fi)
        self._hash_thread = threading.Thread(target=self._hash_loop, name="dsmirror-filehash", daemon=True)
        self._hash_thread.start()
        for fi in range(len(files)):
            if self._needs_pass[fi]:
                self._hash_queue.put(fi)

    def _set_file_ok(self, fi: int, ok: bool) -> None:
        """File ``fi`` matched (or not) its whole-file check; caller holds ``_lock``."""
        before = self._verified_share(fi)
        self._file_ok[fi] = ok
        self._verified += self._verified_share(fi) - before
        self._file_results.append((fi, ok))

    def _span_bytes(self, start: int, stop: int) -> int:
        """Bytes of the pieces ``start`` .. ``stop - 1`` (one file's; none if ``stop <= start``)."""
        if stop <= start:
            return 0
        last = self.manifest.pieces[stop - 1]
        return last.offset + last.length - self.manifest.pieces[start].offset

    def _track_lag(self, fi: int) -> None:
        """Count file ``fi``'s lag again from its hasher's position (caller holds ``_lock``; after
        the hasher was made or replaced)."""
        r = self.manifest.file_piece_ranges[fi]
        lag, end = 0, r.start
        if self._needs_pass[fi] and not self._file_done[fi] and self._hashers:
            start = r.start + self._hashers[fi].next_piece
            end = self._done.find(0, start, r.stop)
            end = r.stop if end < 0 else end
            lag = self._span_bytes(start, end)
        self._lag += lag - self._lag_file[fi]
        self._lag_file[fi], self._lag_end[fi] = lag, end

    def _await_hasher(self) -> None:
        """Backpressure: wait while more than ``hash_lag_limit`` bytes are stored beyond the hashed
        prefixes, in order (what a kill now would leave to read back, besides pieces stored out
        of order, after a gap).

        The hasher can always read those (every piece they count is stored), so the wait ends
        without any other writer's help: no deadlock with pieces arriving out of order from
        several sources, whose bytes beyond a gap do not count until the gap is filled. Under
        load the hasher (another thread) got too little of the GIL to keep up with the
        connections: a kill -9 then left up to a fifth of the model to read back. The writers
        wait here, not the network: a whole-file pass cannot finish before its hasher anyway.
        """
        with self._lock:
            while self._lag > self.hash_lag_limit and not (self._hasher_stopped or self.closed):
                self._hashed.wait(0.5)

    def _hash_loop(self) -> None:
        try:
            self._hash_files()
        finally:
            with self._lock:
                self._hasher_stopped = True  # nobody waits for it any more (``_await_hasher``)
                self._hashed.notify_all()

    def _hash_files(self) -> None:
        piece_size = self.manifest.piece_size
        longest = max((f.size for fi, f in enumerate(self.manifest.files) if self._needs_pass[fi]), default=0)
        size = max(min(_READ_CHUNK, piece_size), min(_HASH_RUN, longest))
        # Grown to the longest run read so far (doubling, up to ``size``): a pull whose pieces
        # arrive one at a time holds one piece's worth, not 16 MiB, and never a cost of each piece.
        buf = bytearray(0)
        try:
            while (fi := self._hash_queue.get()) is not None:
                if self._file_done[fi]:
                    continue
                rng = self.manifest.file_piece_ranges[fi]
                while True:
                    with self._hash_lock:
                        h = self._hashers[fi]
                        if self._file_ok[fi] is not None:
                            break
                        with h.lock:  # against writers hashing the next piece as it streams in
                            if h.next_piece == len(rng):
                                digest, want = h.sha.hexdigest(), self.manifest.files[fi].sha256
                                # No whole-file digest published: every piece matched its own hash.
                                ok = digest == want if want else True
                                self._learned_sha256[fi] = digest
                                with self._lock:
                                    self._set_file_ok(fi, ok)
                                break
                            first = rng[h.next_piece]
                            if not self._done[first]:
                                break
                            if h.stream_piece == first and h.stream_pos == self.manifest.pieces[first].length:
                                self._adopt_stream(fi, h)  # hashed as it was written: not read back
                                continue
                            # The run of stored pieces from here, up to a buffer's worth, in one
                            # read: one piece a step gave up the GIL 3-4 times a MiB, and with busy
                            # connection threads each return waited a switch interval (20 MB/s vs
                            # 1.4 GB/s idle). It stops before a piece hashed as it streams in.
                            cap = min(rng.stop, first + max(1, size // piece_size))
                            if first < h.stream_piece:
                                cap = min(cap, h.stream_piece)
                            end = self._done.find(0, first, cap)
                            last = (cap if end < 0 else end) - 1
                            h.reading, h.read_to = True, last + 1 - rng.start
                    # Read and hashed without _hash_lock: a patch or an invalidation of a piece
                    # this run covers replaces the hasher (``_rewind``) instead of waiting for
                    # the run, and the run's result is then dropped. Held across the run, the lock
                    # was taken again at once by this loop: a patch waited for the hasher to
                    # reach the file's end (0.34 s a patch, 140 s for a late liar's repair).
                    run = self.manifest.pieces[last]
                    need = min(size, run.offset + run.length - self.manifest.pieces[first].offset)
                    if len(buf) < need:
                        buf = bytearray(min(size, max(need, 2 * len(buf))))
                    self._hash_run(self.manifest.pieces[first], self.manifest.pieces[last], h.sha, buf)
                    with self._hash_lock, h.lock:
                        h.reading = False
                        if self._hashers[fi] is h:
                            self._hashed_up_to(fi, h, last + 1)
        except BaseException as exc:  # reported by finalize()
            self._hash_error = exc

    def _hashed_up_to(self, fi: int, h: _FileHasher, stop: int) -> None:
        """File ``fi``'s hasher ``h`` has fed its pieces up to ``stop`` (absolute, exclusive):
        count it, wake the writers waiting for it, publish its state for the next commit's H
        record (caller holds ``h.lock``)."""
        start = self.manifest.file_piece_ranges[fi].start
        state = h.sha.state()
        if h.stream_piece < stop:
            h.stream, h.stream_piece = None, -1  # read back instead: no longer the next piece
        with self._lock:
            hashed = self._span_bytes(start + h.next_piece, stop)
            h.next_piece = stop - start
            self._lag_file[fi] -= hashed
            self._lag -= hashed
            self._hashed.notify_all()
            if state is not None:  # for commit: an H record of it is due
                h.published = (h.next_piece, state)
                self._advanced.add(fi)
                marks = self._checkpoints[fi]
                if (
                    self._hashers[fi] is h
                    and self._span_bytes(start + (marks[-1][0] if marks else 0), stop) >= HASH_CHECKPOINT
                ):
                    marks.append((h.next_piece, state))

    def _rewind(self, fi: int, local: int) -> None:
        """File ``fi``'s hash no longer holds from its piece ``local`` (index in the file) on:
        start it again from the last checkpoint at or before that piece (caller holds ``_lock``
        and ``_hash_lock``)."""
        marks = self._checkpoints[fi]
        while marks and marks[-1][0] > local:
            marks.pop()
        h = _FileHasher()
        if marks:
            count, words = marks[-1]
            start = self.manifest.file_piece_ranges[fi].start
            sha = ResumableSha256.restore(words, self._span_bytes(start, start + count))
            if sha is not None:
                h = _FileHasher(sha, count)
        self._hashers[fi] = h
        self._track_lag(fi)

    def _adopt_stream(self, fi: int, h: _FileHasher) -> None:
        """The piece ``h`` hashed as it was written is stored (marked done) and is the next one
        its file's hash needs: that hash continues from it (caller holds ``h.lock``)."""
        assert h.stream is not None
        h.sha, h.stream = h.stream, None
        self._hashed_up_to(fi, h, h.stream_piece + 1)

    def _hash_run(self, piece: Piece, last: Piece, sha: ResumableSha256, buf: bytearray) -> None:
        """Feed the stored bytes of pieces ``piece`` .. ``last`` (one file's, consecutive) to
        ``sha``, read back a buffer at a time."""
        view = memoryview(buf)
        pos, left = piece.offset, last.offset + last.length - piece.offset
        with self._files.use(piece.file_index) as fd:
            while left:
                got = os.preadv(fd, [view[: min(left, len(buf))]], pos)
                if got <= 0:
                    raise StorageError(f"{piece.path}: the partial file ends before piece {last.index}")
                sha.update(view[:got])
                pos += got
                left -= got

    # -- writing -------------------------------------------------------------------------------
    def hashed_whole(self) -> list[int]:
        """The files this store hashes whole, in order (``whole_file_pass``)."""
        return [fi for fi, needs in enumerate(self._needs_pass) if needs]

    def is_done(self, index: int) -> bool:
        return bool(self._done[index])

    def missing(self) -> list[int]:
        return [i for i, d in enumerate(self._done) if not d]

    def verified_pieces(self) -> bytes:
        """One byte per piece, 1 if it is verified (a snapshot)."""
        return bytes(self._done)

    def partial_path(self, file_index: int) -> Path:
        """Where file ``file_index`` is kept until it is installed (``data/<path>``)."""
        return self.data_dir / self.manifest.files[file_index].path

    def file_verified(self, file_index: int) -> bool:
        """Whether file ``file_index`` matched its whole-file digest (False: failed or not checked yet)."""
        return bool(self._file_ok[file_index])

    @property
    def verified_bytes(self) -> int:
        """Bytes that passed a check: pieces with a published hash, and whole files that matched.

        Pieces of a file without piece hashes count only once the file matched its digest, so a
        repair (which un-trusts such pieces) never moves verified progress backwards.
        """
        return self._verified

    @property
    def received_bytes(self) -> int:
        """Bytes stored, verified or waiting for their file's digest (for rates and ETAs)."""
        return self._stored

    def _stored_bytes(self, fi: int) -> int:
        """Bytes of file ``fi`` in pieces marked done (counted, not walked piece by piece)."""
        r = self.manifest.file_piece_ranges[fi]
        if not r:
            return 0
        ps = self.manifest.piece_size
        last = self.manifest.files[fi].size - (len(r) - 1) * ps  # the last piece may be short
        return self._done.count(1, r.start, r.stop) * ps - (ps - last if self._done[r.stop - 1] else 0)

    def _verified_share(self, fi: int) -> int:
        """What file ``fi`` adds to ``verified_bytes``: all its stored bytes once it matched its
        digest (or is installed), else those of pieces with a published hash."""
        if self._hashed_file[fi] or self._file_ok[fi] or self._file_done[fi]:
            return self._file_stored[fi]
        return 0

    def _count_bytes(self) -> None:
        """Count the bytes of the pieces marked done (once opened; kept up to date from then on)."""
        self._file_stored = [self._stored_bytes(fi) for fi in range(len(self.manifest.files))]
        self._stored = sum(self._file_stored)
        self._verified = sum(self._verified_share(fi) for fi in range(len(self.manifest.files)))

    def _count_piece(self, piece: Piece, sign: int) -> None:
        """Piece ``piece`` was marked done (``sign`` 1) or no longer is (-1); caller holds ``_lock``."""
        fi, n = piece.file_index, sign * piece.length
        before = self._verified_share(fi)
        self._file_stored[fi] += n
        self._stored += n
        self._verified += self._verified_share(fi) - before

    def write(self, piece: Piece, offset_in_piece: int, data: bytes | bytearray | memoryview) -> None:
        """pwrite bytes of a piece that is being fetched (not yet verified).

        Large pieces go through aligned buffers (``dsmirror._journal.direct``): bytes may stay in
        memory until the piece's last byte is written, it is marked verified or read back.
        """
        with storage_errors(self.data_dir / piece.path):
            # A file hashed whole is read back right after its pieces verify: from the page cache,
            # so it is written through it (read back from disk it cost 1.99 sys s a GiB, not 1.23).
            if self._aligned is not None and not self._needs_pass[piece.file_index]:
                end = piece.offset + piece.length
                self._aligned.write(piece.index, piece.file_index, piece.offset + offset_in_piece, data, end)
                return
            if self._needs_pass[piece.file_index] and self._hashers:
                self._write_hashing(piece, offset_in_piece, data)
                return
            with self._files.use(piece.file_index, write=True) as fd:
                os.pwrite(fd, data, piece.offset + offset_in_piece)

    def _write_hashing(
        self, piece: Piece, offset_in_piece: int, data: bytes | bytearray | memoryview
    ) -> None:
        """pwrite bytes of a file hashed whole; bytes of the piece its hash needs next, written in
        order from the piece's start, are hashed now, in the writer's thread (a copy of the
        file's hash, adopted once the piece is marked done: ``_adopt_stream``), so in-order data
        is never read back. Any other write to that piece drops the copy (the piece is read back
        then). Under the file hasher's lock: the bytes hashed are the bytes written last."""
        fi = piece.file_index
        h = self._hashers[fi]
        n = memoryview(data).nbytes
        with h.lock:
            with self._files.use(fi, write=True) as fd:
                os.pwrite(fd, data, piece.offset + offset_in_piece)
            if not n or self._done[piece.index]:
                return
            if h.stream_piece == piece.index and offset_in_piece == h.stream_pos:
                assert h.stream is not None
                h.stream.update(data)
                h.stream_pos += n
                return
            if h.stream_piece == piece.index:
                h.stream, h.stream_piece = None, -1  # bytes hashed are overwritten, or a gap
            if (
                offset_in_piece == 0
                and not h.reading
                and piece.index == self.manifest.file_piece_ranges[fi].start + h.next_piece
                and (state := h.sha.state()) is not None
                and (copy := ResumableSha256.restore(state, h.sha.length)) is not None
            ):
                copy.update(data)
                h.stream, h.stream_piece, h.stream_pos = copy, piece.index, n

    def _use_for_writes(self, fi: int, direct: bool) -> contextlib.AbstractContextManager[int]:
        return self._files.use(fi, write=True, direct=direct)

    def _flush(self, piece: Piece) -> None:
        """Hand what ``piece`` has staged to pwrite(2) (before it is journaled or read back)."""
        if self._aligned is not None:
            with storage_errors(self.data_dir / piece.path):
                self._aligned.flush(piece.index)

    def read_piece(self, piece: Piece) -> bytes:
        """The bytes of a piece as stored (verified or not: check ``is_done``)."""
        self._flush(piece)
        if self._file_done[piece.file_index]:
            with open(self.dest / piece.path, "rb") as fh:
                fh.seek(piece.offset)
                return fh.read(piece.length)
        with self._files.use(piece.file_index) as fd:
            return os.pread(fd, piece.length, piece.offset)

    def mark_verified(self, piece: Piece, *, source: str | None = None, digest: str | None = None) -> bool:
        """Record that ``piece`` is verified (or, without a piece hash, received) and fully written.

        Returns False if it already was. ``source``/``digest`` are kept as provenance for pieces
        that have no published hash.
        """
        self._flush(piece)  # its W record says every byte was handed to pwrite(2)
        with self._lock:
            if self._done[piece.index]:
                return False
            fi = piece.file_index
            self._done[piece.index] = 1
            self._count_piece(piece, 1)
            if piece.index == self._lag_end[fi] and self._needs_pass[fi] and not self._file_done[fi]:
                # the next piece its hasher needs: it (and the pieces stored after it) can be read
                r = self.manifest.file_piece_ranges[fi]
                end = self._done.find(0, piece.index, r.stop)
                end = r.stop if end < 0 else end
                grown = self._span_bytes(piece.index, end)
                self._lag_file[fi] += grown
                self._lag += grown
                self._lag_end[fi] = end
            # Under the lock, with its W record: the commit that covers the W syncs this file (a
            # set swapped by a commit between a write and this point would lose the mark).
            self._dirty.add(fi)
            with storage_errors(self.area / "journal"):
                if not piece.sha256 and source:  # digest "": not hashed on its own (the engine)
                    self.provenance[piece.index] = (source, digest or "")
                    os.write(self._prov_fd, f"{piece.index} {source} {digest or ''}\n".encode())
                self._append(_W, piece.index)
            if not self._needs_pass[fi]:
                if self._file_ok[fi] is None and self._file_stored[fi] == self.manifest.files[fi].size:
                    self._set_file_ok(fi, True)  # its last piece: the pieces bind the file
                return True
        h = self._hashers[fi]
        with h.lock:
            if (
                h.stream_piece == piece.index
                and h.stream_pos == piece.length
                and not h.reading
                and self.manifest.file_piece_ranges[fi].start + h.next_piece == piece.index
            ):
                self._adopt_stream(fi, h)
        self._hash_queue.put(fi)
        self._await_hasher()
        return True

    def invalidate(self, indices: Iterable[int]) -> None:
        """Stop trusting these pieces (their file failed its digest); they will be fetched again."""
        touched: set[int] = set()
        indices_list = list(indices)
        with self._hash_lock, self._lock:
            for i in indices_list:
                piece = self.manifest.pieces[i]
                if self._done[i]:
                    self._done[i] = 0
                    self._count_piece(piece, -1)
                    with storage_errors(self.area / "journal"):
                        self._append(_X, i)
                touched.add(piece.file_index)
            for fi in touched:
                first = min(i for i in indices_list if self.manifest.pieces[i].file_index == fi)
                self._rewind(fi, first - self.manifest.file_piece_ranges[fi].start)
                before = self._verified_share(fi)
                self._file_ok[fi] = None
                self._verified += self._verified_share(fi) - before
        for fi in touched:  # it reads the pieces still stored from the start (writers may wait)
            self._hash_queue.put(fi)

    def _is_copy(self, piece: Piece, provenance: tuple[str, str]) -> bool:
        """Whether ``piece`` is received, not installed, and the copy ``provenance`` names (caller
        holds ``_lock``)."""
        return (
            bool(self._done[piece.index])
            and not self._file_done[piece.file_index]
            and self.provenance.get(piece.index) == provenance
        )

    def read_stored(
        self, piece: Piece, offset: int, length: int, provenance: tuple[str, str]
    ) -> bytes | None:
        """``length`` bytes at ``offset`` of a received piece without a piece hash, or None if the
        piece is no longer the copy ``provenance`` (source, digest) names (invalidated, fetched
        again, patched, installed). Under the lock that invalidation and ``patch`` take, so the
        bytes returned are that copy's."""
        fi = piece.file_index
        with self._lock:
            if not self._is_copy(piece, provenance):
                return None
            with storage_errors(self.data_dir / piece.path), self._files.use(fi) as fd:
                return os.pread(fd, length, piece.offset + offset)

    def patch(
        self, piece: Piece, edits: Sequence[tuple[int, bytes]], provenance: tuple[str, str]
    ) -> str | None:
        """Replace bytes of a received piece without a piece hash that other sources proved wrong:
        each ``(offset in the piece, bytes)`` of ``edits`` (one pass over the piece for its digest).

        The piece stays received (same source in its provenance, the digest of its new bytes); its
        file is hashed again from the start if its hasher read the piece already. Returns the new
        digest, or None if the piece is no longer the copy ``provenance`` names. The journal gets
        an X record for the piece: after a crash it is fetched again (the journal does not say
        which bytes were patched), and no hasher state saved before the patch is restored.
        """
        fi = piece.file_index
        with self._hash_lock, self._lock:
            if not self._is_copy(piece, provenance):
                return None
            with storage_errors(self.data_dir / piece.path), self._files.use(fi, write=True) as fd:
                for offset, data in edits:
                    os.pwrite(fd, data, piece.offset + offset)
                digest = hashlib.sha256(os.pread(fd, piece.length, piece.offset)).hexdigest()
            self._dirty.add(fi)
            with storage_errors(self.area / "journal"):
                self._append(_X, piece.index)
                self.provenance[piece.index] = (provenance[0], digest)
                os.write(self._prov_fd, f"{piece.index} {provenance[0]} {digest}\n".encode())
            # Hashed again only if the hasher read this piece already or is reading it now (it
            # reads in order): a patch ahead of it costs nothing, one behind it a pass from the
            # last checkpoint before the piece.
            local = piece.index - self.manifest.file_piece_ranges[fi].start
            h = self._hashers[fi]
            if h.next_piece > local or (h.reading and local < h.read_to):
                self._rewind(fi, local)
                before = self._verified_share(fi)
                self._file_ok[fi] = None
                self._verified += self._verified_share(fi) - before
        self._hash_queue.put(fi)
        return digest

    def file_result(self, file_index: int) -> bool | None:
        """The whole-file digest result now: True, False, or None (not hashed yet, or again)."""
        with self._hash_lock:
            return self._file_ok[file_index]

    def take_file_results(self) -> list[tuple[int, bool]]:
        """Whole-file digest results since the last call: (file index, matched)."""
        with self._lock:
            out, self._file_results = self._file_results, []
        return out

    def all_files_checked(self) -> bool:
        """Every file installed or with a matching whole-file digest."""
        with self._hash_lock:
            return all(d or ok for d, ok in zip(self._file_done, self._file_ok, strict=True))

    def wait_checked(self, timeout: float = 3600.0) -> bool:
        """When every piece is done: wait for the whole-file digests; True if all matched."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._hash_lock:
                if all(d or ok is not None for d, ok in zip(self._file_done, self._file_ok, strict=True)):
                    return all(d or ok for d, ok in zip(self._file_done, self._file_ok, strict=True))
            if self._hash_error is not None:
                return False
            time.sleep(0.01)
        return False

    def learned_manifest(self) -> Manifest:
        """The manifest completed from verified files: piece hashes or whole-file digests not published."""
        m = self.manifest
        files = list(m.files)
        learned = False
        for fi, f in enumerate(m.files):
            if not self._file_ok[fi]:
                continue
            sha256, pieces = f.sha256, f.pieces
            if not f.sha256 and fi in self._learned_sha256:
                sha256 = self._learned_sha256[fi]
            if f.pieces and not f.pieces[0]:
                rng = m.file_piece_ranges[fi]
                raw = self.provenance.digests(rng.start, rng.stop)  # 32 bytes a piece, no str each
                if raw is not None:
                    pieces = PieceHashes(raw)
                elif all(self.provenance.get(i, ("", ""))[1] for i in rng):  # none without digest
                    pieces = tuple(self.provenance[i][1] for i in rng)
            if sha256 != f.sha256 or pieces is not f.pieces:
                files[fi] = FileEntry(f.path, f.size, sha256, pieces)
                learned = True
        if not learned:
            return m
        # One new manifest, not one per file (each would index every piece again: quadratic).
        return Manifest(m.name, m.piece_size, tuple(files), m.torrent, m.meta)

    def _append(self, kind: int, index: int) -> None:
        """Append one record (caller holds ``_lock``)."""
        os.write(self._journal_fd, _record(kind, index))
        self._journal_end += _RECORD.size
        self._pending_w += 1

    def _append_states(self) -> None:
        """H records for the hashers that advanced since the last commit (caller holds ``_lock``).

        Appended before the commit takes its offset, so its C covers them: each counts only pieces
        whose W records precede it (the hasher reads only pieces marked done, and ``mark_verified``
        marks and appends under this lock), and those pieces' files are synced by this commit or
        were by an earlier one.
        """
        advanced, self._advanced = self._advanced, set()
        for fi in sorted(advanced):
            h = self._hashers[fi]  # ``invalidate`` replaces it, under this lock too
            if h.published is not None and h.published[0] > h.saved and not self._file_done[fi]:
                count, words = h.published
                os.write(self._journal_fd, _state_record(fi, count, words))
                self._journal_end += _STATE.size
                self._pending_w += 1
                h.saved = count

    def commit(self) -> None:
        """Durability point: fdatasync data, then append and fsync a commit record.

        The commit record names the journal offset it covers, taken *before* the data was synced:
        a W record another connection appends during the sync lies beyond it and stays uncovered
        (re-verified after a crash) until the next commit.
        """
        with self._commit_lock:
            with self._lock:
                if self._journal_fd < 0:
                    return
                with storage_errors(self.area / "journal"):
                    self._append_states()
                if not self._pending_w:
                    return
                dirty, self._dirty = self._dirty, set()
                pending, self._pending_w = self._pending_w, 0
                cover = self._journal_end
            try:
                with storage_errors(self.data_dir):
                    for fi in dirty:
                        self._files.sync(fi)  # a file closed since was synced before it was closed
                    with self._lock:
                        os.write(self._journal_fd, _record(_C, cover))
                        self._journal_end += _RECORD.size
                    datasync(self._journal_fd)
            except BaseException:
                with self._lock:
                    self._dirty |= dirty
                    self._pending_w += pending
                raise

    # -- finishing -----------------------------------------------------------------------------
    def complete(self) -> bool:
        return all(self._done)

    def finalize(self, *, timeout: float | None = None) -> list[str]:
        """Check whole-file digests and rename every file into place. Returns installed paths."""
        if not self.complete():
            raise StorageError("finalize() before every piece is verified")
        self.commit()
        self._hash_queue.put(None)
        if self._hash_thread:
            self._hash_thread.join(timeout)
        if self._hash_error:
            raise StorageError(f"reading back pieces failed: {self._hash_error}") from self._hash_error
        installed: list[str] = []
        record: dict[str, list[int]] = {}
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(self.installed_record.read_bytes())
        bad: list[FileEntry] = []
        for fi, f in enumerate(self.manifest.files):
            if self._file_done[fi]:
                continue
            if not self._file_ok[fi]:
                bad.append(f)
        if bad:
            # Every piece verified but a whole-file digest did not: the manifest contradicts itself.
            raise IntegrityError(
                f"{bad[0].path}: every piece verified but the whole-file SHA-256 does not match; "
                "the manifest is inconsistent",
                hint="re-create the manifest from a good copy",
            )
        learned = self.learned_manifest()
        with storage_errors(self.dest):
            for fi, f in enumerate(self.manifest.files):
                if self._file_done[fi]:
                    continue
                self._files.close(fi)
                record[f.path] = install_file(self.data_dir / f.path, self.dest, f.path)
                self._file_done[fi] = True
                installed.append(f.path)
            write_install_record(self.installed_record, record)
            if learned is not self.manifest:
                # Piece hashes learned from files that had only a whole-file digest: for serving/seeding.
                learned.write(self.installed_record.with_suffix(".pieces.json"))
        self._remove_area()
        return installed

    def _remove_area(self) -> None:
        self._close_fds()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.area / "data")
        for name in ("journal", "manifest.json", "provenance"):
            with contextlib.suppress(OSError):
                (self.area / name).unlink()

    def _close_fds(self) -> None:
        if self._aligned is not None:
            self._aligned.discard()  # bytes of pieces not verified: not journaled, fetched again
        self._files.close_all()
        for fd in (self._journal_fd, self._prov_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._journal_fd = self._prov_fd = -1

    def close(self) -> None:
        """Commit what is verified and release the lock; keeps the partial area for a resume."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(StorageError):
            self.commit()
        self._hash_queue.put(None)
        if self._hash_thread:
            self._hash_thread.join(5)
        self._close_fds()
        if self._lock_fd >= 0:
            if all(self._file_done):
                with contextlib.suppress(OSError):
                    (self.area / "lock").unlink()
                with contextlib.suppress(OSError):
                    self.area.rmdir()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _reopen(self, fi: int) -> int:
        """A descriptor of partial file ``fi`` again (``OpenFiles`` closed the one it had)."""
        path = safe_join(self.area, f"data/{self.manifest.files[fi].path}")
        return os.open(path, os.O_RDWR | _NOFOLLOW | os.O_CLOEXEC)

    def _open_direct(self, fi: int) -> int | None:
        """A direct descriptor of partial file ``fi`` (``dsmirror._journal.direct``), or None."""
        return open_direct(safe_join(self.area, f"data/{self.manifest.files[fi].path}"))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FileHasher:
    """One file's whole-file SHA-256, fed its pieces in order."""

    __slots__ = (
        "lock",
        "next_piece",
        "published",
        "read_to",
        "reading",
        "saved",
        "sha",
        "stream",
        "stream_piece",
        "stream_pos",
    )

    def __init__(self, sha: ResumableSha256 | None = None, next_piece: int = 0) -> None:
        self.sha = sha or ResumableSha256()
        self.next_piece = next_piece  # pieces fed so far
        #: held to change ``next_piece``, ``sha`` and the stream, and by a writer of the file
        self.lock = threading.Lock()
        #: the hasher thread is reading pieces back into ``sha`` (no stream is adopted meanwhile)
        self.reading = False
        self.read_to = 0  #: while ``reading``: the pieces up to this one (in the file, exclusive)
        #: a copy of ``sha`` fed the piece ``stream_piece`` (its first ``stream_pos`` bytes) as it
        #: is written, when that is the next piece ``sha`` needs (-1: none)
        self.stream: ResumableSha256 | None = None
        self.stream_piece = -1
        self.stream_pos = 0
        #: (pieces fed, state words) after the last piece, for the next commit's H record
        self.published: tuple[int, bytes] | None = None
        self.saved = next_piece  # pieces the last H record in the journal counts


def _ones(flags: bytearray, start: int = 0, stop: int | None = None) -> Iterator[int]:
    """The indices in ``[start, stop)`` whose byte in ``flags`` is 1, ascending (found in C)."""
    end = len(flags) if stop is None else stop
    i = flags.find(1, start, end)
    while i >= 0:
        yield i
        i = flags.find(1, i + 1, end)


def _state_record(fi: int, count: int, words: bytes) -> bytes:
    head = struct.pack("<B3xII32s", _H, fi, count, words)
    return head + struct.pack("<I", zlib.crc32(head))


def _record(kind: int, index: int) -> bytes:
    head = struct.pack("<B3xI", kind, index)
    return head + struct.pack("<I", zlib.crc32(head))
