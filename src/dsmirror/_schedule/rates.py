"""Measuring delivery: a connection's rate, a source's rate, and the time a span still needs.

Every decision of the scheduler plans with rates measured in this pull: a connection's rate is
the exponential average of its closed ``rate_window`` windows (half old, half new), a source's
per-connection rate the slower average of its connections' windows (0.7 old, 0.3 new), and its
time to first byte is averaged the same way. Before the first window closes, a connection's rate
is its bytes since the first byte over the time since then; a source not measured yet plans with
the rate remembered from earlier pulls (``prior_rate``), else with nothing (0: unknown).
All functions here are pure or update only the records they are given.
"""

from __future__ import annotations

from collections.abc import Sequence

from dsmirror._formats.manifest import Manifest
from dsmirror._schedule.state import Assignment, SourceState

__all__ = [
    "PROBE_BYTES",
    "conn_rate",
    "expected_rate",
    "first_time_measure",
    "helper_rate",
    "judged_rate",
    "left_bytes",
    "live_rate",
    "owner_rate",
    "record_bytes",
    "remaining_time",
    "source_rate",
    "span_bytes",
]

#: A probe measures its source's rate once it delivered this much: less says more about latency
#: than about throughput.
PROBE_BYTES = 256 << 10


def record_bytes(a: Assignment, s: SourceState, nbytes: int, now: float, window: float) -> bool:
    """``nbytes`` arrived on ``a`` (of source ``s``). Returns True when a rate window closed.

    The first byte measures the time to first byte; a closed window updates the connection's
    and the source's rate.
    """
    if a.first_byte_at is None:
        a.first_byte_at = now
        a.window_start = now
        ttfb = now - a.started_at
        s.ttfb = ttfb if not s.ttfb else 0.7 * s.ttfb + 0.3 * ttfb
    a.bytes_received += nbytes
    a.piece_bytes += nbytes
    a.window_bytes += nbytes
    dt = now - a.window_start
    if dt < window:
        return False
    inst = a.window_bytes / dt
    a.rate = inst if not a.rate else 0.5 * a.rate + 0.5 * inst
    s.ewma_rate = a.rate if not s.ewma_rate else 0.7 * s.ewma_rate + 0.3 * a.rate
    a.window_start, a.window_bytes = now, 0
    return True


def first_time_measure(a: Assignment, s: SourceState, now: float, piece_size: int) -> bool:
    """A probe piece is done: seed the source's rate from it if no window closed yet.

    Pieces smaller than ``PROBE_BYTES`` (``piece_size``) are measured together: the source's
    finished one-piece probes add up, and once they hold ``PROBE_BYTES`` their bytes over their
    request times (latency included) seed its rate. Otherwise such a source would get one piece
    per request for the whole pull: its connections' rate windows never close on a tiny span.
    """
    if s.ewma_rate or a.first_byte_at is None:
        return False
    if a.bytes_received < PROBE_BYTES:
        # A tiny piece alone says more about latency than about throughput.
        if piece_size >= PROBE_BYTES or a.next_piece < a.end or a.race:
            return False
        s.probe_bytes += a.bytes_received
        s.probe_seconds += now - a.started_at
        if s.probe_bytes < PROBE_BYTES or s.probe_seconds <= 0:
            return False
        s.ewma_rate = s.probe_bytes / s.probe_seconds
        return True
    dt = now - a.first_byte_at
    if dt > 0:
        s.ewma_rate = a.bytes_received / dt
        a.rate = s.ewma_rate
    return True


def conn_rate(a: Assignment, now: float) -> float:
    """What ``a`` delivers: its measured rate, else its rate since its first byte, else 0."""
    if a.rate:
        return a.rate
    if a.first_byte_at is not None and now - a.first_byte_at > 0.05:
        return a.bytes_received / (now - a.first_byte_at)
    return 0.0


def source_rate(s: SourceState, live: Sequence[Assignment], now: float) -> float:
    """What ``s`` delivers now: the sum of its ``live`` connections' rates, else its last
    measured per-connection rate times its connections."""
    if not live:
        return s.ewma_rate * max(1, s.active)
    return sum(conn_rate(a, now) for a in live)


def expected_rate(s: SourceState) -> float:
    """Per-connection rate to plan with: measured, else remembered, else unknown (0).

    (Planning with a mirror's idle share instead — its total rate over the connections that
    would be busy — was tried: in simulation it made slow sources take tail pieces that their
    other connections then slowed down, finishing later with more bytes wasted.)
    """
    return s.ewma_rate or s.prior_rate


def helper_rate(s: SourceState) -> float:
    """Per-connection rate an idle connection of ``s`` can expect for tail work.

    Its measured per-connection rate, or its share of what the whole source delivered
    (``aggregate``) when fewer of its connections are busy now than when that was measured:
    a per-host cap is shared by the connections that are actually open.
    """
    return max(expected_rate(s), s.aggregate / (s.active + 1))


def owner_rate(a: Assignment, s: SourceState, live: int, now: float) -> float:
    """The rate to expect from ``a`` (of source ``s``, which has ``live`` connections at work)
    for the rest of its piece when a helper takes the back of it: the lower of its own rate and
    its share of what its source delivered (``aggregate``).

    A connection's own rate is noisy where its source's bandwidth is shared by several
    connections: a token bucket hands its chunks to whichever sender is ready, so one second
    of one connection can show twice its share or half of it. Planning a split with the high
    reading gives the owner a front it finishes seconds after its helper, and nobody can
    help with a front (simulated degrade case with such a bucket: the degraded mirror's last
    front ended 1.9 s after everything else). Planning low costs little: an owner that
    reaches its cut first reads on until the helper's bytes are there.
    """
    rate = conn_rate(a, now)
    if s.aggregate > 0 and live > 0:
        rate = min(rate, s.aggregate / live) if rate > 0 else s.aggregate / live
    return rate


def live_rate(a: Assignment, now: float, window: float) -> float:
    """``a``'s rate, decaying while no bytes arrive (its last window's rate goes stale)."""
    open_for = now - a.window_start
    if a.rate and open_for <= 2 * window:
        return a.rate
    return a.window_bytes / open_for if open_for > 0 else 0.0


def judged_rate(a: Assignment, now: float, after: float) -> float | None:
    """``a``'s rate over the last ``after`` seconds (its ``marks``), or None if it is younger."""
    if not a.marks or now - a.marks[0][0] < after:
        return None
    t0, b0 = a.marks[0]
    return (a.bytes_received - b0) / (now - t0)


def span_bytes(m: Manifest, start: int, end: int) -> int:
    """The bytes of pieces ``[start, end)`` of one file (they are contiguous: no walk)."""
    if end <= start:
        return 0
    first, last = m.pieces[start], m.pieces[end - 1]
    return last.offset + last.length - first.offset


def left_bytes(m: Manifest, a: Assignment) -> int:
    """Bytes ``a`` still has to fetch itself."""
    remaining = span_bytes(m, a.next_piece, a.end) - a.piece_bytes
    if a.cut is not None and a.cut > a.piece_bytes:
        remaining -= m.pieces[a.next_piece].length - a.cut  # a helper fetches the back part
    return max(0, remaining)


def remaining_time(m: Manifest, a: Assignment, now: float) -> float:
    """Seconds ``a`` needs for the rest of its span; infinite once it stalled unmeasured."""
    rate = conn_rate(a, now)
    remaining = left_bytes(m, a)
    if rate <= 0:
        return float("inf") if now - a.started_at > 2.0 else remaining / 1e9
    return remaining / rate
