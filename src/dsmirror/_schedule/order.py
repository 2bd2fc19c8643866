"""Writing files hashed whole near their front, so that a resume reads back little (issue 14).

Why
    A file without published piece hashes (an ``hf://`` or ``ollama://`` blob, a manifest that
    names only a file's SHA-256) is checked by the store's whole-file hasher, which hashes it in
    order and journals where it stands (``dsmirror._journal.store``). After ``kill -9`` the hasher
    continues from its last journaled state: what it reads back are the pieces after the file's
    first missing one. Handed out as usual, eight connections of a fast mirror each take a 6 s
    span of one 404 GB blob: up to 8 x 512 MiB stored beyond that first gap, and a slow
    connection holding the gap can leave gigabytes behind it. Measured with
    ``scripts/bench_store.py resume --resume-files 1`` (4000 pieces of 1 MiB, one file, digest
    only, killed at 99%): 3571 MiB read back before this, 25 MiB after.

The rule (``place``, asked by ``spans.pick_span`` for mirror connections outside a LAN pull)
    - A connection whose first usable free piece lies in an *ordered* file (one hashed whole,
      ``Board.ordered``) that another connection already writes takes the next file nobody
      writes, if there is one: with many files (a 163-shard model) each connection writes its
      own, front to back, and nothing is fetched ahead of anyone's gap.
    - Otherwise it joins that file within a budget: over all ordered files, the pieces handed
      beyond the end of the span that holds the file's first missing piece (``ahead``) stay
      within a *window* of ``max(order_window, min(order_seconds x the mirrors' rate,
      order_max), order_pieces x their connections x the piece size)`` bytes: 256 MiB, or 3 s of
      what the mirrors deliver up to 1 GiB, or two pieces per connection. One span is at most
      the window over the file's writers plus one.
    - No connection takes a span longer than it fetches while the other mirrors fill the window
      (``_capped``), so that the span at the front is not the one everyone waits for; a source
      too slow to fetch one piece in that time takes no free work there (it still steals and
      helps at the tail). The first writer of a file is capped so only when there are fewer
      unwritten files than mirror connections. A connection with no room waits or steals.
    A bigger window costs read-back after a crash, a smaller one throughput. In simulation
    (``tests/test_scheduler.py``, ``ORDER_CASES``; 8 MiB pieces, 8 connections a mirror):
    0.98-1.02x the time of the pieces handed out as before, and what lies beyond the gaps within
    the window (4 GiB from 40 MiB/s and 0.2 MiB/s mirrors: 256 MiB against 4024 MiB before).
    A window of 256 MiB alone cost 4% of the time at 400 MiB/s (simulated latency 50 ms a
    request), hence the rate's share; capped at 1 GiB, because at loopback speed 3 s of the
    rate is most of a test model (``bench_store``: 3.5 GiB of 3.9 read back once).

Costs stay flat in the piece count: the free search is ``Board.next_usable``, each file's first
missing piece a cursor (``PieceMap.first_missing``), and the budget a sum over the files written
now (``Board.extents``, one entry per ordered file with pieces handed out and not done).
"""

from __future__ import annotations

from dsmirror._schedule.board import Board
from dsmirror._schedule.rates import expected_rate
from dsmirror._schedule.state import SourceState

__all__ = ["ahead", "handed", "place", "writers"]

#: No limit on a span's pieces (``spans.span_pieces`` sizes it).
UNLIMITED = 1 << 62


def writers(board: Board, fi: int) -> int:
    """The connections at work on file ``fi`` (not cancelled)."""
    return sum(1 for a in board.assignments.values() if a.file_index == fi and not a.cancelled)


def handed(board: Board, fi: int, end: int) -> None:
    """Pieces of file ``fi`` up to ``end`` were handed out: its extent follows."""
    if fi in board.ordered and board.extents.get(fi, 0) < end:
        board.extents[fi] = end


def _front_end(board: Board, fi: int, front: int) -> int:
    """The end of the span that holds piece ``front`` of file ``fi`` (``front`` if none does)."""
    for a in board.assignments.values():
        if a.file_index == fi and not a.cancelled and a.next_piece <= front < a.end:
            return a.end
    return front


