"""The data the scheduler's parts share: its settings, a connection's assignment, a source's record.

``Assignment`` and ``SourceState`` are plain records: the scheduler's parts (``pieces``, ``spans``,
``tail``, ``backoff``, ``floor``, ``rates``) read and update them under the scheduler's lock; the
engine and the sources read them (a connection reads its span, ``cut`` and ``piece_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsmirror._schedule.info import SourceInfo

__all__ = ["Assignment", "SchedulerConfig", "SourceState"]


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
    # A pull with a LAN swarm (see ``lan``): mirrors wait for the peers to be met (at most
    # lan_grace s after the start, or lan_settle s after the set of machines last changed), and
    # take what peers have, or other machines' pieces, after lan_stall s without progress.
    lan_grace: float = 2.0
    lan_settle: float = 0.4
    lan_stall: float = 8.0
    lan_ready_wait: float = 10.0  # ... and wait at most this long for the swarm to be ready
    lan_handover: float = 3.0  # a machine that left owns its blocks this long (it may be back as a seed)
    lan_alone_bytes: int = 16 << 20  # in flight from outside while alone after lan_grace (doubling)
    # Files hashed whole (see ``order``): pieces handed out beyond each one's first gap (what a
    # resume reads back) stay within max(order_window, min(order_seconds x the mirrors' rate,
    # order_max), order_pieces x the mirrors' connections x the piece size) bytes.
    order_window: int = 256 << 20
    order_seconds: float = 3.0
    order_max: int = 1 << 30
    order_pieces: int = 2


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
    split_end: int = 0  # ... or [split_at, split_end) (0: to the end), a split of an owner's front
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
    window_start: float = 0.0  # the rate window open now (see rates.record_bytes)
    window_bytes: int = 0
    marks: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes_received), see floor
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
    denied_files: set[int] = field(default_factory=set)  # of missing_files: refused with 401/403
    resume_at: list[int] = field(default_factory=list)  # where this source's last spans ended
    active: int = 0
    last_error: str | None = None
    prior_rate: float = 0.0  # from persisted experience; used until measured
    last_failure_at: float = -1e9
    aggregate: float = 0.0  # what all its live connections delivered together, last measured
    last_recycle_at: float = -1e9
    honour_until: float = 0.0  # a Retry-After: not even the speed floor retries it sooner
    probe_bytes: int = 0  # finished probes of pieces under rates.PROBE_BYTES, added up ...
    probe_seconds: float = 0.0  # ... and their request times (rates.first_time_measure)

    @property
    def status(self) -> str:
        if self.banned:
            return "corrupt" if self.corrupt else "failing"
        if self.failures_in_row >= 1 and self.requests_ok == 0:
            return "failing"
        if self.failures_in_row:
            return "retrying"
        return "ok"
