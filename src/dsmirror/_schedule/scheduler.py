"""The scheduler: which source fetches which pieces, decided continuously from measured delivery.

Design
======
What it optimises: the finishing time of the whole pull, given sources whose speed we only learn by
watching them and which change during the pull (a regional mirror overloaded at 10:00, a CDN that
throttles, a LAN peer that appears).

How work is handed out
    Each connection of a source asks for work when it is idle (``acquire``). It gets a *span*: a run
    of consecutive missing pieces of one file, fetched with one HTTP Range request (so latency is paid
    once per span, not once per piece). The span is sized from that connection's measured rate, to
    last about ``span_seconds`` — a connection that delivers twice as fast gets spans twice as long, so
    work flows to sources in proportion to what they deliver *now*, and a source that slows down
    automatically asks for less. A span is also capped at a fair share of what is left divided by the
    number of connections, so that no connection can sit on a large part of the tail.
    An unmeasured source first gets a single piece: its probe is a real piece, so no byte is wasted.
    A piece under 256 KiB measures latency more than throughput, so such probes of a source add up
    until they hold 256 KiB (``rates.first_time_measure``); before, a pull of small pieces went one
    piece per request to the end (2.5x the ideal time in simulation, 1.3x now).

Work stealing (what aria2 does not do: aria2 #897/#2111 rank mirrors only from finished downloads)
    When no piece is free, an idle connection looks at the span whose owner will finish last (its
    remaining bytes over its measured rate) and takes its far end: the split point is chosen so that
    both finish at the same time given both rates and the thief's latency. The victim learns at its
    next piece boundary that its span is shorter (``piece_verified`` returns False) and drops the
    request. A slow source therefore never owns more than it can finish in step with the fast ones.

The tail: split pieces (what Ollama's puller lacks: "stuck at 99%", ollama #1736)
    When only pieces *in progress* remain, an idle connection helps the one that will finish last.
    If the owner is streaming the last piece of its span, the piece is *split*: the helper fetches
    its back part with its own Range request, from a cut chosen so that both finish together given
    their measured rates and the helper's latency, and keeps those bytes in memory; the owner,
    on reaching the cut, hashes the helper's bytes after its own, writes them, and drops its
    stream. So the slow source delivers exactly what it can until the end, and nobody fetches a
    byte twice. If the helper is late the owner simply reads on (whoever has the rest first wins);
    if a split copy fails its hash, neither source can be blamed, so the piece is fetched again
    whole, by one source, and never split again. Because any piece can be split at the end, a slow
    source may start a piece that it alone would finish last; only pieces that cannot be split
    (no piece hash, or a swarm, which hands over whole pieces) are refused to a source that would
    decide the finishing time with them (``tail.too_slow_for_tail``).
    Measured with ``scripts/bench_mirrors.py`` (1 GiB, mirrors at 40/20/8 MB/s): the three mirrors
    now end within the same second; before, the mid mirror sat idle for the last second while
    8 MiB pieces finished on the far one at 1 MB/s per connection.

The tail race
    A piece that cannot be split (its owner stalled with no measured rate, more than one piece
    left in its span, no piece hash, a swarm) may be fetched whole by an idle fast connection if it
    would finish it clearly sooner (``race_margin``). "Sooner" counts the bandwidth the owner's
    other connections leave it when they finish (``tail._shared_finish``): a per-connection rate
    alone made a helper race the last piece of an owner whose sibling was nearly done, and both
    copies ended together. The first verified copy wins; the loser is
    cancelled at its next chunk. Racers and helpers buffer in memory and write under a piece lock,
    so a losing or corrupt copy can never overwrite good bytes. One racer or helper per piece, and
    only in the tail.

Slow connections and the speed floor (``tick``)
    aria2's ``--lowest-speed-limit`` kills a connection below a fixed speed and never reopens it
    (aria2 #426), so a pull can decay to zero connections. Here a connection is judged against its
    own source: one that delivers under ``recycle_ratio`` of its source's best connection after
    ``recycle_after`` seconds is on a bad path (a stuck TCP flow, a sick CDN node); it is dropped
    and its worker opens a new connection at once, without counting a failure. A source whose
    connections are all slow keeps them: stealing and splitting move its work instead. The floor
    is for the whole pull (``--min-rate``): when a ``floor_window`` delivers less, sources waiting
    in back-off are retried at once (a Retry-After is still honoured) and the slowest connection
    is replaced. Measured in ``tests/test_pull_http.py``: a connection crawling at 20 KB/s held a
    24 MiB pull from a single mirror for 53 s; replaced, the pull takes about 6 s.

Failures (a circuit breaker per source, like libtorrent's peer back-off and aria2's retry-wait)
    A failed request puts its pieces back and pauses the source with exponential back-off and jitter
    (``backoff_base`` doubling up to ``backoff_max``, or up to ``backoff_max_known`` for a source
    that delivered in this pull: a blip, so it is back at work soon after it recovers; measured in
    the flap bench, 1.13x -> 1.08x ideal). Failures of many connections within a second are one
    outage, counted once, and the source rests through it. ``breaker_threshold`` failures in a row
    open the breaker: the source gets no work until the back-off expires, then one *half-open*
    connection tries; success closes it. 429/503 with Retry-After pause the source exactly as long
    as asked. A source that sent a piece that failed its hash is blamed; at ``ban_after_corrupt``
    bad pieces it is banned for the rest of the pull, and a bad piece is not given back to the
    source that spoiled it while another source can fetch it. A source that does not have a file
    (404) is not asked for it again.

Preference (``--prefer``)
    Sources of the preferred class take free work first; the others get free pieces only when the
    preferred class alone would finish the free work much later than with them (measured, not
    assumed), and they always take part in stealing and in the tail race. With no preferred source
    measured yet, everything is used.

Sharing a LAN's uplink (``set_peer_pieces``, ``set_lan_hosts``: a BitTorrent swarm in the pull)
    A swarm source tells which pieces its connected peers have; it is given only those, and
    mirrors leave them to it. It also tells which machines of the LAN pull the model now: they
    split it into blocks by rendezvous hashing over their peer ids, and each machine's mirrors
    fetch from outside only its own blocks, so N machines pulling at once take the model from
    outside about once (measured 1.02x for 3 machines; ``lan`` tells how, and what it measured).

All decisions are pure functions of the recorded events and an injected clock, so the tests drive
this class with a fake clock and simulated sources, and the same code runs the real pulls.

Where each part lives
    ``Scheduler`` (this module) is the one entry: it takes the lock, reads the clock once per call,
    asks the parts below for a decision and applies it.

    ========== ==================================================================================
    state      ``SchedulerConfig``, ``Assignment`` (a connection's span), ``SourceState``
    pieces     ``PieceMap``: free / taken / done per piece, the free cursor, spoiled pieces
    board      ``Board``: the pieces, sources and connections at work that every decision reads
    rates      measuring connections and sources; the time a span still needs
    spans      handing out free work: span sizes, preference (``--prefer``, ``--region``)
    order      files hashed whole: written near their front, so a resume reads back little
    lan        sharing a LAN's uplink with a swarm: mirror frontiers, pieces no peer has
    tail       work stealing, split pieces, the tail race, refusing pieces that decide the end
    urgent     pieces a reader waits for (``dsmirror serve`` streaming a file): fetched first
    failures   back-off, the circuit breaker, Retry-After, bans, 404s, giving up
    floor      replacing crawling connections, the total speed floor (``tick``)
    ========== ==================================================================================
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Sequence

from dsmirror._core.clock import Clock
from dsmirror._core.errors import PieceMismatch
from dsmirror._formats.manifest import Manifest
from dsmirror._schedule import failures, floor, lan, order, rates, spans, urgent
from dsmirror._schedule.board import Board
from dsmirror._schedule.info import SourceInfo
from dsmirror._schedule.owners import LanView
from dsmirror._schedule.pieces import PieceMap
from dsmirror._schedule.state import Assignment, SchedulerConfig, SourceState
from dsmirror._schedule.tail import Help, Tail, pick_steal

__all__ = ["Assignment", "Scheduler", "SchedulerConfig", "SourceState"]


class Scheduler:
    """Thread-safe; every public method takes the lock and reads the injected clock."""

    def __init__(
        self,
        manifest: Manifest,
        done: Sequence[bool] | bytes | bytearray,
        sources: Iterable[SourceInfo],
        clock: Clock,
        config: SchedulerConfig | None = None,
        *,
        rng: random.Random | None = None,
        ordered: Iterable[int] = (),
    ) -> None:
        self.m = manifest
        self.clock = clock
        self.cfg = config or SchedulerConfig()
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pieces = PieceMap(manifest, done)
        self._sources: dict[str, SourceState] = {s.name: SourceState(s) for s in sources}
        self._board = Board(manifest, self.cfg, self._pieces, self._sources, ordered=frozenset(ordered))
        for fi in self._board.ordered:  # a resumed pull: what was stored beyond each file's gap
            last = self._pieces.last_done(fi)
            if last >= 0 and not self._pieces.file_done(fi):
                self._board.extents[fi] = last + 1
        self._tail = Tail()
        self._waited: set[int] = set()  # pieces a reader waits for (``urgent``)
        self._next_id = 1
        self._last_progress = clock.now()
        self._board.last_progress = self._last_progress
        self._swarm_delivered_at = self._last_progress
        self._swarm_asked_at = self._last_progress  # a swarm asks for work while it has room
        if any(x.info.kind == "bittorrent" for x in self._sources.values()):
            self._watch_lan()
        self._floor = floor.SpeedFloor(clock.now())
        self.redundant_bytes = 0  # bytes fetched for pieces another source finished first
        self.corrupt_bytes = 0
        self.split_pieces = 0  # pieces finished with a split helper's bytes
        self.recycled = 0  # connections replaced for being too slow
        self.floor_hits = 0  # floor windows in which the whole pull was below --min-rate

    # -- queries ---------------------------------------------------------------------------------
    def sources(self) -> list[SourceState]:
        with self._lock:
            return list(self._sources.values())

    def source(self, name: str) -> SourceState:
        return self._sources[name]

    def has_source(self, name: str) -> bool:
        """Whether ``name`` takes part in this pull (provenance from an earlier run may name others)."""
        return name in self._sources

    def add_source(self, info: SourceInfo) -> None:
        with self._lock:
            self._sources.setdefault(info.name, SourceState(info))
            if info.kind == "bittorrent":
                self._watch_lan()

    def _watch_lan(self) -> None:
        """A swarm takes part: mirrors follow the LAN's rules (``lan``), from the start of the pull.

        Not with ``--prefer mirror`` or ``official``: mirrors come first then, and the swarm helps
        when they alone would finish much later (``spans.preferred_can_cope``).
        """
        if self._board.lan is None and self.cfg.prefer in ("auto", "p2p"):
            self._board.lan = LanView.for_model(self._last_progress, self.m.num_pieces, self.m.piece_size)

    def set_prior(self, name: str, rate: float) -> None:
        with self._lock:
            self._sources[name].prior_rate = rate

    def finished(self) -> bool:
        with self._lock:
            return self._pieces.left == 0

    def pieces_left(self) -> int:
        with self._lock:
            return self._pieces.left

    def source_rate(self, name: str, *, live: bool = False) -> float:
        """What the source delivers now: the sum of its live connections' rates.

        With ``live``, a source with no connection at work delivers 0 (for display); otherwise its
        last measured rate stands in for planning.
        """
        with self._lock:
            if live and not self._board.live(name):
                return 0.0
            return self._board.source_rate(name, self.clock.now())

    # -- handing out work ------------------------------------------------------------------------
    def acquire(self, name: str) -> Assignment | float | None:
        """Work for an idle connection of ``name``: an Assignment, seconds to wait, or None (stop).

        Free work first (``spans``), else the far end of a slow span (``tail.pick_steal``), else
        help with a piece in progress (``Tail.pick_help``).
        """
        with self._lock:
            now = self.clock.now()
            s = self._sources[name]
            if s.banned:
                return None
            if s.info.kind == "bittorrent":
                self._swarm_asked_at = now
            if self._pieces.left == 0:
                return 0.2  # stay ready: a failed whole-file check may reopen pieces
            wait = failures.wait_for(s, now, self.cfg)
            if wait is not None:
                return wait
            if lan.waiting(self._board, s, now):
                # A LAN pull: first meet the peers; nor may it steal meanwhile (``lan``). Asked
                # again when the wait may end: a machine alone starts on time, not on a 0.2 s grid
                # (every connection asks in step, so the grid was its whole delay).
                return lan.ask_again(self._board, now, 0.2)
            a = self._hurry(s, now) if self._waited else None
            if a is None:
                a = self._take_free(s, now)
            if a is None:
                a = self._steal(s, now)
            if a is None:
                a = self._help(s, now)
            if a is None:
                return 0.2
            s.active += 1
            self._board.assignments[a.id] = a
            return a

    def _new(
        self, s: SourceState, fi: int, start: int, end: int, now: float, *, race: bool = False
    ) -> Assignment:
        a = Assignment(self._next_id, s.info.name, fi, start, end, race=race, started_at=now)
        a.window_start = now
        self._next_id += 1
        return a

    def hurry(self, index: int) -> None:
        """A reader waits for piece ``index`` (``dsmirror serve`` streaming a file): idle
        connections fetch it first, or race a connection that would bring it late (``urgent``)."""
        with self._lock:
            if 0 <= index < len(self._pieces) and not self._pieces.is_done(index):
                self._waited.add(index)

    def _hurry(self, s: SourceState, now: float) -> Assignment | None:
        got = urgent.pick(self._board, self._tail, s, now, self._waited)
        if got is None:
            return None
        if got.owner is None:
            return self._take_free(s, now, at=got.piece)
        owner = got.owner
        racer = self._new(s, owner.file_index, got.piece, got.piece + 1, now, race=True)
        self._tail.begin(racer, Help(owner, None))
        return racer

    def _take_free(self, s: SourceState, now: float, at: int | None = None) -> Assignment | None:
        span = spans.pick_span(self._board, s, now, at)
        if span is None:
            return None
        self._pieces.take(span.start, span.end)
        order.handed(self._board, span.file_index, span.end)
        a = self._new(s, span.file_index, span.start, span.end, now)
        a.outside = span.outside
        return a

    def _steal(self, s: SourceState, now: float) -> Assignment | None:
        got = pick_steal(self._board, s, now)
        if got is None:
            return None
        victim, split = got
        stolen = self._new(s, victim.file_index, split, victim.end, now)
        stolen.outside = victim.outside  # a LAN pull's span from outside stays one (``lan.cut_to_owner``)
        victim.end = split
        return stolen

    def _help(self, s: SourceState, now: float) -> Assignment | None:
        job = self._tail.pick_help(self._board, s, now)
        if job is None:
            return None
        owner = job.owner
        helper = self._new(s, owner.file_index, owner.next_piece, owner.next_piece + 1, now, race=True)
        self._tail.begin(helper, job)
        return helper

    # -- split pieces ----------------------------------------------------------------------------
    def split_done(self, helper: Assignment, data: bytes) -> None:
        """A split helper has the back part of its piece: the owner will use it at its cut."""
        with self._lock:
            if not self._tail.helper_finished(helper, data, self._pieces):
                self.redundant_bytes += len(data)

    def split_part(self, a: Assignment, index: int) -> tuple[int, bytes, str] | None:
        """For an owner past its cut: ``(cut, bytes, helper source)`` once the helper has them all."""
        with self._lock:
            return self._tail.part(a, index, self.m.pieces[index].length)

    def resumed(self, a: Assignment, pos: int) -> None:
        """``a`` continues its first piece at ``pos`` (bytes a dropped connection had fetched)."""
        with self._lock:
            a.piece_bytes = pos

    def may_mix(self, index: int) -> bool:
        """May piece ``index`` be made of bytes from several connections? Not after such a copy failed."""
        with self._lock:
            return index not in self._tail.whole_only

    def mixed_failed(self, a: Assignment, index: int) -> None:
        """A copy made of several sources' bytes (a split, or a piece resumed by another
        connection) failed its hash: nobody can be blamed, so it is fetched again whole, by one
        source, and the guilty one is caught then."""
        with self._lock:
            self._tail.mixed_failed(a, index)
            self.corrupt_bytes += self.m.pieces[index].length

    # -- reports from connections ----------------------------------------------------------------
    def progress(self, a: Assignment, nbytes: int) -> None:
        """Bytes arrived on ``a`` (not yet verified)."""
        with self._lock:
            now = self.clock.now()
            s = self._sources[a.source]
            self._floor.received += nbytes
            if rates.record_bytes(a, s, nbytes, now, self.cfg.rate_window):
                s.aggregate = self._board.source_rate(a.source, now)

    def wanted(self, a: Assignment) -> bool:
        """Should ``a`` keep fetching its current piece? False once another copy won or it was cut."""
        with self._lock:
            return (
                not a.cancelled
                and not a.recycle
                and a.next_piece < a.end
                and not self._pieces.is_done(a.next_piece)
                and not self._sources[a.source].banned
            )

    def piece_verified(self, a: Assignment, index: int, *, helped: int = 0) -> bool:
        """A piece of ``a`` verified and stored. Returns True if ``a`` should go on to its next piece.

        ``helped``: the last bytes of the piece came from its split helper (see ``split_part``).
        """
        with self._lock:
            now = self.clock.now()
            s = self._sources[a.source]
            length = self.m.pieces[index].length
            unused = self._tail.unused
            parts = self._tail.piece_done(a, index, length)
            self.redundant_bytes += self._tail.unused - unused  # helpers' parts nobody used
            helped = helped if parts else 0
            fetched = sum(len(d) for _, d, _ in parts)  # by helpers; the last ``helped`` bytes were used
            if self._pieces.finish(index):
                s.delivered += length - helped
                for c, data, source in parts if helped else ():
                    self._sources[source].delivered += max(0, c + len(data) - max(c, length - helped))
                self.split_pieces += bool(helped)
                # The owner read past the first cut: the helpers fetched those bytes as well.
                self.redundant_bytes += fetched - helped
                self._last_progress = self._board.last_progress = now
                if s.info.kind == "bittorrent":
                    self._swarm_delivered_at = now
                elif self._board.lan is not None:
                    self._board.lan.fetched_here(index, self.m.num_pieces)
            else:
                self.redundant_bytes += length + fetched
            s.failures_in_row = 0
            self._pieces.forgive(index)
            a.next_piece = max(a.next_piece, index + 1)
            lan.leave_to_swarm(self._board, a)
            a.piece_bytes = 0
            rates.first_time_measure(a, s, now, self.m.piece_size)
            return not a.cancelled and a.next_piece < a.end

    def piece_failed(self, a: Assignment, index: int, error: PieceMismatch) -> None:
        """A piece from ``a`` failed its hash: blame the source; the piece goes back."""
        with self._lock:
            self.corrupt_bytes += self.m.pieces[index].length
            self._pieces.spoil(index, a.source)
            failures.blame_corrupt(self._sources[a.source], error, self.cfg)

    def release(self, a: Assignment, error: BaseException | None = None) -> None:
        """``a`` ended (finished, cut short, or failed with ``error``); unfinished pieces go back."""
        with self._lock:
            now = self.clock.now()
            s = self._sources[a.source]
            s.active = max(0, s.active - 1)
            self._board.assignments.pop(a.id, None)
            if a.race:
                self._tail.helper_stopped(a)
            else:
                self._tail.owner_stopped(a, self._pieces)
                # A racer on one of these pieces now owns it alone; it will finish it.
                self._pieces.give_back(a.next_piece, a.end)
            if error is None:
                s.requests_ok += 1
                lan.remember_frontier(self._board, s, a)
                return
            failures.record_failure(self._sources.values(), s, a, error, now, self.cfg, self.rng)

    def reopen(self, indices: Iterable[int], avoid: str | None = None) -> None:
        """Pieces counted as done must be fetched again (their file failed its whole digest)."""
        with self._lock:
            for i in indices:
                self._tail.forget(i)
                self._pieces.reopen(i)
                if avoid:
                    self._pieces.spoil(i, avoid)
            self._last_progress = self.clock.now()

    def set_peer_pieces(self, name: str, have: bytearray) -> None:
        """Swarm ``name`` can fetch piece *i* only while ``have[i]``; it updates ``have`` in place.

        See "Sharing a LAN's uplink" in the design note.
        """
        with self._lock:
            self._board.peer_pieces[name] = have

    def set_lan_hosts(self, name: str, me: str, hosts: Sequence[str], peers: int, pending: int = 0) -> None:
        """Swarm ``name`` says who pulls the model on its LAN: this machine is ``me``, ``hosts`` are
        the other machines that fetch from mirrors and are not done, ``peers`` counts every
        connected peer, ``pending`` the peers still connecting or in their handshake. Mirrors
        fetch from outside only this machine's blocks (``lan``)."""
        with self._lock:
            self._watch_lan()
            lan.hosts_changed(self._board, me, hosts, peers, self.clock.now(), pending)

    def ban(self, name: str, reason: str) -> None:
        with self._lock:
            s = self._sources[name]
            if not s.banned:
                s.banned = reason

    # -- slow connections and the speed floor ----------------------------------------------------
    def tick(self) -> None:
        """Called periodically (every turn of the engine's loop): replace crawling connections
        and hold the total speed floor (see ``floor``)."""
        with self._lock:
            now = self.clock.now()
            by_source = floor.mark(self._board, now)
            self.recycled += floor.recycle_crawlers(self._board, by_source, now)
            if self._floor.below(self._board, now):
                self.floor_hits += 1
                self.recycled += floor.hold_floor(self._board, now)
            view = self._board.lan
            if view is not None:
                # The swarm cannot cope: it held work and delivered nothing for lan_stall s, or
                # it neither holds work nor asks for any (its loop ended): mirrors may take what
                # peers have, rather than wait for a swarm that will not fetch it.
                held = [
                    a
                    for a in self._board.assignments.values()
                    if self._sources[a.source].info.kind == "bittorrent" and not a.cancelled
                ]
                view.swarm_slow = any(
                    now - max(a.started_at, self._swarm_delivered_at) >= self.cfg.lan_stall for a in held
                ) or (not held and now - self._swarm_asked_at >= self.cfg.lan_stall)

    # -- giving up -------------------------------------------------------------------------------
    def check_viable(self) -> None:
        """Raise NoSourceError when no source can ever finish the pull."""
        with self._lock:
            failures.check_viable(self._board, self.clock.now(), self._last_progress)
