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
    mirror fetches from outside only pieces of its own machine's blocks that no peer has, its
    best-scoring block first (``LanView.order``: a machine that joins outscores an owner least
    often on the blocks that owner is at work on, and machines that start before they met start
    at different places); a span goes on while the next piece is its own and no peer has it.
    Everything else comes from the LAN. Imbalance between owners costs no time: the uplink is
    shared, so when the others are done with their blocks the last owner gets all of it.

Pieces peers have stay on the LAN
    A mirror does not take a piece some peer has (``Board.usable_for``), neither free nor by
    stealing or racing, unless the swarm cannot cope (its measured rate is much below the
    mirrors', or it delivered nothing for ``lan_stall`` seconds while pieces waited for it):
    a machine that joins after the others finished takes nothing from outside.

The start: discovery before the first byte
    A machine that has not met its peers yet would fetch blocks they are fetching. So in a pull
    with a swarm, mirrors wait until the swarm has met peers and the set of machines held still
    for ``lan_settle`` seconds, or until ``lan_grace`` seconds after the swarm was ready. The grace
    counts from when the swarm is ready: a resumed pull's swarm first checks its own copy, and
    mirrors that started meanwhile would fetch what the seeders of the LAN have. A swarm not ready
    after ``lan_ready_wait`` seconds (a magnet whose metadata no peer sends) is not waited for.
    A machine alone does not pay the whole grace: once its swarm was ready ``_EARLY_AFTER`` seconds
    with no peer, met or on its way (connecting, or in its handshake: ``pending``), one connection
    starts, in its best block (where another machine starting unseen at the same time is unlikely
    to be), in a model of at least ``_EARLY_BLOCKS`` blocks. Why that long: seeders announce every
    torrent on the LAN every second, and a seeder that took its torrent over from its pull makes no
    announce at add; most seeders dial a machine at its own announce (measured: met 1-30 ms after
    the swarm was ready), but one that failed to reach that address before (a machine that restarts,
    or pulls again) backs off from it, and is heard of at its next announce, within that second
    (measured: 0.18-0.21 s, 2 joiners of 6). The swarm finds such a peer within a loop turn of its
    dial (``SwarmSource._scan_peers``), and while it connects it is ``pending``: so the wait is that
    second and a tenth, not a second and a peer scan more (1.25 s, which with the 0.2 s grid of
    the connections' asking put the first byte of a machine alone 1.4 s after its swarm was ready).
    Until the grace is over nothing more, not even a steal; then, still
    alone, it keeps at most ``lan_alone_bytes`` in flight, doubling every ``lan_grace``: a machine
    that joins later meets that much at work, which it cannot see (a join costs the pieces in flight
    in its blocks).
    A machine that has met only machines pulling too, none with a piece yet (they started
    together; not a seed, nor a machine turning into one), starts one connection at once, in its
    best block, in such a model: another machine not met yet outscores it there rarely (8
    machines: first byte 0.4 s sooner).

One uplink, one connection per machine
    While other machines pull, a mirror keeps one connection at work: the uplink is shared, so
    the others' connections take up what one leaves between two requests, and the pieces of the
    office are verified, and copied over the LAN, one after another as they arrive. Each machine
    opening all its connections (8) had 64 pieces in flight at once with 8 machines: the first
    were verified after 4-5 s, all of them late, and the LAN could not copy most of the model in
    the time left (the last machine finished 2.4 s after the upstream's last byte, 1.49x one copy;
    now 0.3-0.5 s, 1.20x). A machine killed loses its pieces in flight: one, not eight. Once
    nothing new has appeared among the pieces peers have for ``_QUIET`` s (the others are done
    with their blocks), the last machine fetching from outside opens all its connections: one
    connection asking for a piece at a time leaves the uplink idle between requests. (A mirror
    that limits each connection, not the uplink, is not filled this way: the office takes one
    connection of it per machine.)

When machines change
    Mirror spans from outside end where this machine's blocks end (``cut_to_owner``); the piece
    at work is finished. A machine that leaves stays an owner for ``lan_handover`` seconds: a
    pull that finished turns into a seed in a second or two (``pull --seed``), and the pieces it
    fetched last, which no peer had copied yet, come back with it instead of being fetched again
    (measured: 6 of 98 pieces fetched twice with 3 machines before this rule). A machine killed
    hands its blocks on that much later.

When an owner goes quiet
    A machine that pulls but whose uplink broke still counts as an owner. When this machine has
    no block of its own left and nothing was verified for ``lan_stall`` seconds, its mirrors take
    other machines' pieces from the far end of what is left (the owners work from the front).

Measured in ``tests/test_lan.py`` and ``scripts/bench_lan.py`` on a namespaced LAN.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence

from dsmirror._schedule.board import Board
from dsmirror._schedule.owners import LanView
from dsmirror._schedule.state import Assignment, SourceState

__all__ = [
    "ask_again",
    "cut_to_owner",
    "extends",
    "hosts_changed",
    "in_lan_pull",
    "leave_to_swarm",
    "outside_runs",
    "outside_swarm",
    "remember_frontier",
    "swarm_has",
    "waiting",
]


_EARLY_BLOCKS = 64  # a machine alone starts before lan_grace only in a model of this many blocks
_EARLY_AFTER = 1.1  # ... and once its swarm was ready this long with no peer (LSD: every 1 s)
_QUIET = 1.0  # nothing new among the pieces peers have this long: the others left the uplink
_ORDER_WINDOW = 32  # blocks of this machine a pick looks at in its order (``_by_order``)


def swarm_has(board: Board, i: int) -> bool:
    """Does a peer of a (not banned) swarm source have piece ``i``?"""
    return board.peers_have(i)


def in_lan_pull(board: Board, s: SourceState) -> bool:
    """Is ``s`` a mirror in a pull that has a live (not banned) swarm source?"""
    return s.info.kind != "bittorrent" and any(
        o.info.kind == "bittorrent" and not o.banned for o in board.sources.values()
    )


def waiting(board: Board, s: SourceState, now: float) -> bool:
    """Must mirror ``s`` wait for the swarm to meet its peers before it takes work? (see "The
    start": a machine alone has one connection at work until ``lan_grace``, and little in flight
    for a while after it)."""
    view = board.lan
    if view is None or not in_lan_pull(board, s):
        return False
    cfg = board.cfg
    settled = view.settled(now, cfg.lan_settle, cfg.lan_grace, cfg.lan_ready_wait)
    if view.ready_at is None:
        return not settled
    busy = sum(1 for a in board.assignments.values() if a.outside and not a.cancelled)
    since = now - max(view.started, view.ready_at)
    if not settled:
        # One connection meanwhile, in this machine's best block (where another machine is
        # unlikely to start), once every peer met is a machine pulling too that has no piece
        # yet (they started together; a seed, or a peer turning into one, is waited for), or
        # alone once LSD would have found the seeders.
        early = view.blocks >= _EARLY_BLOCKS and busy == 0 and view.peers == len(view.hosts)
        early = early and not view.pending  # a peer connecting may be a seed
        if early and view.hosts:
            return any(have.find(1) >= 0 for have in board.peer_pieces.values())
        return not (early and since >= _EARLY_AFTER)
    if view.hosts:  # machines share the uplink: one connection each (see "One uplink")
        quiet = _others_quiet(board, view, now)  # the others are done with it: all of it
        return len(board.live(s.info.name)) >= (s.info.max_connections if quiet else 1)
    if not view.alone:
        return False
    over = since - cfg.lan_grace
    room = cfg.lan_alone_bytes << min(16, int(over / cfg.lan_grace))
    return busy * board.m.piece_size >= max(board.m.piece_size, room)


def ask_again(board: Board, now: float, longest: float) -> float:
    """Seconds until a mirror that ``waiting`` holds should ask again: when the next of the start's
    limits passes (``_EARLY_AFTER``, ``lan_settle``, ``lan_grace``), at most ``longest``."""
    view, cfg = board.lan, board.cfg
    if view is None or view.ready_at is None:
        return longest
    since = now - max(view.started, view.ready_at)
    ends = [_EARLY_AFTER - since, cfg.lan_grace - since]
    if view.peers > 0 and view.changed_at is not None:
        ends.append(cfg.lan_settle - (now - view.changed_at))
    soon = min((e for e in ends if e > 0), default=longest)
    return max(0.01, min(longest, soon))


def _others_quiet(board: Board, view: LanView, now: float) -> bool:
    """Have the other machines stopped fetching from outside? Nothing new appeared among the
    pieces peers have for ``_QUIET`` s (only an owner's fetch from outside adds a piece to that
    map: a copy over the LAN adds a piece one peer has already; this machine's own fetches are not
    counted, ``LanView.others_have``), after something did."""
    if now - view.counted_at >= _QUIET / 4:
        view.counted_at = now
        had = view.others_have(
            [have for name, have in board.peer_pieces.items() if not board.sources[name].banned]
        )
        if had > view.peer_pieces:
            view.grew_at = now
        view.peer_pieces = had
    return view.grew_at is not None and now - view.grew_at >= _QUIET


def extends(board: Board, i: int) -> bool:
    """May a mirror span of pieces from outside go on to piece ``i``?"""
    if swarm_has(board, i):
        return False  # peers have it: the swarm takes over
    return board.lan is None or board.lan.mine(i)


def outside_swarm(board: Board, s: SourceState, now: float) -> int | None:
    """A free piece no peer has, for mirror ``s`` of a LAN pull: where this source's last span
    ended inside a block, else in this machine's best block left (``LanView.order``); or, once
    the others went quiet, the last piece left of another machine's. None: nothing from outside
    for ``s`` now."""
    pieces, view = board.pieces, board.lan
    if view is not None and view.held and view.expire(now, board.cfg.lan_handover):
        pieces.reset_candidates()  # this machine may gain blocks: no span to cut

    def ok(k: int) -> bool:
        return pieces.is_free(k) and not swarm_has(board, k) and board.usable_for(s, k)

    while s.resume_at:
        at = s.resume_at.pop()
        if at < len(pieces) and ok(at) and (view is None or (view.mine(at) and at % view.block)):
            return at
    fallback = None if view is None else _by_order(board, s, view)
    if fallback is not None and (fallback == 0 or not board.peers_have(fallback - 1)):
        return fallback
    for lo, hi in outside_runs(board, s, pieces.cursor, view):
        k = lo
        while k < hi:
            if k == 0 or not board.peers_have(k - 1):
                return k
            # Right after a piece a peer has: likely where that machine's mirror is at work now
            # (the piece it finished last), so look further first: the next piece of this
            # machine's run, or without a view, the next run.
            fallback = k if fallback is None else fallback
            k = k + 1 if view is not None else hi
    if fallback is not None:
        return fallback
    if now - board.last_progress >= board.cfg.lan_stall:
        return _far_end(board, s)  # the owners work from the front: take the far end
    return None


def _by_order(board: Board, s: SourceState, view: LanView) -> int | None:
    """The first piece from outside for ``s`` in this machine's blocks, best block first; one
    right after a piece a peer has only if there is no other (that machine may be at work on it).

    Looks at ``_ORDER_WINDOW`` blocks of this machine at most (and as many of each other owner's
    on the way): None then, and the caller's scan in leaps takes over, so a call costs the same
    at any model size. Blocks with nothing free at the head of the order are passed for good.
    """
    pieces, n, size = board.pieces, len(board.pieces), view.block
    haves = [have for name, have in board.peer_pieces.items() if not board.sources[name].banned]
    order = view.order()
    fallback: int | None = None
    leading = True
    budget = _ORDER_WINDOW * (1 + view.owners)
    mine_left = _ORDER_WINDOW
    for j in range(view.done_to, len(order)):
        lo = order[j] * size
        hi = min(n, lo + size)
        k = pieces.next_free(lo)
        if k >= hi and leading:
            view.done_to = j + 1
            continue
        leading = False
        budget -= 1
        if budget < 0 or mine_left <= 0:
            break
        if k >= hi or not view.mine(lo):
            continue
        mine_left -= 1
        while k < hi:
            had = next((have for have in haves if have[k]), None)
            if had is not None:
                nxt = had.find(0, k, hi)
                k = pieces.next_free(hi if nxt < 0 else nxt)
            elif not board.usable_for(s, k):
                k = pieces.next_free(k + 1)
            elif k == 0 or not board.peers_have(k - 1):
                return k
            else:
                fallback = k if fallback is None else fallback
                break
    return fallback


def hosts_changed(
    board: Board, me: str, hosts: Sequence[str], peers: int, now: float, pending: int = 0
) -> None:
    """The swarm's report of the machines pulling (``Scheduler.set_lan_hosts``)."""
    view = board.lan
    if view is not None and view.update(me, hosts, peers, now, board.cfg.lan_handover, pending):
        board.pieces.reset_candidates()  # blocks that were another machine's may be this one's
        cut_to_owner(board)


def cut_to_owner(board: Board) -> None:
    """The machines of the LAN changed: mirror spans from outside end where this machine's
    blocks end (the connection drops the rest of its request at its next piece boundary), so that
    a machine that joined can fetch its blocks without meeting a span of ours there. The piece
    at work is finished: that is all a span loses to a join."""
    view = board.lan
    if view is None:
        return
    for a in board.assignments.values():
        if not a.outside or a.race or a.cancelled:
            continue
        k = view.first_not_mine(a.next_piece + 1, a.end)
        if k is not None:
            board.pieces.give_back(k, a.end)
            a.end = k


def outside_runs(
    board: Board, s: SourceState, start: int, view: LanView | None = None
) -> Iterator[tuple[int, int]]:
    """The runs ``[lo, hi)`` of pieces from ``start`` on that mirror ``s`` may take from outside:
    free, had by no peer of a live swarm, and fetchable by ``s``; with ``view``, only pieces of
    this machine's blocks, a run ending where its block ends.

    Found in leaps (``bytearray.find`` over the free flags and the peers' maps, a whole file ``s``
    lacks at once), so the cost follows the number of runs, not of pieces. The free pieces of
    another machine's blocks met on the way are dropped from the piece map's candidates
    (``PieceMap.drop_candidates``, until the owners change or a piece is free again): the next
    search leaps over them. Once this machine's blocks are done, a search costs the same at any
    model size, not a step for every block of the others (``tests/test_scale.py``).
    """
    m, pieces, n = board.m, board.pieces, len(board.pieces)
    haves = [have for name, have in board.peer_pieces.items() if not board.sources[name].banned]
    ranges = m.file_piece_ranges
    lacking = sorted(ranges[fi].start for fi in s.missing_files if ranges[fi])
    spoiled = {i for i, who in pieces.spoiled().items() if s.info.name in who and not board.usable_for(s, i)}
    blocked = sorted(spoiled)
    lo = start
    while True:
        lo = pieces.next_candidate(lo)
        if lo >= n:
            return
        block_end = n if view is None else min(n, (lo // view.block + 1) * view.block)
        if view is not None and not view.mine(lo):
            pieces.drop_candidates(lo, block_end)
            lo = block_end
            continue
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
        hi = min(block_end, pieces.next_not_free(lo))
        for have in haves:
            k = have.find(1, lo, hi)
            hi = k if k >= 0 else hi
        for cut in (lacking, blocked):
            j = bisect_right(cut, lo)
            if j < len(cut) and cut[j] < hi:
                hi = cut[j]
        yield lo, hi
        lo = hi


def _far_end(board: Board, s: SourceState) -> int | None:
    """The last free piece that no peer has and ``s`` may fetch, of any machine's blocks (the
    last piece of the last of ``outside_runs`` without a view), found in leaps from the end."""
    pieces, ranges = board.pieces, board.m.file_piece_ranges
    haves = [have for name, have in board.peer_pieces.items() if not board.sources[name].banned]
    k = len(pieces)  # the piece sought lies before this one
    while True:
        k = pieces.last_free(k)
        if k < pieces.cursor:
            return None
        fi = pieces.file_of(k)
        had = next((have for have in haves if have[k]), None)
        if had is not None:
            k = had.rfind(0, 0, k) + 1  # past the run of pieces that peer has
        elif fi in s.missing_files:
            k = ranges[fi].start
        elif board.usable_for(s, k):
            return k


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
