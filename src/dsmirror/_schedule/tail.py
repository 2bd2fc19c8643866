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
        if a.race or a.cancelled or a.end - a.next_piece < 2:
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
    capable = [
        o
        for o in board.sources.values()
        if o is not s and not o.banned and o.paused_until <= now and not free_files <= o.missing_files
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


class Help(NamedTuple):
    """Tail work for an idle connection: the back part of ``owner``'s piece from ``cut`` (a
    split), or with ``cut`` None the whole piece (a race)."""

    owner: Assignment
    cut: int | None


@dataclass
class Tail:
    """Helpers and racers at work, and what they left for the owners of their pieces."""

    racing: dict[int, Assignment] = field(default_factory=dict)  # piece -> racer or split helper
    #: piece -> (cut, bytes, helper source): a helper's back part, waiting for its owner's cut
    split_data: dict[int, tuple[int, bytes, str]] = field(default_factory=dict)
    whole_only: set[int] = field(default_factory=set)  # pieces whose mixed copy failed: fetched whole

    def can_split(self, board: Board, s: SourceState, a: Assignment) -> bool:
        """May an idle connection of ``s`` fetch the back part of ``a``'s current piece?

        Only between two streaming sources (a swarm hands over whole pieces), on the last piece
        of the owner's span (its stream is cut after that piece), once per piece, and never for a
        piece without its own hash (a mixed copy could not be blamed on either source) or one a
        split copy already failed.
        """
        i = a.next_piece
        return (
            a.source != s.info.name
            and s.info.kind != "bittorrent"
            and board.sources[a.source].info.kind != "bittorrent"
            and a.next_piece == a.end - 1
            and a.cut is None
            and i not in self.whole_only
            and bool(board.m.pieces[i].sha256)
        )

    def pick_help(self, board: Board, s: SourceState, now: float) -> Help | None:
        """Tail work for an idle connection of ``s``: help the owner that will finish last."""
        cfg = board.cfg
        if len(self.racing) >= cfg.max_racers:
            return None
        my_rate = helper_rate(s)
        if my_rate <= 0:
            return None
        best: tuple[float, Assignment] | None = None
        for a in board.assignments.values():
            if a.race or a.cancelled or a.source == s.info.name or a.next_piece >= a.end:
                continue
            k = a.next_piece
            if k in self.racing or k in self.split_data:
                continue
            if board.pieces.is_done(k) or not board.usable_for(s, k):
                continue
            t = remaining_time(board.m, a, now)
            if best is None or t > best[0]:
                best = (t, a)
        if best is None:
            return None
        t_owner, v = best
        piece = board.m.pieces[v.next_piece]
        v_rate = conn_rate(v, now)
        if v_rate > 0 and self.can_split(board, s, v):
            # Split: the owner keeps the front, this connection fetches the back; the cut is
            # where both finish together.
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
        if t_me >= t_owner * cfg.race_margin:
            return None
        return Help(v, None)

    def begin(self, helper: Assignment, job: Help) -> None:
        """``helper`` (a race assignment of the owner's current piece) starts ``job``."""
        if job.cut is not None:
            helper.split_at, helper.owner = job.cut, job.owner
            job.owner.cut = job.cut
        self.racing[helper.start] = helper

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
            or owner.cut != helper.split_at
        ):
            return False
        self.split_data[i] = (helper.split_at, data, helper.source)
        return True

    def part(self, a: Assignment, index: int) -> tuple[int, bytes, str] | None:
        """For an owner past its cut: ``(cut, bytes, helper source)`` once the helper has them all."""
        got = self.split_data.get(index)
        if got is None or a.cut != got[0]:
            return None
        return got

    def piece_done(self, a: Assignment, index: int) -> tuple[int, bytes, str] | None:
        """Piece ``index`` of ``a`` verified: the losing racer stops. Returns the helper's part
        that the piece was made with, if any."""
        split = self.split_data.pop(index, None)
        if a.cut is not None and a.next_piece == index:
            a.cut = None
        racer = self.racing.pop(index, None)
        if racer is not None and racer is not a:
            racer.cancelled = True
        # If a racer won, the owner of this piece sees wanted() == False and gives its span back.
        return split

    def helper_stopped(self, a: Assignment) -> None:
        """Racer or split helper ``a`` ended."""
        if self.racing.get(a.start) is a:
            del self.racing[a.start]
        if a.owner is not None and a.start not in self.split_data and a.owner.cut == a.split_at:
            a.owner.cut = None  # the helper gave up: its owner fetches the whole piece

    def owner_stopped(self, a: Assignment, pieces: PieceMap) -> None:
        """Span ``a`` ended: if it stopped before the piece it had a helper for, that work is void."""
        if a.cut is not None and a.next_piece < a.end and not pieces.is_done(a.next_piece):
            helper = self.racing.pop(a.next_piece, None)
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
