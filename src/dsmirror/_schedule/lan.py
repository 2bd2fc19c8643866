"""Sharing a LAN's uplink: what mirrors fetch when a BitTorrent swarm of the office is in the pull.

The goal (issue 13): N machines of an office pulling the same model at once take it from outside
about once (at most 1.05 copies), and none waits much longer than one copy takes over the uplink.

What each machine knows
    Its swarm source tells the scheduler which pieces its connected peers have
    (``Scheduler.set_peer_pieces``; the swarm is given only those), and which machines are pulling
    the model right now and take a share of the uplink (``Scheduler.set_lan_hosts``: the peer ids
    of connected dsmirror peers that fetch from mirrors and are not seeds, and its own). Nobody
    can see what another machine is fetching *now*, only what it finished.

Ownership: who fetches which pieces from outside
    So the machines agree beforehand. The pieces are cut into blocks of ``block_pieces`` pieces
    (about 8 MiB, at least 64 blocks), and every block has one owner among the machines pulling:
    the one whose hashed id scores highest for that block (rendezvous hashing, as in HRW / CARP).
    Every machine computes the same owners from the same set of machines, with no message between
    them; when a machine joins or leaves, only the blocks it gains or loses change hands. A
    mirror fetches from outside only pieces of its own machine's blocks that no peer has, in
    order (a span stops where the next piece is another's or a peer's); everything else comes
    from the LAN. A machine that is killed leaves the set of its peers within seconds, and its
    blocks are shared out among the others. Imbalance between owners costs no time: the uplink
    is shared, so when the others are done with their blocks the last owner gets all of it.

Pieces peers have stay on the LAN
    A mirror does not take a piece some peer has (``Board.usable_for``), neither free nor by
    stealing or racing, unless the swarm cannot cope (its measured rate is much below the
    mirrors', or it delivered nothing for ``lan_stall`` seconds while pieces waited for it):
    a machine that joins after the others finished takes nothing from outside.

The start: discovery before the first byte
    A machine that has not met its peers yet would fetch blocks they are fetching. So in a pull
    with a swarm, mirrors wait until the swarm has met peers and the set of machines held still
    for ``lan_settle`` seconds, or until ``lan_grace`` seconds after the pull started (a machine
    alone on its LAN pays that much once). LSD finds the peers of one LAN in well under a second.
    The grace counts from when the swarm is ready: a resumed pull's swarm first checks its own
    copy, and mirrors that started meanwhile would fetch what the seeders of the LAN have. A swarm
    not ready after ``lan_ready_wait`` seconds (a magnet whose metadata no peer sends) is not
    waited for.

When an owner goes quiet
    A machine that pulls but whose uplink broke still counts as an owner. When this machine has
    no block of its own left and nothing was verified for ``lan_stall`` seconds, its mirrors take
    other machines' pieces from the far end of what is left (the owners work from the front).

Measured in ``tests/test_lan.py`` and ``scripts/bench_lan.py`` on a namespaced LAN.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

from dsmirror._schedule.board import Board
from dsmirror._schedule.state import Assignment, SourceState

__all__ = [
    "cut_to_owner",
    "extends",
    "in_lan_pull",
    "leave_to_swarm",
    "outside_runs",
    "outside_swarm",
    "remember_frontier",
    "swarm_has",
    "waiting",
]


def swarm_has(board: Board, i: int) -> bool:
    """Does a peer of a (not banned) swarm source have piece ``i``?"""
    return board.peers_have(i)


def _live_swarm(board: Board) -> bool:
    return any(s.info.kind == "bittorrent" and not s.banned for s in board.sources.values())


def in_lan_pull(board: Board, s: SourceState) -> bool:
    """Is ``s`` a mirror in a pull that has a live swarm source?"""
    return s.info.name not in board.peer_pieces and any(
        not board.sources[name].banned for name in board.peer_pieces
    )


def waiting(board: Board, s: SourceState, now: float) -> bool:
    """Must mirror ``s`` wait for the swarm to meet its peers before it takes work?"""
    view = board.lan
    if view is None or s.info.kind == "bittorrent" or not _live_swarm(board):
        return False
    cfg = board.cfg
    return not view.settled(now, cfg.lan_settle, cfg.lan_grace, cfg.lan_ready_wait)


def extends(board: Board, i: int) -> bool:
    """May a mirror span of pieces from outside go on to piece ``i``?"""
    if swarm_has(board, i):
        return False  # peers have it: the swarm takes over
    return board.lan is None or board.lan.mine(i)


def outside_swarm(board: Board, s: SourceState, now: float) -> int | None:
    """A free piece no peer has, for mirror ``s`` of a LAN pull: of this machine's blocks, where
    this source's last span ended, else the first one; or, once the others went quiet, the
    last piece left of another machine's. None: nothing from outside for ``s`` now."""
    pieces, view = board.pieces, board.lan

    def ok(k: int) -> bool:
        return pieces.is_free(k) and not swarm_has(board, k) and board.usable_for(s, k)

    while s.resume_at:
        at = s.resume_at.pop()
        if at < len(pieces) and ok(at) and (view is None or view.mine(at)):
            return at
    last: tuple[int, int] | None = None
    fallback: int | None = None
    for lo, hi in outside_runs(board, s, pieces.cursor):
        k: int | None = lo if view is None else view.first_mine(lo, hi)
        while k is not None:
            if k == 0 or not board.peers_have(k - 1):
                return k
            # Right after a piece a peer has: likely where that machine's mirror is at work now
            # (the piece it finished last), so look further first.
            fallback = k if fallback is None else fallback
            k = None if view is None or k + 1 >= hi else view.first_mine(k + 1, hi)
        last = (lo, hi)
    if fallback is not None:
        return fallback
    if last is not None and now - board.last_progress >= board.cfg.lan_stall:
        return last[1] - 1  # the owners work from the front: take the far end
    return None


def cut_to_owner(board: Board) -> None:
    """The machines of the LAN changed: mirror spans from outside end where this machine's
    blocks end (the connection drops the rest of its request at its next piece boundary), so that
    a machine that joined can fetch its blocks without meeting a span of ours there."""
    view = board.lan
    if view is None:
        return
    for a in board.assignments.values():
        if not a.outside or a.race or a.cancelled:
            continue
        k = next((k for k in range(a.next_piece + 1, a.end) if not view.mine(k)), None)
        if k is not None:
            board.pieces.give_back(k, a.end)
            a.end = k


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
