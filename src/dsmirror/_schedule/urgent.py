"""Pieces a reader waits for: ``dsmirror serve`` streaming a file while it is pulled.

A client of ``dsmirror serve`` (``hf download``, ``ollama pull``, a browser) that asks for a file
still being pulled gets each piece as soon as it verifies, in order (``_serve._pulljob``). It
waits for the one piece it needs next, so that piece decides when its next byte comes, whatever
the rest of the pull does. The job tells the scheduler (``Scheduler.hurry``), and an idle
connection, before it takes free work:

- takes a span that starts at that piece if it is still free (a Range request for the middle of
  a file no longer waits until the pull's front reaches it);
- races it whole if a connection holds it and would bring it much later than this one
  (``RACE_MARGIN``): a connection starved by its path (a stuck flow, a
  token bucket that keeps serving others) no longer holds the client's first byte until the
  end of the pull (``tests/test_pullthrough.py``: 1.45 s of 1.54 s once in CI). With the first
  piece's connection crawling at 4 KB/s, a 6 MB file at 2 MB/s: first byte after 18.5 s of
  18.8 s before, 1.51-1.67 s of 3.05-3.35 s now; the race waits for a connection to come idle
  (spans last seconds here), which is most of that time. An owner with no byte yet is raced
  once it has had ``UNMEASURED_AFTER`` and a connection that started after it brought a whole
  piece. The first verified copy wins, as in the tail race; the owner stops at its next chunk
  and gives the rest of its span back. Each race may fetch one piece twice: streaming a 3 MB
  file of 64 KiB pieces that way cost 0-9% of it (1.00-1.09x the file from the mirror, 10
  runs), against 1.00x without.

Nothing else changes: a pull nobody reads from never calls ``hurry``. Costs stay flat: the
pieces waited for are few (one per reading client), and each turn looks at the connections at
work, not at the pieces.
"""

from __future__ import annotations

from typing import NamedTuple

from dsmirror._schedule.board import Board
from dsmirror._schedule.rates import conn_rate, helper_rate
from dsmirror._schedule.state import Assignment, SourceState
from dsmirror._schedule.tail import Tail

__all__ = ["Hurry", "pick"]

#: Race only an owner this much slower than the racer: connections of one source sharing its
#: bandwidth differ by twice or half from second to second (``rates.owner_rate``), and racing
#: those cost the streaming test 8-13% of the file fetched twice (0.6, the tail race's margin).
RACE_MARGIN = 0.25
#: An owner with no rate of its own yet is judged after this long at least (it may be starting).
UNMEASURED_AFTER = 0.5


class Hurry(NamedTuple):
    """What an idle connection does for a piece waited for: race ``owner`` for it, or (owner
    None) take a span from it."""

    piece: int
    owner: Assignment | None


def _siblings_rate(board: Board, s: SourceState, owner: Assignment, now: float) -> float:
    """What the live connections of ``s`` other than ``owner`` deliver each, on average (before its
    first rate is learned: its probes of small pieces add up to 256 KiB first)."""
    rates = [conn_rate(a, now) for a in board.live(s.info.name) if a is not owner]
    rates = [r for r in rates if r > 0]
    return sum(rates) / len(rates) if rates else 0.0


def _overtaken(board: Board, owner: Assignment, length: int) -> bool:
    """Has a connection that started after ``owner`` received a whole piece's bytes already?"""
    return any(
        a is not owner and a.started_at >= owner.started_at and a.bytes_received >= length
        for a in board.assignments.values()
    )


def pick(board: Board, tail: Tail, s: SourceState, now: float, waited: set[int]) -> Hurry | None:
    """Help for a piece waited for (``waited``), or None. Drops the pieces that are done."""
    racing = tail.racing
    pieces, m = board.pieces, board.m
    for k in sorted(waited):
        if pieces.is_done(k):
            waited.discard(k)
            continue
        if pieces.is_free(k):
            if board.usable_for(s, k):
                return Hurry(k, None)
            continue
        busy = k in racing or k in tail.second or k in tail.split_data
        if busy or len(racing) >= board.cfg.max_racers or s.info.kind == "bittorrent":
            continue
        owner = next(
            (
                a
                for a in board.assignments.values()
                if a.next_piece == k and not a.race and not a.cancelled and a.split_at == 0
            ),
            None,
        )
        if owner is None or board.sources[owner.source].info.kind == "bittorrent":
            continue
        if not board.usable_for(s, k):
            continue
        my_rate = helper_rate(s) or _siblings_rate(board, s, owner, now)
        if my_rate <= 0:
            continue
        length = m.pieces[k].length
        t_me = s.ttfb + length / my_rate
        rate = conn_rate(owner, now)
        if rate > 0:
            t_owner = (length - owner.piece_bytes) / rate
        elif now - owner.started_at > UNMEASURED_AFTER and _overtaken(board, owner, length):
            t_owner = float("inf")  # no byte yet, while a connection that started later brought a piece
        else:
            continue
        if t_me < t_owner * RACE_MARGIN:
            return Hurry(k, owner)
    return None
