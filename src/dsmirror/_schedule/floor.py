"""Slow connections and the speed floor: replace crawling connections, hold ``--min-rate``.

A connection that, after ``recycle_after`` seconds, delivers less than ``recycle_ratio`` of its
source's best connection is on a bad path (a stuck TCP flow, a sick CDN node): it is dropped and
its worker opens a new one at once, so the source keeps all its connections (aria2's
``--lowest-speed-limit`` kills connections and never reopens them, aria2 #426; a source whose
connections are all slow is handled by stealing instead). With ``min_total_rate``, the whole pull
is judged too: when a ``floor_window`` delivered less than the floor, sources waiting in back-off
are retried now (a Retry-After is still honoured) and the slowest connection is replaced.
See "Slow connections and the speed floor" in ``scheduler`` for what it measured.
"""

from __future__ import annotations

from dsmirror._schedule.board import Board
from dsmirror._schedule.rates import judged_rate, live_rate
from dsmirror._schedule.state import Assignment

__all__ = ["SpeedFloor", "hold_floor", "mark", "recycle_crawlers"]


def mark(board: Board, now: float) -> dict[str, list[Assignment]]:
    """Record where each streaming connection is (its ``marks``, at most every 0.5 s, spanning
    ``recycle_after``); returns them by source."""
    after = board.cfg.recycle_after
    by_source: dict[str, list[Assignment]] = {}
    for a in board.assignments.values():
        if a.cancelled or a.race or (a.cut is not None and a.piece_bytes >= a.cut):
            continue  # an owner past its cut waits for its split helper's part: it does not crawl
        if not a.marks or now - a.marks[-1][0] >= 0.5:
            a.marks.append((now, a.bytes_received))
            while len(a.marks) > 2 and now - a.marks[1][0] >= after:
                a.marks.pop(0)
        by_source.setdefault(a.source, []).append(a)
    return by_source


def recycle_crawlers(board: Board, by_source: dict[str, list[Assignment]], now: float) -> int:
    """Mark for ``recycle`` the crawling connection of each source, if any; returns how many."""
    cfg = board.cfg
    recycled = 0
    for name, conns in by_source.items():
        s = board.sources[name]
        if len(conns) < 2 or now - s.last_recycle_at < cfg.recycle_after:
            continue
        judged = [(r, a) for a in conns if (r := judged_rate(a, now, cfg.recycle_after)) is not None]
        if not judged:
            continue
        best = max(max(r for r, _ in judged), max(live_rate(a, now, cfg.rate_window) for a in conns))
        r_worst, worst = min(judged, key=lambda x: x[0])
        if best <= 0 or worst.recycle or r_worst >= cfg.recycle_ratio * best:
            continue
        # Worth it only if a new connection would redo this piece much sooner than this
        # one finishes it (what it has of the piece is lost).
        piece = board.m.pieces[worst.next_piece] if worst.next_piece < worst.end else None
        if piece is None:
            continue
        t_keep = (piece.length - worst.piece_bytes) / max(r_worst, 1.0)
        if t_keep > 2 * (s.ttfb + piece.length / best):
            worst.recycle = True
            s.last_recycle_at = now
            recycled += 1
    return recycled


class SpeedFloor:
    """The whole pull's rate, judged over windows of ``floor_window`` seconds."""

    def __init__(self, now: float) -> None:
        self.received = 0  # every byte reported by progress()
        self._at = now
        self._bytes = 0

    def below(self, board: Board, now: float) -> bool:
        """Did the window that closes now deliver less than ``min_total_rate``?"""
        floor = board.cfg.min_total_rate
        if not floor or now - self._at < board.cfg.floor_window:
            return False
        rate = (self.received - self._bytes) / (now - self._at)
        self._at, self._bytes = now, self.received
        return not (rate >= floor or board.pieces.left == 0)


def hold_floor(board: Board, now: float) -> int:
    """The pull is below its floor: retry the sources in back-off now (not those honouring a
    Retry-After) and mark the slowest connection for ``recycle``; returns how many were marked."""
    for s in board.sources.values():
        if not s.banned and s.paused_until > now and s.honour_until <= now:
            s.paused_until = now
    old = [
        a
        for a in board.assignments.values()
        if not (a.cancelled or a.recycle or a.race) and now - a.started_at >= board.cfg.recycle_after
    ]
    if not old:
        return 0
    min(old, key=lambda o: live_rate(o, now, board.cfg.rate_window)).recycle = True
    return 1
