"""Sharing a LAN's uplink: what mirrors fetch when a BitTorrent swarm of the office is in the pull.

A swarm source tells which pieces its connected peers have (``Scheduler.set_peer_pieces``); it is
given only those. Mirrors take first the pieces no peer has, from a frontier of their own: where
their last span ended, else a random point in the middle half of the longest run of such pieces
(far from every other machine's frontier). A mirror span stops where peers have the next piece,
and gives up its rest once they do.

Machines that see each other also split the model between them (``Board.lan_share``, set by the
swarm: this machine's rank among the sorted addresses of the machines still pulling): a mirror
with no frontier starts at the first such piece of its own slice ``[rank*n/machines,
(rank+1)*n/machines)``, so N machines started together fetch N disjoint slices from outside at once
instead of meeting at random points. Once its slice is done it helps with the others' (the middle
of the longest run nobody has, as before). A machine that leaves the swarm leaves the ranks, and
its slice is shared out again. (Refusing short runs in another's slice, to leave a tail to its
owner, starved pulls whose swarm had given up: not done.)

The design note ("Sharing a LAN's uplink" in ``scheduler``)
tells why, and what ``scripts/bench_lan.py`` measured.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Iterator

from dsmirror._schedule.board import Board
from dsmirror._schedule.state import Assignment, SourceState

__all__ = ["in_lan_pull", "leave_to_swarm", "outside_runs", "outside_swarm", "remember_frontier", "swarm_has"]


def swarm_has(board: Board, i: int) -> bool:
    """Does a peer of a (not banned) swarm source have piece ``i``?"""
    return any(have[i] for name, have in board.peer_pieces.items() if not board.sources[name].banned)


def in_lan_pull(board: Board, s: SourceState) -> bool:
    """Is ``s`` a mirror in a pull that has a live swarm source?"""
    return s.info.name not in board.peer_pieces and any(
        not board.sources[name].banned for name in board.peer_pieces
    )


def outside_swarm(board: Board, s: SourceState, rng: random.Random) -> int | None:
    """A free piece no peer has, for a mirror: where this source's last span ended, else a
    random point in the middle half of the longest run of such pieces."""
    pieces = board.pieces

    def ok(k: int) -> bool:
        return pieces.is_free(k) and not swarm_has(board, k) and board.usable_for(s, k)

    while s.resume_at:
        k = s.resume_at.pop()
        if k < len(pieces) and ok(k):
            return k
    rank, machines = board.lan_share
    if machines > 1:
        n = len(pieces)
        lo, hi = max(pieces.cursor, rank * n // machines), (rank + 1) * n // machines
        first = next(outside_runs(board, s, lo), None)
        if first is not None and first[0] < hi:
            return first[0]
    best_lo, best_len = -1, 0
    for lo, hi in outside_runs(board, s, pieces.cursor):
        if hi - lo > best_len:
            best_lo, best_len = lo, hi - lo
    if best_len <= 0:
        return None
    return best_lo + best_len // 4 + rng.randrange(max(1, best_len // 2))


def outside_runs(board: Board, s: SourceState, start: int) -> Iterator[tuple[int, int]]:
    """The runs ``[lo, hi)`` of pieces from ``start`` on that mirror ``s`` may take from outside:
    free, had by no peer of a live swarm, and fetchable by ``s``.

    Found in leaps (``bytearray.find`` over the free flags and the peers' maps, a whole file ``s``
    lacks at once), so the cost follows the number of runs, not of pieces.
    """
    m, pieces, n = board.m, board.pieces, len(board.pieces)
    haves = [have for name, have in board.peer_pieces.items() if not board.sources[name].banned]
    ranges = m.file_piece_ranges
    lacking = sorted(ranges[fi].start for fi in s.missing_files if ranges[fi])
    spoiled = {i for i, who in pieces.spoiled().items() if s.info.name in who and not board.usable_for(s, i)}
    blocked = sorted(spoiled)
    lo = start
    while True:
        lo = pieces.next_free(lo)
        if lo >= n:
            return
        fi = pieces.file_of(lo)
        if fi in s.missing_files:
            lo = ranges[fi].stop
            continue
        had = next((have for have in haves if have[lo]), None)
        if had is not None:
            k = had.find(0, lo)
            lo = n if k < 0 else k
            continue
        if lo in spoiled:
            lo += 1
            continue
        hi = pieces.next_not_free(lo)
        for have in haves:
            k = have.find(1, lo, hi)
            hi = k if k >= 0 else hi
        for cut in (lacking, blocked):
            j = bisect_right(cut, lo)
            if j < len(cut) and cut[j] < hi:
                hi = cut[j]
        yield lo, hi
        lo = hi


def leave_to_swarm(board: Board, a: Assignment) -> None:
    """After a verified piece of mirror span ``a``: if peers have its next piece now, end the span.

    Peers got the rest of this span meanwhile (another machine of the LAN fetched the same pieces
    from outside): leave it to the swarm instead of fetching it twice.
    """
    if a.outside and a.next_piece < a.end and swarm_has(board, a.next_piece):
        board.pieces.give_back(a.next_piece, a.end)
        a.end = a.next_piece


def remember_frontier(board: Board, s: SourceState, a: Assignment) -> None:
    """Mirror span ``a`` ended well: ``s`` continues after it next time, unless peers have its
    last piece already (then another machine fetched the same pieces, and ``s`` starts elsewhere)."""
    if a.outside and a.end > a.start and not swarm_has(board, a.end - 1) and len(s.resume_at) < 64:
        s.resume_at.append(a.end)
