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
    decide the finishing time with them (``_too_slow_for_tail``).
    Measured with ``scripts/bench_mirrors.py`` (1 GiB, mirrors at 40/20/8 MB/s): the three mirrors
    now end within the same second; before, the mid mirror sat idle for the last second while
    8 MiB pieces finished on the far one at 1 MB/s per connection.

The tail race
    A piece that cannot be split (its owner stalled with no measured rate, more than one piece
    left in its span, no piece hash, a swarm) may be fetched whole by an idle fast connection if it
    would finish it clearly sooner (``race_margin``). The first verified copy wins; the loser is
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

Sharing a LAN's uplink (``set_peer_pieces``: a BitTorrent swarm in the pull)
    A swarm source tells which pieces its connected peers have; it is given only those. Mirrors
    then take first the pieces no peer has (with ``--prefer p2p`` only those), so that machines of
    an office pulling the same model at once fetch each piece from outside about once and trade the
    rest over the LAN. They cannot see what the others are fetching right now, only what they
    finished, so each mirror connection continues where its last span ended (a frontier moving
    through pieces nobody has) and otherwise starts at a random point in the middle half of the
    longest run of such pieces - far from every other frontier, which sits at the edge of a run (the
    segment splitting of download accelerators, randomised because the other machines run the same
    rule). A span stops where peers have the next piece, and gives up its rest once they do: that
    breaks the lockstep of two machines that happened to start at the same piece. Measured with
    ``scripts/bench_lan.py``: 4 machines, 512 MiB, a 20 MB/s uplink: the uplink serves ~1.08 copies.

All decisions are pure functions of the recorded events and an injected clock, so the tests drive
this class with a fake clock and simulated sources, and the same code runs the real pulls.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dsmirror._core.clock import Clock
from dsmirror._core.errors import NoSourceError, PieceMismatch, RateLimited, SourceError, SourceNotFound
from dsmirror._formats.manifest import Manifest, Piece
from dsmirror._schedule.info import SourceInfo

__all__ = ["Assignment", "Scheduler", "SchedulerConfig", "SourceState"]

_FREE, _TAKEN, _DONE = 0, 1, 2


@dataclass(frozen=True)
class SchedulerConfig:
    span_seconds: float = 6.0
    max_span_bytes: int = 512 << 20
    rate_window: float = 1.0
    race_margin: float = 0.6  # race only if the racer would need < 60% of the owner's remaining time
    max_racers: int = 8
    split_gain: float = 0.8  # split a piece only if the owner then finishes in < 80% of its time
    min_split_bytes: int = 16 << 10  # a helper fetches at least this much
    min_split_gain: float = 0.1  # ... and the owner finishes at least this many seconds sooner
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    backoff_max_known: float = 2.0  # ... for a source that delivered in this pull: a blip, retried soon
    breaker_threshold: int = 5
    ban_after_corrupt: int = 2
    recycle_after: float = 5.0  # a connection is judged on its speed after this many seconds
    recycle_ratio: float = 0.1  # replaced if it delivers < 10% of its source's best connection
    min_total_rate: float | None = None  # --min-rate: the floor for the whole pull, bytes/s
    floor_window: float = 10.0  # the total rate is judged over this many seconds
    give_up_after: float = 120.0  # no usable source and no progress for this long: NoSourceError
    fail_fast_attempts: int = 3  # every source failed this often and none ever delivered: give up
    prefer: str = "auto"  # auto | mirror | official | p2p
    region: str | None = None  # --region: sources of this region are preferred
    prefer_slack: float = 1.5


@dataclass
class Assignment:
    """A span of pieces ``[next_piece, end)`` of one file, owned by one connection of one source."""

    id: int
    source: str
    file_index: int
    start: int
    end: int
    race: bool = False
    split_at: int = 0  # a split helper: fetches bytes [split_at, end of piece) of its one piece
    cut: int | None = None  # an owner with a helper: where in its current piece the helper begins
    owner: Assignment | None = None  # a split helper: the assignment it helps
    outside: bool = False  # a mirror span of pieces no peer had (see set_peer_pieces)
    next_piece: int = 0
    started_at: float = 0.0
    first_byte_at: float | None = None
    bytes_received: int = 0  # all bytes, verified or not
    piece_bytes: int = 0  # bytes of the current piece so far
    cancelled: bool = False
    recycle: bool = False  # too slow: drop this connection and open a new one (see tick)
    _win_start: float = 0.0
    _win_bytes: int = 0
    _marks: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes_received)
    rate: float = 0.0  # bytes/s, measured

    def __post_init__(self) -> None:
        self.next_piece = self.start


