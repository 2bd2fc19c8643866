"""Handing out free work: a span of consecutive free pieces for an idle connection.

A span is sized from the connection's source's measured rate to last about ``span_seconds``,
capped by a fair share of the free work and by ``max_span_bytes``; an unmeasured source gets one
piece, its probe. With ``--prefer``/``--region``, other sources leave the free work to the
preferred ones while those alone would finish it about as soon. In a pull with a LAN swarm, a
mirror's span starts at its frontier of pieces no peer has (``lan``). A piece that would decide
the finishing time on a slow source is refused (``tail.too_slow_for_tail``). A file hashed whole
is written near its front (``order``). See "How work is handed out" and "Preference" in
``scheduler``.
"""

from __future__ import annotations

from typing import NamedTuple

from dsmirror._schedule import order
from dsmirror._schedule.board import Board
from dsmirror._schedule.lan import extends, in_lan_pull, outside_swarm
from dsmirror._schedule.rates import expected_rate
from dsmirror._schedule.state import SchedulerConfig, SourceState
from dsmirror._schedule.tail import too_slow_for_tail

__all__ = ["Span", "is_preferred", "pick_span", "preferred_can_cope", "span_pieces"]


class Span(NamedTuple):
    """Free pieces ``[start, end)`` of file ``file_index``; ``outside``: a mirror span of pieces
    no peer had."""

    file_index: int
    start: int
    end: int
    outside: bool


def span_pieces(rate: float, free_pieces: int, conns: int, piece_size: int, cfg: SchedulerConfig) -> int:
    """How many pieces a connection delivering ``rate`` bytes/s should ask for, with
    ``free_pieces`` free and ``conns`` connections (this one included) at work."""
    if rate <= 0:
        return 1  # unmeasured: a single real piece is the probe
    by_rate = rate * cfg.span_seconds
    fair = free_pieces * piece_size / conns
    want_bytes = max(piece_size, min(by_rate, fair, cfg.max_span_bytes))
    return max(1, int(want_bytes // piece_size))


def pick_span(board: Board, s: SourceState, now: float, at: int | None = None) -> Span | None:
    """Free work for an idle connection of ``s``, or None (nothing free it should take); with
    ``at``, a span that starts at that free piece (a reader waits for it: ``urgent``).

    Moves the piece map's cursor and pops the frontier ``s`` resumes at; takes no piece.
    """
    m, pieces = board.m, board.pieces
    n = len(pieces)
    i = pieces.first_free()
    lan = in_lan_pull(board, s)  # (``Scheduler.acquire`` asked ``lan.waiting`` already)
    picked = outside_swarm(board, s, now) if lan and at is None else None
    if at is not None:
        i = at
    elif picked is not None:
        i = picked
    else:
        if preferred_can_cope(board, s, now) or (lan and board.lan is not None and not board.lan.swarm_slow):
            return None
        i = board.next_usable(s, i)
        if i >= n:
            return None
    most = order.UNLIMITED
    if at is None and picked is None and not lan and board.ordered:
        got = order.place(board, s, i, now)  # a file hashed whole: written near its front
        if got is None:
            return None
        i, most = got
    fi = m.pieces[i].file_index
    file_end = m.file_piece_ranges[fi].stop
    free_bytes = pieces.free_bytes()
    if too_slow_for_tail(board, s, now, m.pieces[i], free_bytes):
        return None
    conns = max(1, sum(x.active for x in board.sources.values()) + 1)
    want = min(most, span_pieces(expected_rate(s), pieces.free_count(), conns, m.piece_size, board.cfg))
    end = i
    while end < file_end and end - i < want and pieces.is_free(end) and board.usable_for(s, end):
        if picked is not None and end > i and not extends(board, end):
            break  # a mirror span stops where peers can take over, or another machine's block begins
        end += 1
    return Span(fi, i, end, picked is not None)


# -- preference (--prefer, --region) -------------------------------------------------------------
def is_preferred(cfg: SchedulerConfig, s: SourceState) -> bool:
    if cfg.prefer != "auto" and s.info.source_class != cfg.prefer:
        return False
    return not (cfg.region and s.info.region != cfg.region)


def preferred_can_cope(board: Board, s: SourceState, now: float) -> bool:
    """With --prefer/--region, must this other source leave free work alone? (see the design note)."""
    cfg = board.cfg
    if (cfg.prefer == "auto" and not cfg.region) or is_preferred(cfg, s):
        return False
    preferred = [
        o for o in board.sources.values() if is_preferred(cfg, o) and not o.banned and o.paused_until <= now
    ]
    if not preferred:
        return False
    rate = sum(board.source_rate(o.info.name, now) for o in preferred)
    if rate <= 0:
        return any(o.active for o in preferred) and now - _started(board, preferred, now) < 3.0
    mine = expected_rate(s) * max(1, s.info.max_connections)
    free_bytes = board.pieces.free_bytes()
    alone = free_bytes / rate
    together = free_bytes / (rate + mine) if mine else alone
    return alone <= together * cfg.prefer_slack


def _started(board: Board, states: list[SourceState], now: float) -> float:
    """When the first connection at work of these sources started (``now`` if none is)."""
    names = {o.info.name for o in states}
    starts = [a.started_at for a in board.assignments.values() if a.source in names]
    return min(starts) if starts else now
