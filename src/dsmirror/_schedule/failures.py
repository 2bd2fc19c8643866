"""Failures: a circuit breaker per source, bans for corrupt data, and when to give up.

A failed request pauses its source with exponential back-off and jitter (short for a source that
delivered in this pull: a blip); failures of many connections within a second are one outage,
counted once; ``breaker_threshold`` failures in a row leave one half-open connection; a
Retry-After pauses every source of its host exactly as long as asked. A source that sent pieces
that failed their hash is banned at ``ban_after_corrupt``; one that answered 404 for a file is
not asked for it again. ``check_viable`` raises when no source can ever finish the pull. See
"Failures" in ``scheduler`` for the why and what the flap bench measured.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from dsmirror._core.errors import (
    AccessDenied,
    NoSourceError,
    PieceMismatch,
    RateLimited,
    SourceError,
    SourceNotFound,
)
from dsmirror._schedule.board import Board
from dsmirror._schedule.state import Assignment, SchedulerConfig, SourceState

__all__ = ["backoff_delay", "blame_corrupt", "check_viable", "record_failure", "wait_for"]


def wait_for(s: SourceState, now: float, cfg: SchedulerConfig) -> float | None:
    """Seconds an idle connection of ``s`` must wait before it may work, or None (it may)."""
    if s.paused_until > now:
        return s.paused_until - now
    if s.failures_in_row >= cfg.breaker_threshold and s.active > 0:
        return cfg.backoff_base  # half-open: one connection only
    return None


def backoff_delay(s: SourceState, cfg: SchedulerConfig, rng: random.Random) -> float:
    """How long ``s`` rests after its latest failure: exponential, capped, with jitter.

    A source that delivered in this pull is probably having a blip (a restart, a flapping link):
    one connection tries again within seconds, so it is back to work soon after it recovers
    (aria2 never reopens; a long back-off wastes its bandwidth).
    """
    cap = cfg.backoff_max_known if s.delivered else cfg.backoff_max
    delay: float = min(cap, cfg.backoff_base * 2 ** (s.failures_in_row - 1))
    return delay * (0.5 + rng.random())  # jitter: 0.5x .. 1.5x


def record_failure(
    sources: Iterable[SourceState],
    s: SourceState,
    a: Assignment,
    error: BaseException,
    now: float,
    cfg: SchedulerConfig,
    rng: random.Random,
) -> None:
    """Request ``a`` of source ``s`` failed with ``error``: pause ``s`` (and, for a Retry-After,
    every source on its host, among ``sources``) as the error deserves."""
    if isinstance(error, PieceMismatch):
        return  # blamed in blame_corrupt; other errors below pause the source
    s.last_error = str(error)
    if isinstance(error, SourceNotFound):
        s.missing_files.add(a.file_index)
        if isinstance(error, AccessDenied):
            s.denied_files.add(a.file_index)
        return
    if not isinstance(error, SourceError):
        s.failures_in_row += 1
        s.failures_total += 1
        s.paused_until = now + cfg.backoff_base
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
    delay = backoff_delay(s, cfg, rng)
    if retry_after is not None:
        delay = max(retry_after, 0.0)
    s.paused_until = max(s.paused_until, now + delay)
    if isinstance(error, RateLimited):
        # Retry-After speaks for the host: every source on it waits.
        for o in sources:
            if o.info.host == s.info.host:
                o.paused_until = max(o.paused_until, s.paused_until)
                if retry_after is not None:
                    o.honour_until = max(o.honour_until, s.paused_until)


def blame_corrupt(s: SourceState, error: PieceMismatch, cfg: SchedulerConfig) -> None:
    """``s`` sent a piece that failed its hash; banned at ``ban_after_corrupt`` such pieces."""
    s.corrupt += 1
    s.last_error = str(error)
    if s.corrupt >= cfg.ban_after_corrupt and not s.banned:
        s.banned = f"sent {s.corrupt} pieces that failed their SHA-256"


def check_viable(board: Board, now: float, last_progress: float) -> None:
    """Raise NoSourceError when no source can ever finish the pull."""
    if board.pieces.left == 0:
        return
    live = [s for s in board.sources.values() if not s.banned]
    if not live:
        why = "; ".join(f"{s.info.name}: {s.banned}" for s in board.sources.values())
        raise NoSourceError(f"every source was dropped ({why})", hint="add or fix mirrors (--mirrors)")
    # A file no live source has: only those every live source lacks (usually none) are looked at.
    fewest = min((s.missing_files for s in live), key=len)
    lacking = [fi for fi in fewest if all(fi in s.missing_files for s in live)]
    unfinished = [fi for fi in lacking if not board.pieces.file_done(fi)]
    if unfinished:
        fi = min(unfinished)
        path = board.m.files[fi].path
        if all(fi in s.denied_files for s in live):
            why = "; ".join(f"{s.info.name}: {s.last_error}" for s in live)
            raise NoSourceError(
                f"authentication failed: every source refused {path} ({why})",
                hint="a Hugging Face repo that is private or gated needs HF_TOKEN (a token that may "
                "read it; accept a gated repo's terms first), which only official endpoints get",
            )
        raise NoSourceError(f"no usable source has {path}", hint="check the mirrors list and the manifest")
    never = all(s.requests_ok == 0 and s.delivered == 0 for s in live)
    if never and all(s.failures_total >= board.cfg.fail_fast_attempts for s in live):
        why = "; ".join(f"{s.info.name}: {s.last_error}" for s in live)
        raise NoSourceError(f"no source could be reached ({why})", hint="check the network and --mirrors")
    give_up_after = board.cfg.give_up_after
    if now - last_progress > give_up_after and not any(a.bytes_received for a in board.assignments.values()):
        raise NoSourceError(
            f"no progress for {give_up_after:.0f} s from any source",
            hint="the pull can be resumed later with the same command",
        )