@dataclass
class SourceState:
    info: SourceInfo
    ewma_rate: float = 0.0  # per connection, bytes/s, learned from finished windows
    ttfb: float = 0.0
    delivered: int = 0  # verified bytes
    requests_ok: int = 0
    failures_in_row: int = 0
    failures_total: int = 0
    paused_until: float = 0.0
    corrupt: int = 0
    banned: str | None = None
    missing_files: set[int] = field(default_factory=set)
    resume_at: list[int] = field(default_factory=list)  # where this source's last spans ended
    active: int = 0
    last_error: str | None = None
    prior_rate: float = 0.0  # from persisted experience; used until measured
    last_failure_at: float = -1e9
    aggregate: float = 0.0  # what all its live connections delivered together, last measured
    last_recycle_at: float = -1e9
    honour_until: float = 0.0  # a Retry-After: not even the speed floor retries it sooner

    @property
    def status(self) -> str:
        if self.banned:
            return "corrupt" if self.corrupt else "failing"
        if self.failures_in_row >= 1 and self.requests_ok == 0:
            return "failing"
        if self.failures_in_row:
            return "retrying"
        return "ok"


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
    ) -> None:
        self.m = manifest
        self.clock = clock
        self.cfg = config or SchedulerConfig()
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._state = bytearray(_DONE if d else _FREE for d in done)
        self._left = sum(1 for d in done if not d)
        self._sources: dict[str, SourceState] = {s.name: SourceState(s) for s in sources}
        self._assignments: dict[int, Assignment] = {}
        self._racing: dict[int, Assignment] = {}  # piece -> racer or split helper assignment
        self._split_data: dict[int, tuple[int, bytes, str]] = {}  # piece -> (cut, bytes, helper)
        self._whole_only: set[int] = set()  # pieces whose mixed copy failed: fetched whole again
        self._avoid: dict[int, set[str]] = {}  # piece -> sources that spoiled it
        self._next_id = 1
        self._last_progress = clock.now()
        self._scan_from = 0
        self._peer_pieces: dict[str, bytearray] = {}  # swarm source -> pieces its peers have
        self.redundant_bytes = 0  # bytes fetched for pieces another source finished first
        self.corrupt_bytes = 0
        self.split_pieces = 0  # pieces finished with a split helper's bytes
        self.recycled = 0  # connections replaced for being too slow
        self.floor_hits = 0  # floor windows in which the whole pull was below --min-rate
        self._received = 0  # every byte reported by progress()
        self._floor_at = clock.now()
        self._floor_bytes = 0

    # -- queries ---------------------------------------------------------------------------------
    def sources(self) -> list[SourceState]:
        with self._lock:
            return list(self._sources.values())

    def source(self, name: str) -> SourceState:
        return self._sources[name]

    def add_source(self, info: SourceInfo) -> None:
        with self._lock:
            self._sources.setdefault(info.name, SourceState(info))

    def set_prior(self, name: str, rate: float) -> None:
        with self._lock:
            self._sources[name].prior_rate = rate

    def finished(self) -> bool:
        with self._lock:
            return self._left == 0

    def pieces_left(self) -> int:
        with self._lock:
            return self._left

    def source_rate(self, name: str, *, live: bool = False) -> float:
        """What the source delivers now: the sum of its live connections' rates.

        With ``live``, a source with no connection at work delivers 0 (for display); otherwise its
        last measured rate stands in for planning.
        """
        with self._lock:
            if live and not any(a.source == name and not a.cancelled for a in self._assignments.values()):
                return 0.0
            return self._source_rate(name)

    def _source_rate(self, name: str) -> float:
        now = self.clock.now()
        live = [a for a in self._assignments.values() if a.source == name and not a.cancelled]
        if not live:
            return self._sources[name].ewma_rate * max(1, self._sources[name].active)
        return sum(self._conn_rate(a, now) for a in live)

    def _conn_rate(self, a: Assignment, now: float) -> float:
        if a.rate:
            return a.rate
        if a.first_byte_at is not None and now - a.first_byte_at > 0.05:
            return a.bytes_received / (now - a.first_byte_at)
        return 0.0

    def _expected_rate(self, s: SourceState) -> float:
        """Per-connection rate to plan with: measured, else remembered, else unknown (0).

        (Planning with a mirror's idle share instead — its total rate over the connections that
        would be busy — was tried: in simulation it made slow sources take tail pieces that their
        other connections then slowed down, finishing later with more bytes wasted.)
        """
        return s.ewma_rate or s.prior_rate

    # -- handing out work ------------------------------------------------------------------------
    def acquire(self, name: str) -> Assignment | float | None:
        """Work for an idle connection of ``name``: an Assignment, seconds to wait, or None (stop)."""
        with self._lock:
            now = self.clock.now()
            s = self._sources[name]
            if s.banned:
                return None
            if self._left == 0:
                return 0.2  # stay ready: a failed whole-file check may reopen pieces
            if s.paused_until > now:
                return s.paused_until - now
            if s.failures_in_row >= self.cfg.breaker_threshold and s.active > 0:
                return self.cfg.backoff_base  # half-open: one connection only
            a = self._take_free(s, now)
            if a is None:
                a = self._steal(s, now)
            if a is None:
                a = self._race(s, now)
            if a is None:
                return 0.2
            s.active += 1
            self._assignments[a.id] = a
            return a

    def _new(
        self, s: SourceState, fi: int, start: int, end: int, now: float, *, race: bool = False
    ) -> Assignment:
        a = Assignment(self._next_id, s.info.name, fi, start, end, race=race, started_at=now)
        a._win_start = now
        self._next_id += 1
        return a

    def _usable_for(self, s: SourceState, i: int) -> bool:
        fi = self.m.pieces[i].file_index
        if fi in s.missing_files:
            return False
        have = self._peer_pieces.get(s.info.name)
        if have is not None and not have[i]:
            return False  # a swarm fetches only what its peers have
        avoid = self._avoid.get(i)
        if avoid and s.info.name in avoid:
            # Give a spoiled piece back to its spoiler only if nobody else can fetch it.
            return all(
                o.banned or o.info.name in avoid or fi in o.missing_files for o in self._sources.values()
            )
        return True

    def _is_preferred(self, s: SourceState) -> bool:
        if self.cfg.prefer != "auto" and s.info.source_class != self.cfg.prefer:
            return False
        return not (self.cfg.region and s.info.region != self.cfg.region)

    def _preferred_can_cope(self, s: SourceState, now: float) -> bool:
        """With --prefer/--region, must this other source leave free work alone? (see the design note)."""
        if (self.cfg.prefer == "auto" and not self.cfg.region) or self._is_preferred(s):
            return False
        preferred = [
            o
            for o in self._sources.values()
            if self._is_preferred(o) and not o.banned and o.paused_until <= now
        ]
        if not preferred:
            return False
        rate = sum(self._source_rate(o.info.name) for o in preferred)
        if rate <= 0:
            return any(o.active for o in preferred) and now - self._started(preferred) < 3.0
        mine = self._expected_rate(s) * max(1, s.info.max_connections)
        free_bytes = sum(p.length for p in self.m.pieces if self._state[p.index] == _FREE)
        alone = free_bytes / rate
        together = free_bytes / (rate + mine) if mine else alone
        return alone <= together * self.cfg.prefer_slack

    def _started(self, states: list[SourceState]) -> float:
        starts = [
            a.started_at for a in self._assignments.values() if a.source in {o.info.name for o in states}
        ]
        return min(starts) if starts else self.clock.now()

    def _too_slow_for_tail(self, s: SourceState, now: float, piece: Piece, free_bytes: int) -> bool:
        """Would this piece on this connection outlast everything the others still have to do?

        A source must not start a piece it cannot finish before the other sources finish all the
        work left: that piece would decide the finishing time (the "stuck at 99%" of ollama #1736).
        Only sources that could take the free work count as "the others" (not banned, not paused,
        having the files), and the fastest capable source never steps aside.
        A piece that can be split at the tail is always worth starting: when the others run out
        of work, one of them fetches its back part (``_race``), so the slow source contributes
        what it can and decides nothing.
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
                for o in self._sources.values()
            )
        ):
            return False  # another streaming source can split it at the end
        mine = self._expected_rate(s)
        if mine <= 0:
            return False
        if s.active == 0 and s.aggregate > mine:
            # An idle source's one connection gets all its bandwidth when that is shared by its
            # connections (a per-host cap), not the share it had while all of them were busy.
            mine = s.aggregate
        free_files = {self.m.pieces[i].file_index for i, st in enumerate(self._state) if st == _FREE}
        capable = [
            o
            for o in self._sources.values()
            if o is not s and not o.banned and o.paused_until <= now and not free_files <= o.missing_files
        ]
        if not capable or mine >= max(self._expected_rate(o) for o in capable):
            return False
        others = sum(self._source_rate(o.info.name) for o in capable)
        if others <= 0:
            return False
        names = {o.info.name for o in capable}
        in_flight = sum(
            self._left_bytes(a) for a in self._assignments.values() if a.source in names and not a.race
        )
        t_piece = s.ttfb + piece_len / mine
        return t_piece > 2.0 and t_piece > (free_bytes + in_flight) / others

    def _swarm_has(self, i: int) -> bool:
        return any(have[i] for name, have in self._peer_pieces.items() if not self._sources[name].banned)

    def _outside_swarm(self, s: SourceState) -> int | None:
        """A free piece no peer has, for a mirror: where this source's last span ended, else a
        random point in the middle half of the longest run of such pieces."""

        def ok(k: int) -> bool:
            return self._state[k] == _FREE and not self._swarm_has(k) and self._usable_for(s, k)

        while s.resume_at:
            k = s.resume_at.pop()
            if k < len(self._state) and ok(k):
                return k
        best_lo, best_len, lo = -1, 0, -1
        for k in range(self._scan_from, len(self._state) + 1):
            if k < len(self._state) and ok(k):
                lo = k if lo < 0 else lo
                continue
            if lo >= 0 and k - lo > best_len:
                best_lo, best_len = lo, k - lo
            lo = -1
        if best_len <= 0:
            return None
        return best_lo + best_len // 4 + self.rng.randrange(max(1, best_len // 2))

    def _take_free(self, s: SourceState, now: float) -> Assignment | None:
        n = len(self._state)
        i = self._scan_from
        while i < n and self._state[i] != _FREE:
            i += 1
        self._scan_from = i
        lan = s.info.name not in self._peer_pieces and any(
            not self._sources[name].banned for name in self._peer_pieces
        )
        picked = self._outside_swarm(s) if lan else None
        if picked is not None:
            i = picked
        else:
            if self._preferred_can_cope(s, now) or (lan and self.cfg.prefer == "p2p"):
                return None
            while i < n and not (self._state[i] == _FREE and self._usable_for(s, i)):
                i += 1
            if i >= n:
                return None
        fi = self.m.pieces[i].file_index
        file_end = self.m.file_piece_ranges[fi].stop
        rate = self._expected_rate(s)
        free_total = sum(1 for st in self._state if st == _FREE)
        free_bytes = sum(p.length for p in self.m.pieces if self._state[p.index] == _FREE)
        if self._too_slow_for_tail(s, now, self.m.pieces[i], free_bytes):
            return None
        if rate <= 0:
            want = 1  # unmeasured: a single real piece is the probe
        else:
            conns = max(1, sum(x.active for x in self._sources.values()) + 1)
            by_rate = rate * self.cfg.span_seconds
            fair = free_total * self.m.piece_size / conns
            want_bytes = max(self.m.piece_size, min(by_rate, fair, self.cfg.max_span_bytes))
            want = max(1, int(want_bytes // self.m.piece_size))
        end = i
        while end < file_end and end - i < want and self._state[end] == _FREE and self._usable_for(s, end):
            if picked is not None and end > i and self._swarm_has(end):
                break  # a mirror span stops where peers can take over
            end += 1
        for k in range(i, end):
            self._state[k] = _TAKEN
        a = self._new(s, fi, i, end, now)
        a.outside = picked is not None
        return a

    def _left_bytes(self, a: Assignment) -> int:
        """Bytes ``a`` still has to fetch itself."""
        remaining = sum(self.m.pieces[k].length for k in range(a.next_piece, a.end)) - a.piece_bytes
        if a.cut is not None and a.cut > a.piece_bytes:
            remaining -= self.m.pieces[a.next_piece].length - a.cut  # a helper fetches the back part
        return max(0, remaining)

    def _remaining_time(self, a: Assignment, now: float) -> float:
        rate = self._conn_rate(a, now)
        remaining = self._left_bytes(a)
        if rate <= 0:
            return float("inf") if now - a.started_at > 2.0 else remaining / 1e9
        return remaining / rate

    def _steal(self, s: SourceState, now: float) -> Assignment | None:
        my_rate = self._expected_rate(s)
        best: tuple[float, Assignment] | None = None
        for a in self._assignments.values():
            if a.race or a.cancelled or a.end - a.next_piece < 2:
                continue
            if not all(self._usable_for(s, k) for k in (a.next_piece + 1, a.end - 1)):
                continue
            t = self._remaining_time(a, now)
            if best is None or t > best[0]:
                best = (t, a)
        if best is None:
            return None
        t_victim, v = best
        v_rate = self._conn_rate(v, now)
        if my_rate <= 0:
            # Unmeasured thief: take one piece from the far end if the victim is slow or unmeasured.
            if t_victim < 2 * self.cfg.span_seconds:
                return None
            split = v.end - 1
        elif v_rate <= 0:
            split = v.next_piece + 1 + (v.end - v.next_piece - 1) // 2
        else:
            ps = self.m.piece_size
            total = sum(self.m.pieces[k].length for k in range(v.next_piece, v.end)) - v.piece_bytes
            # Both finish together: x / v_rate = ttfb + (total - x) / my_rate.
            keep = v_rate * (s.ttfb + total / my_rate) / (1 + v_rate / my_rate)
            split = v.next_piece + 1 + max(0, int((keep - (ps - v.piece_bytes)) // ps))
            if split >= v.end:
                return None
            mine = sum(self.m.pieces[k].length for k in range(split, v.end))
            if s.ttfb + mine / my_rate >= t_victim:
                return None
        if split <= v.next_piece or split >= v.end:
            return None
        stolen = self._new(s, v.file_index, split, v.end, now)
        v.end = split
        return stolen

    def _helper_rate(self, s: SourceState) -> float:
        """Per-connection rate an idle connection of ``s`` can expect for tail work.

        Its measured per-connection rate, or its share of what the whole source delivered
        (``aggregate``) when fewer of its connections are busy now than when that was measured:
        a per-host cap is shared by the connections that are actually open.
        """
        return max(self._expected_rate(s), s.aggregate / (s.active + 1))

    def _can_split(self, s: SourceState, a: Assignment) -> bool:
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
            and self._sources[a.source].info.kind != "bittorrent"
            and a.next_piece == a.end - 1
            and a.cut is None
            and i not in self._whole_only
            and bool(self.m.pieces[i].sha256)
        )

    def _race(self, s: SourceState, now: float) -> Assignment | None:
        if len(self._racing) >= self.cfg.max_racers:
            return None
        my_rate = self._helper_rate(s)
        if my_rate <= 0:
            return None
        best: tuple[float, Assignment] | None = None
        for a in self._assignments.values():
            if a.race or a.cancelled or a.source == s.info.name or a.next_piece >= a.end:
                continue
            k = a.next_piece
            if k in self._racing or k in self._split_data:
                continue
            if self._state[k] == _DONE or not self._usable_for(s, k):
                continue
            t = self._remaining_time(a, now)
            if best is None or t > best[0]:
                best = (t, a)
        if best is None:
            return None
        t_owner, v = best
        piece = self.m.pieces[v.next_piece]
        v_rate = self._conn_rate(v, now)
        if v_rate > 0 and self._can_split(s, v):
            # Split: the owner keeps the front, this connection fetches the back; the cut is
            # where both finish together: x / v_rate = ttfb + (left - x) / my_rate.
            left = piece.length - v.piece_bytes
            x = v_rate * (s.ttfb + left / my_rate) / (1 + v_rate / my_rate)
            cut = v.piece_bytes + int(x)
            t_split = x / v_rate
            if (
                piece.length - cut < self.cfg.min_split_bytes
                or t_split >= t_owner * self.cfg.split_gain
                or t_owner - t_split < self.cfg.min_split_gain
            ):
                return None
            h = self._new(s, v.file_index, v.next_piece, v.next_piece + 1, now, race=True)
            h.split_at, h.owner = cut, v
            v.cut = cut
            self._racing[piece.index] = h
            return h
        t_me = s.ttfb + piece.length / my_rate
        if t_me >= t_owner * self.cfg.race_margin:
            return None
        r = self._new(s, v.file_index, v.next_piece, v.next_piece + 1, now, race=True)
        self._racing[v.next_piece] = r
        return r

    def split_done(self, helper: Assignment, data: bytes) -> None:
        """A split helper has the back part of its piece: the owner will use it at its cut."""
        with self._lock:
            i = helper.start
            owner = helper.owner
            if (
                helper.cancelled
                or self._state[i] == _DONE
                or owner is None
                or owner.cancelled
                or owner.cut != helper.split_at
            ):
                self.redundant_bytes += len(data)
                return
            self._split_data[i] = (helper.split_at, data, helper.source)

    def split_part(self, a: Assignment, index: int) -> tuple[int, bytes, str] | None:
        """For an owner past its cut: ``(cut, bytes, helper source)`` once the helper has them all."""
        with self._lock:
            got = self._split_data.get(index)
            if got is None or a.cut != got[0]:
                return None
            return got

    def resumed(self, a: Assignment, pos: int) -> None:
        """``a`` continues its first piece at ``pos`` (bytes a dropped connection had fetched)."""
        with self._lock:
            a.piece_bytes = pos

    def may_mix(self, index: int) -> bool:
        """May piece ``index`` be made of bytes from several connections? Not after such a copy failed."""
        with self._lock:
            return index not in self._whole_only

    def mixed_failed(self, a: Assignment, index: int) -> None:
        """A copy made of several sources' bytes (a split, or a piece resumed by another
        connection) failed its hash: nobody can be blamed, so it is fetched again whole, by one
        source, and the guilty one is caught then."""
        with self._lock:
            self._whole_only.add(index)
            self._split_data.pop(index, None)
            self.corrupt_bytes += self.m.pieces[index].length
            a.cut = None

    # -- reports from connections ----------------------------------------------------------------
    def progress(self, a: Assignment, nbytes: int) -> None:
        """Bytes arrived on ``a`` (not yet verified)."""
        with self._lock:
            now = self.clock.now()
            if a.first_byte_at is None:
                a.first_byte_at = now
                a._win_start = now
                s = self._sources[a.source]
                ttfb = now - a.started_at
                s.ttfb = ttfb if not s.ttfb else 0.7 * s.ttfb + 0.3 * ttfb
            a.bytes_received += nbytes
            self._received += nbytes
            a.piece_bytes += nbytes
            a._win_bytes += nbytes
            dt = now - a._win_start
            if dt >= self.cfg.rate_window:
                inst = a._win_bytes / dt
                a.rate = inst if not a.rate else 0.5 * a.rate + 0.5 * inst
                s = self._sources[a.source]
                s.ewma_rate = a.rate if not s.ewma_rate else 0.7 * s.ewma_rate + 0.3 * a.rate
                s.aggregate = self._source_rate(a.source)
                a._win_start, a._win_bytes = now, 0

    def wanted(self, a: Assignment) -> bool:
        """Should ``a`` keep fetching its current piece? False once another copy won or it was cut."""
        with self._lock:
            return (
                not a.cancelled
                and not a.recycle
                and a.next_piece < a.end
                and self._state[a.next_piece] != _DONE
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
            split = self._split_data.pop(index, None)
            if self._state[index] != _DONE:
                self._state[index] = _DONE
                self._left -= 1
                if helped and split is not None:
                    s.delivered += length - helped
                    self._sources[split[2]].delivered += helped
                    self.split_pieces += 1
                else:
                    s.delivered += length
                self._last_progress = now
            else:
                self.redundant_bytes += length
            if a.cut is not None and a.next_piece == index:
                a.cut = None
            s.failures_in_row = 0
            self._avoid.pop(index, None)
            racer = self._racing.pop(index, None)
            if racer is not None and racer is not a:
                racer.cancelled = True
            # If a racer won, the owner of this piece sees wanted() == False and gives its span back.
            a.next_piece = max(a.next_piece, index + 1)
            if a.outside and a.next_piece < a.end and self._swarm_has(a.next_piece):
                # Peers got the rest of this span meanwhile (another machine of the LAN fetched
                # the same pieces from outside): leave it to the swarm instead of fetching it twice.
                for k in range(a.next_piece, a.end):
                    if self._state[k] == _TAKEN:
                        self._state[k] = _FREE
                self._scan_from = min(self._scan_from, a.next_piece)
                a.end = a.next_piece
            a.piece_bytes = 0
            self._first_time_measure(a, s, now)
            return not a.cancelled and a.next_piece < a.end

    def _first_time_measure(self, a: Assignment, s: SourceState, now: float) -> bool:
        """A probe piece is done: seed the source's rate from it if no window closed yet."""
        if s.ewma_rate or a.first_byte_at is None or a.bytes_received < 256 << 10:
            return False  # a tiny piece says more about latency than about throughput
        dt = now - a.first_byte_at
        if dt > 0:
            s.ewma_rate = a.bytes_received / dt
            a.rate = s.ewma_rate
        return True

    def piece_failed(self, a: Assignment, index: int, error: PieceMismatch) -> None:
        """A piece from ``a`` failed its hash: blame the source; the piece goes back."""
        with self._lock:
            s = self._sources[a.source]
            s.corrupt += 1
            self.corrupt_bytes += self.m.pieces[index].length
            self._avoid.setdefault(index, set()).add(a.source)
            s.last_error = str(error)
            if s.corrupt >= self.cfg.ban_after_corrupt and not s.banned:
                s.banned = f"sent {s.corrupt} pieces that failed their SHA-256"

    def release(self, a: Assignment, error: BaseException | None = None) -> None:
        """``a`` ended (finished, cut short, or failed with ``error``); unfinished pieces go back."""
        with self._lock:
            now = self.clock.now()
            s = self._sources[a.source]
            s.active = max(0, s.active - 1)
            self._assignments.pop(a.id, None)
            if a.race:
                if self._racing.get(a.start) is a:
                    del self._racing[a.start]
                if a.owner is not None and a.start not in self._split_data and a.owner.cut == a.split_at:
                    a.owner.cut = None  # the helper gave up: its owner fetches the whole piece
            else:
                if a.cut is not None and a.next_piece < a.end and self._state[a.next_piece] != _DONE:
                    # The owner of a split piece stopped before it: its helper's work is void.
                    helper = self._racing.pop(a.next_piece, None)
                    if helper is not None:
                        helper.cancelled = True
                    self._split_data.pop(a.next_piece, None)
                    a.cut = None
                for k in range(a.next_piece, a.end):
                    if self._state[k] == _TAKEN:
                        self._state[k] = _FREE
                        self._scan_from = min(self._scan_from, k)
                        # A racer on this piece now owns it alone; it will finish it.
            if error is None:
                s.requests_ok += 1
                # Continue after this span next time, unless peers have its last piece already:
                # then another machine fetched the same pieces, and this source starts elsewhere.
                if a.outside and a.end > a.start and not self._swarm_has(a.end - 1) and len(s.resume_at) < 64:
                    s.resume_at.append(a.end)
                return
            if isinstance(error, PieceMismatch):
                return  # blamed in piece_failed; other errors below pause the source
            s.last_error = str(error)
            if isinstance(error, SourceNotFound):
                s.missing_files.add(a.file_index)
                return
            if not isinstance(error, SourceError):
                s.failures_in_row += 1
                s.failures_total += 1
                s.paused_until = now + self.cfg.backoff_base
                return
            if a.cancelled and not isinstance(error, RateLimited):
                return
            retry_after = error.retry_after if isinstance(error, RateLimited) else None
            if now - s.last_failure_at < 1.0 or s.paused_until > now:
                # Several connections failing together is one outage, not several: count it once,
                # or one blip would back the source off for a minute (and it would not come back).
                # But the source keeps resting (a pause shorter than that window must not let its
                # connections retry in a loop), and a Retry-After is always honoured.
                if s.paused_until > now and retry_after is None:
                    return
            else:
                s.last_failure_at = now
                s.failures_in_row += 1
                s.failures_total += 1
            # A source that delivered in this pull is probably having a blip (a restart, a
            # flapping link): one connection tries again within seconds, so it is back to work
            # soon after it recovers (aria2 never reopens; a long back-off wastes its bandwidth).
            cap = self.cfg.backoff_max_known if s.delivered else self.cfg.backoff_max
            delay = min(cap, self.cfg.backoff_base * 2 ** (s.failures_in_row - 1))
            delay *= 0.5 + self.rng.random()  # jitter: 0.5x .. 1.5x
            if retry_after is not None:
                delay = max(retry_after, 0.0)
            s.paused_until = max(s.paused_until, now + delay)
            if isinstance(error, RateLimited):
                # Retry-After speaks for the host: every source on it waits.
                for o in self._sources.values():
                    if o.info.host == s.info.host:
                        o.paused_until = max(o.paused_until, s.paused_until)
                        if retry_after is not None:
                            o.honour_until = max(o.honour_until, s.paused_until)

    def reopen(self, indices: Iterable[int], avoid: str | None = None) -> None:
        """Pieces counted as done must be fetched again (their file failed its whole digest)."""
        with self._lock:
            for i in indices:
                self._split_data.pop(i, None)
                if self._state[i] == _DONE:
                    self._state[i] = _FREE
                    self._left += 1
                    self._scan_from = min(self._scan_from, i)
                if avoid:
                    self._avoid.setdefault(i, set()).add(avoid)
            self._last_progress = self.clock.now()

    def set_peer_pieces(self, name: str, have: bytearray) -> None:
        """Swarm ``name`` can fetch piece *i* only while ``have[i]``; it updates ``have`` in place.

        See "Sharing a LAN's uplink" in the design note.
        """
        with self._lock:
            self._peer_pieces[name] = have

    def ban(self, name: str, reason: str) -> None:
        with self._lock:
            s = self._sources[name]
            if not s.banned:
                s.banned = reason

    # -- slow connections and the speed floor ----------------------------------------------------
    def _live_rate(self, a: Assignment, now: float) -> float:
        """``a``'s rate, decaying while no bytes arrive (its last window's rate goes stale)."""
        open_for = now - a._win_start
        if a.rate and open_for <= 2 * self.cfg.rate_window:
            return a.rate
        return a._win_bytes / open_for if open_for > 0 else 0.0

    def _judged_rate(self, a: Assignment, now: float) -> float | None:
        """``a``'s rate over the last ``recycle_after`` seconds, or None if it is younger."""
        if not a._marks or now - a._marks[0][0] < self.cfg.recycle_after:
            return None
        t0, b0 = a._marks[0]
        return (a.bytes_received - b0) / (now - t0)

    def tick(self) -> None:
        """Called periodically (every turn of the engine's loop): replace crawling connections
        and hold the total speed floor.

        A connection that, after ``recycle_after`` seconds, delivers less than ``recycle_ratio``
        of its source's best connection is on a bad path (a stuck TCP flow, a sick CDN node): it
        is dropped and its worker opens a new one at once, so the source keeps all its
        connections (aria2's ``--lowest-speed-limit`` kills connections and never reopens them,
        aria2 #426; a source whose connections are all slow is handled by stealing instead).
        With ``min_total_rate``, the whole pull is judged too: when a ``floor_window`` delivered
        less than the floor, sources waiting in back-off are retried now (a Retry-After is still
        honoured) and the slowest connection is replaced.
        """
        with self._lock:
            now = self.clock.now()
            by_source: dict[str, list[Assignment]] = {}
            for a in self._assignments.values():
                if a.cancelled or a.race:
                    continue
                if not a._marks or now - a._marks[-1][0] >= 0.5:
                    a._marks.append((now, a.bytes_received))
                    while len(a._marks) > 2 and now - a._marks[1][0] >= self.cfg.recycle_after:
                        a._marks.pop(0)
                by_source.setdefault(a.source, []).append(a)
            for name, conns in by_source.items():
                s = self._sources[name]
                if len(conns) < 2 or now - s.last_recycle_at < self.cfg.recycle_after:
                    continue
                judged = [(r, a) for a in conns if (r := self._judged_rate(a, now)) is not None]
                if not judged:
                    continue
                best = max(max(r for r, _ in judged), max(self._live_rate(a, now) for a in conns))
                r_worst, worst = min(judged, key=lambda x: x[0])
                if best <= 0 or worst.recycle or r_worst >= self.cfg.recycle_ratio * best:
                    continue
                # Worth it only if a new connection would redo this piece much sooner than this
                # one finishes it (what it has of the piece is lost).
                piece = self.m.pieces[worst.next_piece] if worst.next_piece < worst.end else None
                if piece is None:
                    continue
                t_keep = (piece.length - worst.piece_bytes) / max(r_worst, 1.0)
                if t_keep > 2 * (s.ttfb + piece.length / best):
                    worst.recycle = True
                    s.last_recycle_at = now
                    self.recycled += 1
            floor = self.cfg.min_total_rate
            if not floor or now - self._floor_at < self.cfg.floor_window:
                return
            rate = (self._received - self._floor_bytes) / (now - self._floor_at)
            self._floor_at, self._floor_bytes = now, self._received
            if rate >= floor or self._left == 0:
                return
            self.floor_hits += 1
            for s in self._sources.values():
                if not s.banned and s.paused_until > now and s.honour_until <= now:
                    s.paused_until = now
            old = [
                a
                for a in self._assignments.values()
                if not (a.cancelled or a.recycle or a.race) and now - a.started_at >= self.cfg.recycle_after
            ]
            if old:
                min(old, key=lambda o: self._live_rate(o, now)).recycle = True
                self.recycled += 1

    # -- giving up -------------------------------------------------------------------------------
    def check_viable(self) -> None:
        """Raise NoSourceError when no source can ever finish the pull."""
        with self._lock:
            if self._left == 0:
                return
            now = self.clock.now()
            live = [s for s in self._sources.values() if not s.banned]
            if not live:
                why = "; ".join(f"{s.info.name}: {s.banned}" for s in self._sources.values())
                raise NoSourceError(
                    f"every source was dropped ({why})", hint="add or fix mirrors (--mirrors)"
                )
            for fi, f in enumerate(self.m.files):
                rng = self.m.file_piece_ranges[fi]
                if any(self._state[k] != _DONE for k in rng) and all(fi in s.missing_files for s in live):
                    raise NoSourceError(
                        f"no usable source has {f.path}", hint="check the mirrors list and the manifest"
                    )
            never = all(s.requests_ok == 0 and s.delivered == 0 for s in live)
            if never and all(s.failures_total >= self.cfg.fail_fast_attempts for s in live):
                why = "; ".join(f"{s.info.name}: {s.last_error}" for s in live)
                raise NoSourceError(
                    f"no source could be reached ({why})", hint="check the network and --mirrors"
                )
            if now - self._last_progress > self.cfg.give_up_after and not any(
                a.bytes_received for a in self._assignments.values()
            ):
                raise NoSourceError(
                    f"no progress for {self.cfg.give_up_after:.0f} s from any source",
                    hint="the pull can be resumed later with the same command",
                )
