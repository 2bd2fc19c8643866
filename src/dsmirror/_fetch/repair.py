"""Repair of a file that failed its whole-file digest: which bytes to compare or fetch again.

The engine reports to :class:`Repair` every piece that has no hash of its own (``piece_received``)
and every whole-file result the store's hasher produces (``file_checked``), and calls ``poll`` on
every turn of its loop.

With witnesses (``dsmirror._fetch.witness``: two or more stream sources), a failed file is first
repaired from evidence, cheaply: while checks of the file are still queued or running the result
waits (a check may be about to patch the damage); then evidence rounds compare a growing share of
the file's blocks with other sources, the most suspect sources' pieces first
(``dsmirror._schedule.witness.final_shares``: 1/64, 1/32, ... 1/4 of the file). A round that
patches something has the file hashed again; a round that finds nothing leads to the next. Only
when the last round found nothing (sparse damage: a flipped byte or two) does the repair fall back
to the expensive step below, its suspects ordered by evidence.

The fallback, and the repair without witnesses: invalidate the pieces of one suspect source in the
store, reopen them in the scheduler elsewhere, and ban the suspect found to lie (see ``Repair``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dsmirror._core.errors import IntegrityError
from dsmirror._core.events import Event, PieceRejected, SourceDropped
from dsmirror._fetch.witness import Witnesses
from dsmirror._formats.manifest import Manifest, Piece
from dsmirror._journal.store import Store
from dsmirror._schedule.scheduler import Scheduler
from dsmirror._schedule.witness import final_shares

__all__ = ["Repair"]


@dataclass
class _FileRepair:
    tried: list[str]
    suspect: str | None = None
    old: dict[int, str] | None = None  # piece -> digest the suspect had sent
    disputes: int = 0
    differ: list[int] = field(default_factory=list)  # the pieces of those disputes


class Repair:
    """Finding the source that sent bad bytes when only a whole-file digest is published.

    Registries publish whole-file digests only, so a bad byte is noticed only when a whole file is
    hashed. Instead of fetching the whole file again, the pieces of one *suspect* source (the least
    trusted contributor first: already blamed, then unofficial, then the smallest contributor) are
    fetched again from other sources and compared with what the suspect sent. If the file then
    matches and the copies differed, the suspect lied: it is banned and its pieces in other
    unverified files are fetched again too. If the file still fails, the suspect is cleared and the
    next one is tried. Only the suspects' pieces are ever fetched twice; when every contributor has
    been cross-checked and the file still fails, the pull stops with an IntegrityError naming it.
    """

    def __init__(
        self,
        manifest: Manifest,
        store: Store,
        sched: Scheduler,
        emit: Callable[[Event], None],
        witness: Witnesses | None = None,
        drop: Callable[[str, str], None] | None = None,
        blame: Callable[[str, list[int], bool], list[int] | None] | None = None,
    ) -> None:
        self.m = manifest
        self.store = store
        self.sched = sched
        self.emit = emit
        self.witness = witness
        self._drop = drop  # bans a source and says so once (the engine's); else ban and emit here
        # [registry pulls, H5] a source that answers for others (a swarm: stops offering pieces
        # suspected, bans the LAN peers that sent pieces proven bad and names their other
        # pieces) instead of being banned; returns None for a source that does not
        self._blame = blame
        self.files: dict[int, _FileRepair] = {}
        self._lock = threading.Lock()
        self._rounds: dict[int, tuple[int, int]] = {}  # file -> (evidence round, patches at its start)
        self._waiting: dict[int, int] = {}  # file -> patches it had when it began to wait

    def piece_received(self, piece: Piece, digest: str, source: str) -> None:
        with self._lock:
            r = self.files.get(piece.file_index)
            if digest and r and r.old and piece.index in r.old and r.old[piece.index] != digest:
                r.disputes += 1
                r.differ.append(piece.index)

    def _order(self, fi: int) -> list[str]:
        count: dict[str, int] = {}
        for i in self.m.file_piece_ranges[fi]:
            src = self.store.provenance.get(i, ("?", ""))[0]
            count[src] = count.get(src, 0) + 1

        def key(name: str) -> tuple[int, int, int, int, int]:
            if not self.sched.has_source(name):
                return (0, 0, 0, 0, count[name])  # unknown provenance (resumed): check first
            st = self.sched.source(name)
            vouched = self.witness.vouched(name) if self.witness else 0
            banned = 0 if st.banned or st.corrupt else 1
            return (1, banned, vouched, 1 if st.info.official else 0, count[name])

        return sorted(count, key=key)

    def file_checked(self, fi: int, ok: bool) -> None:
        f = self.m.files[fi]
        r = self.files.get(fi)
        if ok:
            self._rounds.pop(fi, None)
            self._waiting.pop(fi, None)
            again = None
            if r and r.suspect and r.disputes and self._blame is not None:
                again = self._blame(r.suspect, r.differ, True)  # [registry pulls, H5]
            if again is not None:
                assert r is not None and r.suspect is not None
                self._refetch(again, r.suspect)
            elif r and r.suspect and r.disputes and self.sched.has_source(r.suspect):
                reason = (
                    f"sent bad bytes for {f.path} (found by cross-checking its pieces with other sources)"
                )
                if self._drop is not None:
                    self._drop(r.suspect, reason)
                else:
                    self.sched.ban(r.suspect, reason)
                    self.emit(SourceDropped(r.suspect, reason))
                self._recheck_elsewhere(r.suspect)
            self.files.pop(fi, None)
            return
        if not f.pieces or f.pieces[0]:
            self._recheck_hashed_file(fi)
            return
        if self.store.file_result(fi) is None:
            return  # a stale result: a witness patched the file since, and it is being hashed again
        if self.witness is not None and self._evidence_round(fi):
            return
        if r is None:
            r = self.files[fi] = _FileRepair(tried=[])
        elif r.suspect and r.disputes and self.sched.has_source(r.suspect):
            pass  # copies differed but the file still fails: keep looking at the others too
        order = [s for s in self._order(fi) if s not in r.tried]
        if not order:
            raise IntegrityError(
                f"{f.path} does not match its SHA-256 even after every source's pieces were cross-checked",
                hint="every source serves the same wrong bytes: the published digest or the file is bad",
            )
        suspect = order[0]
        rng = self.m.file_piece_ranges[fi]
        pieces = [i for i in rng if self.store.provenance.get(i, ("?", ""))[0] == suspect]
        evidence = self._disputed_pieces(fi, order)
        if evidence is not None:
            suspect, pieces = evidence  # what a witness disagreed on, fetched from the other side
        else:
            r.tried.append(suspect)
        r.suspect, r.disputes, r.differ = suspect, 0, []
        # Only digests recorded: a piece not hashed on its own (no witnesses) cannot be compared.
        r.old = {i: d for i in pieces if (d := self.store.provenance.get(i, ("", ""))[1])}
        self.emit(
            PieceRejected(
                suspect,
                pieces[0] if pieces else -1,
                f.path,
                f"{f.path} failed its SHA-256; fetching the {len(pieces)} pieces "
                f"{suspect} sent from other sources",
            )
        )
        self.store.invalidate(pieces)
        if self._blame is not None:  # [registry pulls, H5] a swarm no longer offers them
            self._blame(suspect, pieces, False)
        self.sched.reopen(pieces, avoid=suspect if self.sched.has_source(suspect) else None)

    def poll(self) -> None:
        """A failed file that waited for its checks: go on once they are done (see the docstring)."""
        if self.witness is None:
            return
        for fi, mark in list(self._waiting.items()):
            if self.witness.busy(fi):
                continue
            del self._waiting[fi]
            if self.witness.patched(fi) == mark:
                self.file_checked(fi, False)  # nothing patched: the next round
            # else: patched, so the store hashes the file again and reports it

    def _evidence_round(self, fi: int) -> bool:
        """Start (or wait for) the next evidence round of failed file ``fi``; False when the rounds
        are exhausted and the whole-piece repair must run."""
        assert self.witness is not None
        if self.witness.busy(fi):
            self._waiting[fi] = self.witness.patched(fi)
            return True
        if self.witness.disputed(fi):
            return False  # two sources disagree and nobody can arbitrate: the digest will (below)
        # A round that patched something is repeated at the same share (more damage of the same
        # kind is likely); only one that found nothing moves on to a larger share.
        k, mark = self._rounds.get(fi, (0, -1))
        patched = self.witness.patched(fi)
        if mark >= 0 and patched == mark:
            k += 1
        shares = list(final_shares(self.witness.policy.config))
        if k >= len(shares):
            return False
        self._rounds[fi] = (k, patched)
        self._waiting[fi] = patched
        blocks = self.witness.audit_file(fi, shares[k])
        f = self.m.files[fi]
        self.emit(
            PieceRejected(
                "",
                -1,
                f.path,
                f"{f.path} failed its SHA-256; comparing {shares[k]:.1%} of it ({blocks} blocks) "
                "with other sources, the least trusted first",
            )
        )
        return True

    def _disputed_pieces(self, fi: int, order: list[str]) -> tuple[str, list[int]] | None:
        """The most suspect source with undecided disputes in file ``fi`` and those of its pieces
        (forgotten as disputes: the digest decides them now), or None."""
        if self.witness is None:
            return None
        disputed = self.witness.disputed(fi)
        for name in order:
            if name in disputed:
                self.witness.forget_disputes(disputed[name])
                prov = self.store.provenance
                pieces = sorted(i for i in disputed[name] if prov.get(i, ("?", ""))[0] == name)
                if pieces:
                    return name, pieces
        return None

    def _recheck_hashed_file(self, fi: int) -> None:
        """A file with piece hashes failed its digest: the bytes on disk changed behind our back.

        Re-hash its pieces from disk; keep those that verify, fetch the others again. If every
        piece verifies, the manifest contradicts itself and no download can fix that.
        """
        f = self.m.files[fi]
        bad = [
            i
            for i in self.m.file_piece_ranges[fi]
            if hashlib.sha256(self.store.read_piece(self.m.pieces[i])).hexdigest() != self.m.pieces[i].sha256
        ]
        if not bad:
            raise IntegrityError(
                f"{f.path}: every piece verifies but the whole-file SHA-256 does not match; "
                "the manifest is inconsistent",
                hint="re-create the manifest from a good copy",
            )
        self.store.invalidate(bad)
        self.sched.reopen(bad)

    def _refetch(self, pieces: list[int], source: str) -> None:
        """[registry pulls, H5] Of ``pieces``, those ``source`` sent in files not yet verified are
        fetched again from other sources (a swarm's banned peers' pieces)."""
        prov, store = self.store.provenance, self.store
        again = [
            i
            for i in pieces
            if prov.get(i, ("?", ""))[0] == source and not store.file_verified(self.m.pieces[i].file_index)
        ]
        if again:
            self.store.invalidate(again)
            self.sched.reopen(again, avoid=source if self.sched.has_source(source) else None)

    def _recheck_elsewhere(self, liar: str) -> None:
        """A banned liar's pieces in files not yet verified are fetched again from others."""
        pieces = [
            i
            for i, (src, _) in self.store.provenance.items()
            if src == liar and not self.store.file_verified(self.m.pieces[i].file_index)
        ]
        if pieces:
            self.store.invalidate(pieces)
            self.sched.reopen(pieces, avoid=liar)