def _ahead_pieces(board: Board, fi: int) -> int:
    """Pieces of ordered file ``fi`` handed out beyond the span holding its first missing piece."""
    extent = board.extents.get(fi)
    if extent is None:
        return 0
    pieces = board.pieces
    if pieces.file_done(fi) or pieces.file_untouched(fi):
        del board.extents[fi]  # done, or every piece free again (its digest failed): nothing ahead
        return 0
    return max(0, extent - _front_end(board, fi, pieces.first_missing(fi)))


def ahead(board: Board) -> int:
    """Bytes handed out beyond the first gap, summed over the ordered files (what a resume after
    a crash would read back, besides the pieces in flight)."""
    return sum(_ahead_pieces(board, fi) for fi in list(board.extents)) * board.m.piece_size


def _mirror(s: SourceState) -> bool:
    return s.info.kind != "bittorrent" and not s.banned


def _mirror_conns(board: Board) -> int:
    """The connections the mirrors may open, all together."""
    return sum(max(1, o.info.max_connections) for o in board.sources.values() if _mirror(o))


def _written(board: Board) -> set[int]:
    """The files some connection writes now."""
    return {a.file_index for a in board.assignments.values() if not a.cancelled}


def _rate(board: Board, now: float) -> float:
    """What the mirrors deliver now, or would with their connections at work."""
    return sum(
        max(board.source_rate(o.info.name, now), expected_rate(o) * o.active)
        for o in board.sources.values()
        if _mirror(o)
    )


def _window(board: Board, now: float) -> float:
    cfg = board.cfg
    return max(
        float(cfg.order_window),
        min(cfg.order_seconds * _rate(board, now), float(cfg.order_max)),
        cfg.order_pieces * _mirror_conns(board) * board.m.piece_size,
    )


def _capped(board: Board, s: SourceState, now: float, window: float) -> int | None:
    """Pieces ``s`` fetches while the other mirrors fill the window; None if not one."""
    mine = expected_rate(s)
    if mine <= 0:
        return UNLIMITED  # unmeasured: its span is its one-piece probe
    others = max(_rate(board, now) - mine, 0.0)
    if others <= 0:
        return UNLIMITED
    n = int(mine * window / others // board.m.piece_size)
    return n if n >= 1 else None


def _unwritten(board: Board, s: SourceState, fi: int) -> int | None:
    """The first usable free piece of a file after ``fi`` (then from the start) nobody writes."""
    m, pieces = board.m, board.pieces
    n = len(pieces)
    written = _written(board)
    ranges = m.file_piece_ranges
    for lo, hi in ((ranges[fi].stop, n), (0, ranges[fi].start)):
        i = lo
        while True:
            i = board.next_usable(s, i)
            if i >= hi:
                break
            fj = pieces.file_of(i)
            if fj not in written:
                return i
            i = ranges[fj].stop  # written: on to the next file (at most one hop per connection)
    return None


def _first_writer(board: Board, s: SourceState, now: float, i: int) -> tuple[int, int] | None:
    fi = board.pieces.file_of(i)
    if fi not in board.ordered:
        return i, UNLIMITED
    free = board.pieces.free_files()
    unwritten = len(free) - sum(1 for f in _written(board) if f in free)  # not a set difference: 5000 files
    if unwritten >= _mirror_conns(board):
        return i, UNLIMITED  # every connection can have a file of its own
    got = _capped(board, s, now, _window(board, now))
    return None if got is None else (i, got)


def place(board: Board, s: SourceState, i: int, now: float) -> tuple[int, int] | None:
    """Where an idle mirror connection of ``s`` whose first usable free piece is ``i`` starts,
    and how many pieces it may take at most: ``(start, most)``, or None (no free work for it
    now). See the module docstring."""
    fi = board.pieces.file_of(i)
    if fi not in board.ordered or not _mirror(s):
        return i, UNLIMITED
    w = writers(board, fi)
    if w == 0:
        return _first_writer(board, s, now, i)
    j = _unwritten(board, s, fi)
    if j is not None:
        return _first_writer(board, s, now, j)
    window = _window(board, now)
    ps = board.m.piece_size
    room = int((window - ahead(board)) // ps)
    extent = board.extents.get(fi, i)
    most = max(0, extent - i) + room if i < extent else room
    most = min(most, int(window / (w + 1) // ps))
    capped = _capped(board, s, now, window)
    if capped is None:
        return None
    most = min(most, capped)
    return (i, most) if most >= 1 else None
