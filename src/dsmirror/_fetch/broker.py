"""The seam between the engine and a source that is handed whole pieces (a BitTorrent swarm).

An HTTP mirror is driven by the engine's own connection threads through ``Source.open_range``. A
swarm drives itself: the engine calls its ``run`` once, in a thread of its own, with a
:class:`PieceBroker` — the part of the engine such a source may use, and all of it:

- work: ``acquire`` an assignment from the scheduler (a span of pieces, seconds to wait, or None:
  nothing more for this source), keep fetching while ``wanted``, ``release`` it when it ends;
- results: ``deliver`` each whole piece it obtained (the engine verifies it against the manifest,
  stores it and tells the scheduler), ``emit`` events for the user;
- what is known: ``is_verified`` / ``read_piece`` (pieces verified from any source, to serve
  peers), ``finished`` (every piece verified), ``has_mirrors`` (other sources take part, so this
  one may give work back or drop out without failing the pull), ``stopping`` (the pull ends:
  return from ``run``);
- telling the scheduler which pieces it can get at all (``set_peer_pieces``) and giving up on
  itself (``ban``);
- ``clock``, the pull's injected clock, for every decision that depends on time, and
  ``partial_area``, the pull's folder under ``.dsmirror/partial/`` for the source's own files.

The other way round, the engine calls ``piece_available`` for every piece verified from any
source, so that the swarm can serve it to peers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from dsmirror._core.clock import Clock
from dsmirror._core.events import Event
from dsmirror._formats.manifest import Piece
from dsmirror._schedule.info import SourceInfo
from dsmirror._schedule.scheduler import Assignment

__all__ = ["PieceBroker", "SwarmSource"]


class PieceBroker(Protocol):
    """What a :class:`SwarmSource` sees of the engine running it. Thread-safe."""

    @property
    def clock(self) -> Clock: ...

    @property
    def partial_area(self) -> Path:
        """The pull's partial area: the source may keep files of its own there (for a resume)."""
        ...

    @property
    def has_mirrors(self) -> bool:
        """Whether stream sources (HTTP mirrors, local copies) take part in the pull too."""
        ...

    def stopping(self) -> bool:
        """The pull is ending (done, failed or interrupted): ``run`` should return."""
        ...

    def finished(self) -> bool:
        """Every piece is verified (a failed whole-file digest may still reopen some)."""
        ...

    def acquire(self, source: str) -> Assignment | float | None:
        """Work for ``source``: an assignment, seconds to wait before asking again, or None (stop).

        The wait answers what ``source`` could fetch then: it may ask again sooner once its
        ``set_peer_pieces`` map holds pieces it did not hold at that answer."""
        ...

    def wanted(self, a: Assignment) -> bool:
        """Should ``a`` go on with its next piece? False once it was cut short or another copy won."""
        ...

    def deliver(self, a: Assignment, piece: Piece, data: bytes, source: str) -> bool:
        """A whole piece of ``a``: verify, store, report; returns whether to go on with ``a``.

        Raises PieceMismatch (after blaming ``source``) if the bytes do not match the manifest.
        """
        ...

    def release(self, a: Assignment, error: BaseException | None = None) -> None:
        """``a`` ends (its pieces not delivered go back to the scheduler); ``error``: why."""
        ...

    def is_verified(self, index: int) -> bool: ...

    def read_piece(self, piece: Piece) -> bytes:
        """The bytes of a verified piece, from the store."""
        ...

    def set_peer_pieces(self, source: str, have: bytearray) -> None:
        """``source`` can fetch piece *i* only while ``have[i]``; it updates ``have`` in place."""
        ...

    # Optional (a swarm calls it when the broker has it): ``set_lan_hosts(source, me, hosts, peers,
    # pending)``, who pulls the same model on this machine's LAN (``Scheduler.set_lan_hosts``).

    def ban(self, source: str, reason: str) -> None:
        """``source`` takes no more work in this pull."""
        ...

    def emit(self, event: Event) -> None: ...


@runtime_checkable
class SwarmSource(Protocol):
    """A source that is handed whole pieces and reports them back (a BitTorrent swarm).

    ``run`` is called once, in its own thread; it loops until ``broker.stopping()``: it takes work
    with ``broker.acquire(name)``, and for every piece it obtains it calls ``broker.deliver``, then
    ``broker.release(assignment, error)`` when an assignment ends. ``piece_available`` is called
    for every piece verified from any source (so the swarm can serve it to peers at once).
    """

    info: SourceInfo

    @property
    def name(self) -> str: ...

    def run(self, broker: PieceBroker) -> None: ...

    def piece_available(self, piece: Piece, data: bytes | None) -> None: ...

    def close(self) -> None: ...
