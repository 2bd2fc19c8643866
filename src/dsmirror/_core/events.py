"""Typed progress events a pull yields; the CLI renders them (rich on a terminal, JSON lines with --json).

Documented in docs/formats.md#the-json-event-stream.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "PieceRejected",
    "PlanNotes",
    "Progress",
    "PullFinished",
    "PullStarted",
    "SourceDropped",
    "SourceProgress",
    "SourceTrouble",
    "event_to_dict",
]


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class PlanNotes(Event):
    """What the resolver noticed, yielded by ``pull`` after resolving and before anything is fetched.

    One line per note: the commit a revision was pinned to and which endpoint listed it, endpoints
    that did not answer and why, mirrors dropped for sending wrong bytes, which files a ModelScope
    copy serves with the pinned digests, what a dry run could not know yet. Registry references
    always have notes; a pull without any (a manifest file) yields no ``PlanNotes``.
    """

    ref: str
    name: str
    manifest_sha256: str
    dest: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class PullStarted(Event):
    name: str
    manifest_sha256: str
    dest: str
    total_bytes: int
    verified_bytes: int  # already verified before this run (resume, reuse)
    pieces: int
    piece_size: int
    sources: tuple[str, ...]
    reverified_pieces: int = 0
    rejected_pieces: int = 0
    reused_files: int = 0


@dataclass(frozen=True)
class SourceProgress:
    name: str
    kind: str
    region: str
    rate: float  # bytes/s now
    delivered: int  # verified bytes so far
    connections: int
    status: str  # ok, retrying, failing, corrupt, paused
    last_error: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    verified_bytes: int
    total_bytes: int
    rate: float  # received bytes/s, smoothed
    eta: float | None  # seconds
    sources: tuple[SourceProgress, ...] = field(default_factory=tuple)
    received_bytes: int = 0  # stored, including pieces still waiting for their file's digest


@dataclass(frozen=True)
class PieceRejected(Event):
    #: Who sent the bad bytes; ``a+b`` for a copy made of several sources' bytes (a split or
    #: resumed piece), which blames neither: that piece is fetched again whole from one source.
    source: str
    piece: int
    path: str
    reason: str


@dataclass(frozen=True)
class SourceDropped(Event):
    source: str
    reason: str


@dataclass(frozen=True)
class SourceTrouble(Event):
    source: str
    message: str
    retry_in: float | None


@dataclass(frozen=True)
class PullFinished(Event):
    name: str
    dest: str
    files: tuple[str, ...]
    total_bytes: int
    downloaded_bytes: int  # verified bytes fetched in this run
    reused_bytes: int  # already present before this run
    redundant_bytes: int  # fetched twice (tail race losers)
    corrupt_bytes: int  # received, failed verification, thrown away
    seconds: float
    delivered_by_source: dict[str, int] = field(default_factory=dict)
    split_pieces: int = 0  # pieces finished by two sources at the tail (front and back part)
    replaced_connections: int = 0  # connections dropped for being too slow and opened again


def event_to_dict(ev: Event) -> dict[str, Any]:
    d = dataclasses.asdict(ev)
    d["event"] = type(ev).__name__
    return d
