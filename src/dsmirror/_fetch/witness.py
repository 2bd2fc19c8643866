"""Witness checks: comparing blocks of received pieces with other sources, and patching what lied.

The policy (which blocks, which witness, what a disagreement proves, why) is
``dsmirror._schedule.witness``; this module carries it out for the engine. A few threads of their
own take jobs from a priority queue — the blocks to compare of one received piece — so checks never
hold up a connection of the pull:

- ``piece_received``: the engine stored a piece of a file without piece hashes; the policy picks the
  blocks to compare (by the sender's trust) and a job is queued (priority 2).
- A job reads each block from the store (only if the piece is still the copy the job names), asks a
  witness for the same bytes with one Range request, and compares. On a difference an arbiter (a
  third source) is asked; the loser is banned (``drop``) with the evidence in its reason.
- A convicted source's damaged region is grown from the bad block (``next_windows``) and every
  block that differs is replaced in the store by the witness's bytes (``Store.patch``: the piece
  stays received, its file is hashed again); its other pieces in unverified files are audited
  (priority 0).
- ``audit_file``: the repair's evidence rounds after a whole-file mismatch (priority 1, most suspect
  source first).

Every byte a witness sends is counted in ``check_bytes`` (and goes through ``--max-rate``). A
witness that fails to answer rests (``Trust.rest_until``); a job whose witnesses are all resting or
gone is dropped: checks are evidence, never a condition of finishing, since the whole-file digest
decides. Sources must be safe to call from several threads (the ``Source`` contract).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dsmirror._core.events import Event, PieceRejected
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import Manifest, Piece
from dsmirror._journal.store import Store
from dsmirror._schedule.scheduler import Scheduler
from dsmirror._schedule.witness import Verdict, WitnessPolicy, judge, next_windows

__all__ = ["Witnesses"]

#: Longest single Range request when a damaged region is grown.
_GROW_REQUEST = 1 << 20
#: Threads that run checks; each waits on one small request at a time.
THREADS = 3
#: Requests one comparison may try (witnesses that fail, then rest) before it is skipped.
_ASKS = 6


@dataclass(order=True)
class _Job:
    priority: int
    rank: int
    seq: int
    piece: int = field(compare=False)
    source: str = field(compare=False)
    digest: str = field(compare=False)
    blocks: list[tuple[int, int]] = field(compare=False)
    round: int = field(default=0, compare=False)  # the repair's evidence round (audit_file), or 0


@dataclass
class Undecided:
    """A block two sources disagree on with no third to arbitrate: evidence for the repair."""

    piece: int
    offset: int
    source: str
    witness: str


class Witnesses:
    """Cross-checks for one pull (see the module docstring). Thread-safe."""

    def __init__(
        self,
        manifest: Manifest,
        store: Store,
        sched: Scheduler,
        sources: Mapping[str, Source],
        policy: WitnessPolicy,
        drop: Callable[[str, str], None],
        emit: Callable[[Event], None],
        take: Callable[[int], None] | None = None,
        gate: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
        threads: int = THREADS,
    ) -> None:
        self.m = manifest
        self.store = store
        self.sched = sched
        self.sources = dict(sources)
        self.policy = policy
        self._drop = drop
        self._emit = emit
        self._take = take
        self._gate = gate  # the engine's store gate: no patch once the pull shut down
        self._n_threads = threads
        self._q: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._lock = threading.Lock()  # the policy, the counters below, _busy
        self._seq = 0
        self._busy: dict[int, int] = {}  # file -> jobs queued or running
        self._spots = 0  # spot-check jobs queued
        self._patched: dict[int, int] = {}  # file -> patches applied
        self._rounds: dict[int, int] = {}  # file -> its latest evidence round
        self._found: dict[int, int] = {}  # file -> the last evidence round that convicted someone
        self._stop = threading.Event()
        # One damaged region grown at a time: two threads patching the same piece would each find
        # the other's patch under them (a changed provenance) and leave blocks unpatched.
        self._grow_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.check_bytes = 0  # bytes witnesses and arbiters sent
        self.checked_blocks = 0
        self.skipped = 0  # spot checks not queued (queue full) or dropped (no witness)
        self.disagreements = 0
        self.undecided: list[Undecided] = []
        self.convicted: dict[str, str] = {}  # source -> reason
        self.last_error: BaseException | None = None  # of a job that failed (kept for debugging)

    # -- the engine's side ---------------------------------------------------------------------
    def start(self) -> None:
        for k in range(self._n_threads):
            t = threading.Thread(target=self._main, name=f"dsmirror-witness-{k}", daemon=True)
            self._threads.append(t)
            t.start()

    def close(self, timeout: float = 0.5) -> None:
        """Stop the threads (the engine closed the sources first, which wakes a blocked request)."""
        self._stop.set()
        for _ in self._threads:
            self._q.put(_Job(-1, 0, 0, -1, "", "", []))  # wakes a waiting thread: it sees the stop
        for t in self._threads:
            t.join(timeout)

    def piece_received(self, piece: Piece, digest: str, source: str) -> None:
        """A piece of a file without piece hashes was stored: queue its spot check, if any."""
        with self._lock:
            convicted = source in self.convicted
            if not convicted and self._spots >= self.policy.config.max_pending:
                self.skipped += 1
                return
            share = self.policy.share(source, convicted=convicted)
            blocks = self.policy.blocks(piece.length, share, least=1 if convicted else 0)
            if not blocks:
                return
            # Spot checks newest first: when checks fall behind (a loaded machine, a far witness),
            # the pieces that just landed say most about what a source does now, and a liar that
            # starts late is caught at its first damage, not after the backlog.
            self._put(0 if convicted else 2, -self._seq, piece.index, source, digest, blocks)

    def busy(self, fi: int) -> bool:
        """Whether checks of file ``fi`` are queued or running."""
        with self._lock:
            return self._busy.get(fi, 0) > 0

    def patched(self, fi: int) -> int:
        with self._lock:
            return self._patched.get(fi, 0)

    def disputed(self, fi: int) -> dict[str, set[int]]:
        """Pieces of file ``fi`` whose blocks two sources disagreed on with nobody to arbitrate, by
        the source of the stored copy (see ``Undecided``)."""
        with self._lock:
            out: dict[str, set[int]] = {}
            for u in self.undecided:
                if self.m.pieces[u.piece].file_index == fi:
                    out.setdefault(u.source, set()).add(u.piece)
            return out

    def forget_disputes(self, pieces: set[int]) -> None:
        with self._lock:
            self.undecided = [u for u in self.undecided if u.piece not in pieces]

    def audit_file(self, fi: int, share: float) -> int:
        """Queue the comparison of ``share`` of every received piece of file ``fi`` (the repair's
        evidence round), the most suspect sources' pieces first and each source's in random order.
        The round ends at its first conviction (its other jobs are skipped): the repair patches
        and hashes the file again, and a file still failing gets the same share once more.
        Returns the blocks queued."""
        prov = self._provenance()
        owners = {prov[i][0] for i in self.m.file_piece_ranges[fi] if i in prov}
        with self._lock:
            order = self.policy.suspicion(owners, banned=self.convicted)
            rank = {name: k for k, name in enumerate(order)}
            rnd = self._rounds[fi] = self._rounds.get(fi, 0) + 1
            n = 0
            for i in self.m.file_piece_ranges[fi]:
                if i not in prov:
                    continue
                src, digest = prov[i]
                blocks = self.policy.blocks(self.m.pieces[i].length, share, least=1)
                if blocks:
                    self.policy.rng.shuffle(blocks)
                    key = rank[src] * (1 << 32) + self.policy.rng.randrange(1 << 32)
                    self._put(1, key, i, src, digest, blocks, rnd)
                    n += len(blocks)
            return n

    def vouched(self, name: str) -> int:
        """Blocks of ``name`` (or sent by it as a witness) that another source confirmed."""
        with self._lock:
            t = self.policy.trust.get(name)
            return t.passed if t is not None else 0

    def _provenance(self) -> dict[int, tuple[str, str]]:
        """A copy of the store's provenance (pieces keep landing while it is taken: retried)."""
        for _ in range(8):
            try:
                return dict(self.store.provenance)
            except RuntimeError:  # changed size during the copy
                continue
        return {}

    # -- queue ---------------------------------------------------------------------------------
    def _put(
        self,
        priority: int,
        rank: int,
        index: int,
        source: str,
        digest: str,
        blocks: list[tuple[int, int]],
        round_: int = 0,
    ) -> None:
        """Queue a job (caller holds ``_lock``)."""
        fi = self.m.pieces[index].file_index
        self._seq += 1
        self._busy[fi] = self._busy.get(fi, 0) + 1
        if priority == 2:
            self._spots += 1
        self._q.put(_Job(priority, rank, self._seq, index, source, digest, blocks, round_))

    def _main(self) -> None:
        while not self._stop.is_set():
            job = self._q.get()
            if job.piece < 0:
                return
            try:
                self._run(job)
            except Exception as exc:  # a check is evidence, never a reason to stop the pull
                self.last_error = exc
            finally:
                fi = self.m.pieces[job.piece].file_index
                with self._lock:
                    self._busy[fi] -= 1
                    if job.priority == 2:
                        self._spots -= 1

    # -- one job -------------------------------------------------------------------------------
    def _candidates(self, fi: int) -> list[str]:
        out = []
        for name in self.sources:
            if not self.sched.has_source(name):
                continue
            st = self.sched.source(name)
            if not st.banned and fi not in st.missing_files:
                out.append(name)
        return out

    def _get(self, name: str, fi: int, start: int, n: int) -> bytes | None:
        """Bytes ``[start, start + n)`` of file ``fi`` from source ``name``, or None (it rests)."""
        if self._stop.is_set():
            return None
        buf = bytearray()
        try:
            with self.sources[name].open_range(self.m.files[fi], start, start + n - 1) as chunks:
                for chunk in chunks:
                    buf += chunk
                    if self._stop.is_set() or len(buf) > n:
                        break
        except Exception:  # any failure of a witness: it rests, another is asked
            with self._lock:
                self.check_bytes += len(buf)
                self.policy.failed_to_answer(name)
            return None
        if self._take:
            self._take(len(buf))
        with self._lock:
            self.check_bytes += len(buf)
            if len(buf) != n:
                self.policy.failed_to_answer(name)
                return None
        return bytes(buf)

    def _ask(self, fi: int, start: int, n: int, exclude: set[str]) -> tuple[str, bytes] | None:
        """A witness's copy of the bytes: the most vouched source not excluded that answers.

        When every candidate is resting after a failure, waits for the first to be asked again
        (a loaded machine or a mirror's blip must not turn a check into a skipped one); gives up
        after ``_ASKS`` failures or when there is no candidate at all.
        """
        tried = set(exclude)
        for _ in range(_ASKS):
            if self._stop.is_set():
                return None
            with self._lock:
                names = [c for c in self._candidates(fi) if c not in exclude]
                name = self.policy.pick(names, tried)
                wake = self.policy.next_awake(names)
            if name is None:
                if wake is None:
                    return None
                self._stop.wait(max(0.0, min(wake - self.policy.clock.now(), self.policy.config.rest)))
                tried = set(exclude)
                continue
            data = self._get(name, fi, start, n)
            if data is not None:
                return name, data
            tried.add(name)
        return None

    def _run(self, job: _Job) -> None:
        piece = self.m.pieces[job.piece]
        fi = piece.file_index
        if self.store.file_result(fi):
            return  # the whole-file digest matched: nothing left to learn
        digest = job.digest
        for off, n in job.blocks:
            if self._stop.is_set():
                return
            if job.round:
                with self._lock:
                    if self._found.get(fi) == job.round:
                        return  # this evidence round convicted someone already
            stored = self.store.read_stored(piece, off, n, (job.source, digest))
            if stored is None:
                return  # fetched again, patched or installed since
            got = self._ask(fi, piece.offset + off, n, {job.source})
            if got is None:
                with self._lock:
                    self.skipped += 1
                return
            witness, data = got
            with self._lock:
                self.checked_blocks += 1
            if data == stored:
                with self._lock:
                    self.policy.agreed(job.source, witness)
                continue
            verdict = self._arbitrate(job.source, witness, fi, piece, off, stored, data)
            if job.round and verdict in (Verdict.SOURCE_LIED, Verdict.WITNESS_LIED):
                with self._lock:
                    self._found[fi] = job.round
            if verdict is Verdict.SOURCE_LIED:
                self._grow(piece, off, data, job.source, witness)
                return
            if verdict is Verdict.WITNESS_LIED:
                continue

    def _arbitrate(
        self, source: str, witness: str, fi: int, piece: Piece, off: int, stored: bytes, data: bytes
    ) -> Verdict:
        with self._lock:
            self.disagreements += 1
            already = source in self.convicted
        where = f"{self.m.files[fi].path} bytes {piece.offset + off}-{piece.offset + off + len(data) - 1}"
        if already:
            return Verdict.SOURCE_LIED  # convicted before: a vouched witness's bytes win
        got = self._ask(fi, piece.offset + off, len(data), {source, witness})
        arbiter, third = got if got is not None else ("", None)
        verdict = judge(stored, data, third)
        if verdict is Verdict.SOURCE_LIED:
            with self._lock:
                self.policy.agreed(witness, arbiter)
            self._convict(source, f"sent bad bytes ({where}: {witness} and {arbiter} agree on other bytes)")
        elif verdict is Verdict.WITNESS_LIED:
            with self._lock:
                self.policy.agreed(source, arbiter)
            self._convict(witness, f"sent bad bytes as a witness ({where}: {source} and {arbiter} agree)")
        else:
            with self._lock:
                self.undecided.append(Undecided(piece.index, off, source, witness))
        return verdict

    def _convict(self, name: str, reason: str) -> None:
        """Ban ``name`` and audit every piece it delivered in files not verified yet."""
        with self._lock:
            if name in self.convicted:
                return
            self.convicted[name] = reason
            self.policy.convicted(name)
        self._drop(name, reason)
        prov = self._provenance()
        with self._lock:
            for i, (src, digest) in prov.items():
                if src != name or self.store.file_verified(self.m.pieces[i].file_index):
                    continue
                share = self.policy.share(name, convicted=True)
                blocks = self.policy.blocks(self.m.pieces[i].length, share, least=1)
                if blocks:
                    self._put(0, 0, i, src, digest, blocks)

    # -- growing a damaged region ----------------------------------------------------------------
    def _extent(self, piece: Piece, liar: str) -> tuple[int, int]:
        """File bytes of the liar's run of received pieces around ``piece`` (its own bytes only)."""
        prov = self.store.provenance
        rng = self.m.file_piece_ranges[piece.file_index]
        lo = hi = piece.index
        while lo - 1 >= rng.start and prov.get(lo - 1, ("", ""))[0] == liar:
            lo -= 1
        while hi + 1 < rng.stop and prov.get(hi + 1, ("", ""))[0] == liar:
            hi += 1
        last = self.m.pieces[hi]
        return self.m.pieces[lo].offset, last.offset + last.length

    def _grow(self, piece: Piece, off: int, data: bytes, liar: str, witness: str) -> None:
        """Replace the bad block, then compare outwards until the damage ends (``next_windows``)."""
        with self._grow_lock:
            self._grow_locked(piece, off, data, liar)

    def _grow_locked(self, piece: Piece, off: int, data: bytes, liar: str) -> None:
        fi = piece.file_index
        start = piece.offset + off
        bad = self._apply(fi, start, data, liar)
        if bad is None:
            return
        checked = (start, start + len(data))
        limit = self._extent(piece, liar)
        clean = self.policy.config.grow_clean
        while windows := next_windows(bad, checked, limit, clean):
            for lo, hi in windows:
                at = lo
                while at < hi:
                    n = min(_GROW_REQUEST, hi - at)
                    got = self._ask(fi, at, n, {liar})
                    if got is None:
                        return
                    diff = self._apply(fi, at, got[1], liar)
                    if diff is not None:
                        bad = (min(bad[0], diff[0]), max(bad[1], diff[1]))
                    at += n
                checked = (min(checked[0], lo), max(checked[1], hi))

    def _apply(self, fi: int, start: int, data: bytes, liar: str) -> tuple[int, int] | None:
        """Patch the bytes of ``data`` (file offset ``start``) that differ from the liar's stored
        copy, block by block; returns the extent that differed, or None."""
        block = self.policy.config.block
        ps = self.m.piece_size
        first = self.m.file_piece_ranges[fi].start
        lo_diff, hi_diff = -1, -1
        at = start
        end = start + len(data)
        while at < end:
            piece = self.m.pieces[first + at // ps]
            in_piece = at - piece.offset
            n = min(end - at, piece.length - in_piece)
            prov = self.store.provenance.get(piece.index)
            if prov is None or prov[0] != liar:
                at += n
                continue
            stored = self.store.read_stored(piece, in_piece, n, prov)
            ours = data[at - start : at - start + n]
            if stored is not None and stored != ours:
                edits = [
                    (in_piece + b, ours[b : b + block])
                    for b in range(0, n, block)
                    if stored[b : b + block] != ours[b : b + block]
                ]
                if self._patch(piece, edits, prov) is None:
                    return None if lo_diff < 0 else (lo_diff, hi_diff)  # fetched again since
                lo = piece.offset + edits[0][0]
                hi = piece.offset + edits[-1][0] + len(edits[-1][1])
                lo_diff = lo if lo_diff < 0 else min(lo_diff, lo)
                hi_diff = max(hi_diff, hi)
            at += n
        return None if lo_diff < 0 else (lo_diff, hi_diff)

    def _patch(
        self, piece: Piece, edits: list[tuple[int, bytes]], prov: tuple[str, str]
    ) -> tuple[str, str] | None:
        with self._gate():
            digest = self.store.patch(piece, edits, prov)
        if digest is None:
            return None
        fi = piece.file_index
        with self._lock:
            first = fi not in self._patched
            self._patched[fi] = self._patched.get(fi, 0) + 1
        if first:
            self._emit(
                PieceRejected(
                    prov[0],
                    piece.index,
                    piece.path,
                    f"{piece.path}: bytes from {piece.offset + edits[0][0]} differ from what other sources "
                    "send; replacing the damaged region with theirs",
                )
            )
        return prov[0], digest
