"""The tail of a pull: work stealing, split pieces and the tail race.

When no piece is free, idle connections help the ones that will finish last, so that every
source is busy to the end and the slowest decides nothing (see "Work stealing", "The tail:
split pieces" and "The tail race" in ``scheduler``, which tell why and what it measured):

- ``pick_steal``: take the far end of the span whose owner finishes last, split where both
  finish together.
- ``Tail.pick_help``: when only pieces in progress remain, fetch the back part of the last piece
  of a streaming owner (a *split*: the owner uses the helper's bytes at its ``cut``), or race the
  whole piece if this connection would finish it clearly sooner.
- ``too_slow_for_tail``: a piece nobody can split is refused to a source that would decide the
  finishing time with it.

``Tail`` records the helpers and racers at work, the helpers' bytes waiting for their owner, and
the pieces that must be fetched whole (a mixed copy of them failed). The choices are pure
functions of the ``Board`` and the time; the ``Scheduler`` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from dsmirror._formats.manifest import Piece
from dsmirror._schedule.board import Board
from dsmirror._schedule.pieces import PieceMap
from dsmirror._schedule.rates import (
    conn_rate,
    expected_rate,
    helper_rate,
    left_bytes,
    owner_rate,
    remaining_time,
    span_bytes,
)
from dsmirror._schedule.state import Assignment, SourceState

__all__ = ["Help", "Tail", "balance", "pick_steal", "too_slow_for_tail"]


def balance(v_rate: float, my_rate: float, ttfb: float, total: float) -> float:
    """Of ``total`` bytes, how many the owner (at ``v_rate``) keeps so that it finishes together
    with a helper at ``my_rate`` that first waits ``ttfb``: x / v_rate = ttfb + (total - x) / my_rate.
    """
    return v_rate * (ttfb + total / my_rate) / (1 + v_rate / my_rate)


def pick_steal(board: Board, s: SourceState, now: float) -> tuple[Assignment, int] | None:
    """Work stealing: ``(victim, split)`` — an idle connection of ``s`` takes pieces
    ``[split, victim.end)`` of the span whose owner will finish last — or None."""
    m = board.m
    my_rate = expected_rate(s)
    best: tuple[float, Assignment] | None = None
    for a in board.assignments.values():
        if a.race or a.cancelled or a.end - a.next_piece < 2 or not board.may_take_over(s, a, a.end - 1):
            continue
        if not all(board.usable_for(s, k) for k in (a.next_piece + 1, a.end - 1)):
            continue
        t = remaining_time(m, a, now)
        if best is None or t > best[0]:
            best = (t, a)
    if best is None:
        return None
    t_victim, v = best
    v_rate = conn_rate(v, now)
    if v_rate <= 0:
        # A span just begun has no rate of its own yet: plan with its source's. Splitting it in
        # the middle made a connection at 1/200 of the owner's speed take half of a fresh span,
        # which then decided the finishing time.
        v_rate = expected_rate(board.sources[v.source])
        if v_rate > 0:
            t_victim = left_bytes(m, v) / v_rate
    if my_rate <= 0:
        # Unmeasured thief: take one piece from the far end if the victim is slow or unmeasured.
        if t_victim < 2 * board.cfg.span_seconds:
            return None
        split = v.end - 1
    elif v_rate <= 0:
        split = v.next_piece + 1 + (v.end - v.next_piece - 1) // 2
    else:
        ps = m.piece_size
        total = span_bytes(m, v.next_piece, v.end) - v.piece_bytes
        keep = balance(v_rate, my_rate, s.ttfb, total)
        split = v.next_piece + 1 + max(0, int((keep - (ps - v.piece_bytes)) // ps))
        if split >= v.end:
            return None
        mine = span_bytes(m, split, v.end)
        if s.ttfb + mine / my_rate >= t_victim:
            return None
    if split <= v.next_piece or split >= v.end:
        return None
    return v, split


def too_slow_for_tail(board: Board, s: SourceState, now: float, piece: Piece, free_bytes: int) -> bool:
    """Would this piece on this connection outlast everything the others still have to do?

    A source must not start a piece it cannot finish before the other sources finish all the
    work left: that piece would decide the finishing time (the "stuck at 99%" of ollama #1736).
    Only sources that could take the free work count as "the others" (not banned, not paused,
    having the files), and the fastest capable source never steps aside.
    A piece that can be split at the tail is always worth starting: when the others run out
    of work, one of them fetches its back part (``Tail.pick_help``), so the slow source
    contributes what it can and decides nothing.
    """
    piece_len = piece.length
    if (
        piece.sha256
        and s.info.kind != "bittorrent"
        and any(
            o is not s
            and o.info.kind != "bittorrent"
            and not o.banned
            and piece.file_index not in o.missing_files
            for o in board.sources.values()
        )
    ):
        return False  # another streaming source can split it at the end
    mine = expected_rate(s)
    if mine <= 0:
        return False
    if s.active == 0 and s.aggregate > mine:
        # An idle source's one connection gets all its bandwidth when that is shared by its
        # connections (a per-host cap), not the share it had while all of them were busy.
        mine = s.aggregate
    free_files = board.pieces.free_files()
    # Not a source that may not fetch this piece (it spoiled it): stepping aside for it would leave
    # the piece to nobody (two sources, one of which sent a file's bad bytes: a repair stalled).
    capable = [
        o
        for o in board.sources.values()
        if o is not s
        and not o.banned
        and o.paused_until <= now
        and not free_files <= o.missing_files
        and board.usable_for(o, piece.index)
    ]
    if not capable or mine >= max(expected_rate(o) for o in capable):
        return False
    others = sum(board.source_rate(o.info.name, now) for o in capable)
    if others <= 0:
        return False
    names = {o.info.name for o in capable}
    in_flight = sum(
        left_bytes(board.m, a) for a in board.assignments.values() if a.source in names and not a.race
    )
    t_piece = s.ttfb + piece_len / mine
    return t_piece > 2.0 and t_piece > (free_bytes + in_flight) / others


def _shared_finish(board: Board, v: Assignment, now: float) -> float:
    """When ``v``'s source finishes all its connections' work at its present total rate.

    A source's connections share its bandwidth (a per-host cap), as ``helper_rate`` assumes for
    an idle connection: once the owner's other connections finish, their share goes to the
    owner, which ends its piece sooner than its own rate says. Not for an owner getting less than
    half its share: that connection is stuck, and its own rate is the one to plan with (infinite
    here). Measured: test_liars' two sources at 8 MiB/s each, under load; a helper raced the last
    piece from an owner at 3 MB/s while its sibling had a third of a piece left, and both copies
    of the 8 MiB piece ended together.
    """
    live = [a for a in board.live(v.source) if not a.race]
    rate = board.source_rate(v.source, now)
    if len(live) < 2 or rate <= 0 or conn_rate(v, now) < 0.5 * rate / len(live):
        return float("inf")
    return sum(left_bytes(board.m, a) for a in live) / rate


class Help(NamedTuple):
    """Tail work for an idle connection: the back part of ``owner``'s piece from ``cut`` (a
    split), or with ``cut`` None the whole piece (a race)."""

    owner: Assignment
    cut: int | None
    replaces: Assignment | None = None  # a second split: the first helper, cancelled (too slow)
    #: a split of the owner's front: the part ends here, where the parts already fetched begin
    #: (0: at the end of the piece)
    end: int = 0


def _chain(parts: dict[int, tuple[bytes, str]], cut: int, length: int) -> list[int] | None:
    """The cuts of the parts that together hold ``[cut, length)`` of a piece, one after the
    other, or None if a byte of it is missing."""
    cuts = []
    while cut < length:
        got = parts.get(cut)
        if got is None or not got[0]:
            return None
        cuts.append(cut)
        cut += len(got[0])
    return cuts


#: A second split of a piece (``Tail.pick_help``) must finish it at least this many seconds sooner:
#: it fetches the first helper's part again, bandwidth its source's other connections lose ...
RESPLIT_GAIN = 0.5
#: ... unless that source has nothing else to do: then the bytes cost nothing. The usual case at
#: the very end: a helper planned at its per-connection share finished early (its siblings went
#: idle, so it got its source's whole bandwidth) and the owner's front is the last work of the
#: pull (bench degrade: the near mirror's last fronts ended 0.56 s and 0.74 s after the others,
#: mid and far with no connection at work).
RESPLIT_GAIN_IDLE = 0.15


@dataclass
class Tail:
    """Helpers and racers at work, and what they left for the owners of their pieces."""

    racing: dict[int, Assignment] = field(default_factory=dict)  # piece -> racer or split helper
    second: dict[int, Assignment] = field(default_factory=dict)  # piece -> its second split helper
    #: piece -> {cut: (bytes, helper source)}: helpers' parts ``[cut, end of piece)``, waiting for
    #: their owner's cut
    split_data: dict[int, dict[int, tuple[bytes, str]]] = field(default_factory=dict)
    whole_only: set[int] = field(default_factory=set)  # pieces whose mixed copy failed: fetched whole
    unused: int = 0  # bytes of helpers' parts nobody used (another part or the owner was first)

    def can_split(self, board: Board, s: SourceState, a: Assignment) -> bool:
        """May an idle connection of ``s`` fetch the back part of ``a``'s current piece?

        Only between two streaming sources (a swarm hands over whole pieces), on the last piece
        of the owner's span (its stream is cut after that piece), by one more helper at a time
        once it has one (a second split or a split of the front: ``pick_help``), and never for
        a piece without its own hash (a mixed copy could not be blamed on either source) or one
        a split copy already failed.
        """
        i = a.next_piece
        return (
            a.source != s.info.name
            and s.info.kind != "bittorrent"
            and board.sources[a.source].info.kind != "bittorrent"
            and a.next_piece == a.end - 1
            and (a.cut is None or (a.cut > a.piece_bytes and i not in self.second))
            and i not in self.whole_only
            and bool(board.m.pieces[i].sha256)
        )

    def _helper_time(self, board: Board, a: Assignment, now: float) -> float:
        """Seconds until the split helper of ``a``'s current piece has its part (0: it has)."""
        k = a.next_piece
        h = self.racing.get(k)
        if h is None or h.owner is not a or h.split_at in self.split_data.get(k, {}):
            return 0.0
        left = (h.split_end or board.m.pieces[k].length) - h.split_at - h.piece_bytes
        rate = conn_rate(h, now) or expected_rate(board.sources[h.source])
        return left / rate if rate > 0 else float("inf")

    def _piece_time(self, board: Board, a: Assignment, now: float) -> float:
        """Seconds until ``a``'s current piece is whole, it having a split helper: its front, at
        the owner's planning rate, or the helper's part if that comes later."""
        v_rate = owner_rate(a, board.sources[a.source], len(board.live(a.source)), now)
        t = left_bytes(board.m, a) / v_rate if v_rate > 0 else float("inf")
        return max(t, self._helper_time(board, a, now))

    def pick_help(self, board: Board, s: SourceState, now: float) -> Help | None:
        """Tail work for an idle connection of ``s``: help the owner that will finish last.

        A piece that has a split helper may be split a second time (``RESPLIT_GAIN``): its owner
        crawls through its front, or its first helper came from a slow source, and an idle
        connection would bring the rest much sooner. The second helper fetches from a lower cut
        to the end of the piece (so the first helper's part may be fetched twice); the owner
        takes whichever part it reaches first; a first helper that would bring its part later
        than the second is cancelled, and a second helper no faster than a lagging first one is
        not started (it would fetch the same bytes). Without it the pull waited for the slowest
        front. Once the back of the piece is here, the owner's front can be split the same way
        (``_split_front``), again each time such a part arrives. Simulated degrade case with the
        mirrors' bandwidth handed out in chunks like ``dsmirror.testing``'s token bucket
        (``test_bench_degrade_through_token_buckets``, seeds 1-16): median 1.027x -> 1.020x the
        ideal time, worst 1.076x -> 1.031x (with ``rates.owner_rate`` for the cut), at most 1.3%
        of the model fetched twice.
        """
        cfg = board.cfg
        my_rate = helper_rate(s)
        if my_rate <= 0:
            return None
        first_ok = len(self.racing) < cfg.max_racers
        second_ok = len(self.second) < cfg.max_racers
        best: tuple[float, Assignment] | None = None
        for a in board.assignments.values():
            if a.race or a.cancelled or a.source == s.info.name or a.next_piece >= a.end:
                continue
            if not board.may_take_over(s, a, a.next_piece):
                continue
            k = a.next_piece
            if board.pieces.is_done(k) or not board.usable_for(s, k):
                continue
            if k in self.racing or k in self.second or k in self.split_data:
                if not (second_ok and a.cut is not None and self.can_split(board, s, a)):
                    continue
                t = self._piece_time(board, a, now)
            elif first_ok:
                t = remaining_time(board.m, a, now)
            else:
                continue
            if best is None or t > best[0]:
                best = (t, a)
        if best is None:
            return None
        t_owner, v = best
        piece = board.m.pieces[v.next_piece]
        v_rate = owner_rate(v, board.sources[v.source], len(board.live(v.source)), now)
        if v.cut is not None:
            # A second split: from a lower cut, where the owner and this connection finish together.
            if v_rate <= 0:
                return None
            if _chain(self.split_data.get(v.next_piece, {}), v.cut, piece.length) is not None:
                return self._split_front(board, s, v, v_rate, my_rate, t_owner)
            x = balance(v_rate, my_rate, s.ttfb, piece.length - v.piece_bytes)
            cut = v.piece_bytes + int(x)
            t_split = x / v_rate
            if cut + cfg.min_split_bytes > v.cut or t_split >= t_owner * cfg.split_gain:
                return None
            first = self.racing.get(v.next_piece)
            lagging = first is not None and first.split_at not in self.split_data.get(v.next_piece, {})
            if lagging and first is not None and my_rate < 1.5 * conn_rate(first, now):
                return None  # no faster than the first helper: it would fetch the same bytes again
            replace = first is not None and self._helper_time(board, v, now) > t_split
            if t_owner - t_split < (RESPLIT_GAIN_IDLE if s.active == 0 else RESPLIT_GAIN):
                return None
            return Help(v, cut, first if replace else None)
        if v_rate > 0 and self.can_split(board, s, v):
            # Split: the owner keeps the front, this connection fetches the back; the cut is
            # where both finish together. Its time without help, planned at the same rate.
            t_owner = max(t_owner, left_bytes(board.m, v) / v_rate)
            left = piece.length - v.piece_bytes
            x = balance(v_rate, my_rate, s.ttfb, left)
            cut = v.piece_bytes + int(x)
            t_split = x / v_rate
            if (
                piece.length - cut < cfg.min_split_bytes
                or t_split >= t_owner * cfg.split_gain
                or t_owner - t_split < cfg.min_split_gain
            ):
                return None
            return Help(v, cut)
        t_me = s.ttfb + piece.length / my_rate
        if t_me >= min(t_owner, _shared_finish(board, v, now)) * cfg.race_margin:
            return None
        return Help(v, None)

    def _split_front(
        self, board: Board, s: SourceState, v: Assignment, v_rate: float, my_rate: float, t_owner: float
    ) -> Help | None:
        """The back of ``v``'s piece is here (its helpers' parts from ``v.cut`` on) and only the
        owner's front is left: an idle connection fetches the back of that front, ``[cut, v.cut)``,
        cut where both finish together. A crawling owner otherwise decides the end alone (bench
        degrade: fronts of 100-300 KB at 0.1 MB/s per connection, 1-3 s after every other byte).
        """
        cfg = board.cfg
        x = balance(v_rate, my_rate, s.ttfb, v.cut - v.piece_bytes) if v.cut is not None else 0.0
        cut = v.piece_bytes + int(x)
        t_split = x / v_rate
        if v.cut is None or v.cut - cut < cfg.min_split_bytes or t_split >= t_owner * cfg.split_gain:
            return None
        if t_owner - t_split < (RESPLIT_GAIN_IDLE if s.active == 0 else RESPLIT_GAIN):
            return None
        return Help(v, cut, end=v.cut)

    def begin(self, helper: Assignment, job: Help) -> None:
        """``helper`` (a race assignment of the owner's current piece) starts ``job``."""
        if job.cut is None:
            self.racing[helper.start] = helper
            return
        helper.split_at, helper.owner, helper.split_end = job.cut, job.owner, job.end
        if job.replaces is not None:
            job.replaces.cancelled = True
            del self.racing[helper.start]
        if job.owner.cut is None:
            self.racing[helper.start] = helper
        else:
            self.second[helper.start] = helper  # a second split, from a lower cut
        job.owner.cut = job.cut

    def helper_finished(self, helper: Assignment, data: bytes, pieces: PieceMap) -> bool:
        """A split helper has the back part of its piece: keep it for the owner's cut.

        False if nobody will use it (the piece is done, the owner stopped or lost its cut).
        """
        i = helper.start
        owner = helper.owner
        if (
            helper.cancelled
            or pieces.is_done(i)
            or owner is None
            or owner.cancelled
            or owner.cut is None
            or owner.next_piece != i
            or helper.split_at < owner.cut
        ):
            return False
        self.split_data.setdefault(i, {})[helper.split_at] = (data, helper.source)
        return True

    def part(self, a: Assignment, index: int, length: int) -> tuple[int, bytes, str] | None:
        """For an owner past its cut: ``(cut, bytes, helper source)`` once helpers have all the
        bytes from a cut at or before where the owner stands to the end of the piece (``length``
        bytes), in one part or in parts that follow each other (a split of the front: the
        source is the first part's)."""
        parts = self.split_data.get(index)
        if not parts or a.cut is None:
            return None
        for c in sorted((c for c in parts if c <= a.piece_bytes), reverse=True):
            chain = _chain(parts, c, length)
            if chain is not None:
                data = parts[c][0] if len(chain) == 1 else b"".join(parts[k][0] for k in chain)
                return c, data, parts[c][1]
        return None

    def piece_done(self, a: Assignment, index: int, length: int) -> list[tuple[int, bytes, str]]:
        """Piece ``index`` (``length`` bytes) of ``a`` verified: the losing racer or helpers stop.
        Returns the helpers' parts the piece was made with, ``(cut, bytes, source)`` each in
        order (what ``part`` gave where ``a`` stands; none: ``a`` fetched it all); the bytes of
        the other parts are counted in ``unused``."""
        parts = self.split_data.pop(index, {})
        used = []
        if a.cut is not None and a.next_piece == index:
            for c in sorted((c for c in parts if c <= a.piece_bytes), reverse=True):
                chain = _chain(parts, c, length)
                if chain is not None:
                    used = [(k, *parts.pop(k)) for k in chain]
                    break
            a.cut = None
        self.unused += sum(len(d) for d, _ in parts.values())
        for helpers in (self.racing, self.second):
            other = helpers.pop(index, None)
            if other is not None and other is not a:
                other.cancelled = True
        # If a racer won, the owner of this piece sees wanted() == False and gives its span back.
        return used

    def helper_stopped(self, a: Assignment) -> None:
        """Racer or split helper ``a`` ended."""
        for helpers in (self.racing, self.second):
            if helpers.get(a.start) is a:
                del helpers[a.start]
        owner = a.owner
        if owner is not None and owner.cut is not None and owner.next_piece == a.start:
            # The owner's cut is the lowest one a helper still works from or left its part at;
            # none: the helper gave up and its owner fetches the whole piece.
            cuts = list(self.split_data.get(a.start, {}))
            cuts += [
                h.split_at
                for h in (self.racing.get(a.start), self.second.get(a.start))
                if h is not None and h.owner is owner and not h.cancelled
            ]
            owner.cut = min(cuts) if cuts else None

    def owner_stopped(self, a: Assignment, pieces: PieceMap) -> None:
        """Span ``a`` ended: if it stopped before the piece it had a helper for, that work is void."""
        if a.cut is not None and a.next_piece < a.end and not pieces.is_done(a.next_piece):
            for helpers in (self.racing, self.second):
                helper = helpers.pop(a.next_piece, None)
                if helper is not None:
                    helper.cancelled = True
            self.split_data.pop(a.next_piece, None)
            a.cut = None

    def mixed_failed(self, a: Assignment, index: int) -> None:
        """A copy of piece ``index`` made of several sources' bytes failed: fetch it whole."""
        self.whole_only.add(index)
        self.split_data.pop(index, None)
        a.cut = None

    def forget(self, index: int) -> None:
        """Piece ``index`` is fetched again: a helper's part of an earlier copy is void."""
        self.split_data.pop(index, None)
