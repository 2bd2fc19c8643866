"""What the scheduler knows at one moment: the pieces, the sources, the connections at work.

The ``Board`` is the recorded state every decision reads (``spans``, ``tail``, ``lan``,
``failures``, ``floor``): the decisions are functions of it and of the time they are given, and
the ``Scheduler`` applies what they decide, under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsmirror._formats.manifest import Manifest
from dsmirror._schedule.owners import LanView
from dsmirror._schedule.pieces import PieceMap
from dsmirror._schedule.rates import source_rate
from dsmirror._schedule.state import Assignment, SchedulerConfig, SourceState

__all__ = ["Board"]


@dataclass
class Board:
    m: Manifest
    cfg: SchedulerConfig
    pieces: PieceMap
    sources: dict[str, SourceState]
    assignments: dict[int, Assignment] = field(default_factory=dict)  # id -> connection at work
    peer_pieces: dict[str, bytearray] = field(default_factory=dict)  # swarm source -> pieces its peers have
    lan: LanView | None = None  # a pull with a swarm: this machine among its LAN's (see ``lan``)
    last_progress: float = 0.0  # when a piece was last verified
    ordered: frozenset[int] = frozenset()  # files hashed whole, written near their front (``order``)
    extents: dict[int, int] = field(default_factory=dict)  # ordered file -> end of what was handed out

    def live(self, name: str) -> list[Assignment]:
        """The connections of source ``name`` at work (not cancelled)."""
        return [a for a in self.assignments.values() if a.source == name and not a.cancelled]

    def source_rate(self, name: str, now: float) -> float:
        """What source ``name`` delivers now (see ``rates.source_rate``)."""
        return source_rate(self.sources[name], self.live(name), now)

    def next_usable(self, s: SourceState, i: int) -> int:
        """The first free piece at or after ``i`` that ``s`` may fetch (``len(self.pieces)`` if none).

        Found in leaps, not piece by piece: past pieces that are not free and past pieces the
        peers of swarm ``s`` lack (``bytearray.find``), past a whole file ``s`` lacks.
        """
        pieces, n = self.pieces, len(self.pieces)
        have = self.peer_pieces.get(s.info.name)
        while True:
            i = pieces.next_free(i)
            if i >= n:
                return n
            fi = self.pieces.file_of(i)
            if fi in s.missing_files:
                i = self.m.file_piece_ranges[fi].stop
            elif have is not None and not have[i]:
                k = have.find(1, i)
                i = n if k < 0 else k
            elif self.usable_for(s, i):
                return i
            else:
                i += 1

    def peers_have(self, i: int) -> bool:
        """Does a peer of a (not banned) swarm source have piece ``i``?"""
        return any(have[i] for name, have in self.peer_pieces.items() if not self.sources[name].banned)

    def may_take_over(self, s: SourceState, a: Assignment, i: int) -> bool:
        """May ``s`` take piece ``i`` of connection ``a`` (steal it, help or race it)? Not a
        mirror from the swarm in a LAN pull, unless the swarm cannot cope (``lan``) or ``i`` is a
        piece no peer has any more of this machine's own blocks: a piece the swarm holds that a
        machine which left had is likely to come back with it as a seed (``LanView.held``), and
        if not, its new owner fetches it, not every machine (two raced the upstream for one
        8 MiB piece: 1.19x the model)."""
        view = self.lan
        if view is None or view.swarm_slow or s.info.kind == "bittorrent":
            return True
        if self.sources[a.source].info.kind != "bittorrent":
            return True
        return view.mine(i) and not self.peers_have(i)

    def usable_for(self, s: SourceState, i: int) -> bool:
        """May source ``s`` fetch piece ``i``?"""
        fi = self.pieces.file_of(i)
        if fi in s.missing_files:
            return False
        have = self.peer_pieces.get(s.info.name)
        if have is not None and not have[i]:
            return False  # a swarm fetches only what its peers have
        if have is None and self.lan is not None and not self.lan.swarm_slow and self.peers_have(i):
            return False  # a mirror leaves what peers have to the LAN (see ``lan``)
        avoid = self.pieces.spoilers(i)
        if avoid and s.info.name in avoid:
            # Give a spoiled piece back to its spoiler only if nobody else can fetch it.
            return all(
                o.banned or o.info.name in avoid or fi in o.missing_files for o in self.sources.values()
            )
        return True
