"""Which machine of a LAN fetches which pieces from outside: ``LanView`` (see ``lan``, which uses it).

Rendezvous hashing (highest random weight) over blocks of pieces: every machine that knows the same
set of machines computes the same owner for every block, and a machine joining or leaving moves
only the blocks it gains or loses. Ownership is looked up lazily and cached per block, so a
700k-piece model costs nothing until its blocks are asked about.

A machine works through its blocks in the order of its own score, highest first (``order``). A
machine that joins takes a block from another only where it outscores it, so the blocks an owner
is at work on (its best left) are the ones least likely to change hands while it fetches them,
and two machines that start before they met begin at different places.

A machine that leaves stays an owner for ``hold`` seconds (``update``, ``expire``): a pull that
finished leaves its peers for a second or two while it turns into a seed, and the pieces it
fetched last, which nobody copied yet, come back with it; a machine killed hands its blocks on
that much later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["LanView", "block_pieces"]

_M64 = (1 << 64) - 1
_BLOCK_BYTES = 8 << 20


def _mix(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _key(host: str) -> int:
    return int.from_bytes(hashlib.blake2b(host.encode(), digest_size=8).digest(), "big")


def block_pieces(num_pieces: int, piece_size: int) -> int:
    """Pieces per ownership block: about 8 MiB, but at least 64 blocks in the model."""
    return max(1, min(_BLOCK_BYTES // max(1, piece_size), num_pieces // 64))


@dataclass
class LanView:
    """This machine among the machines of its LAN pulling the same model (see ``lan``)."""

    started: float  # when the pull started: the grace is counted from here
    block: int = 1  # pieces per ownership block
    blocks: int = 0  # blocks in the model
    me: str = ""
    hosts: tuple[str, ...] = ()  # the other machines pulling and fetching from outside
    held: dict[str, float] = field(default_factory=dict)  # machines that left -> when: owners still
    peers: int = 0  # connected peers of any kind (seeds too)
    pending: int = 0  # peers on their way: connecting, or in their handshake (not in ``peers`` yet)
    changed_at: float | None = None  # when the swarm last reported a different set of peers
    ready_at: float | None = None  # when the swarm first reported (it is ready: torrent checked)
    swarm_slow: bool = False  # mirrors may take pieces peers have (set by the scheduler's tick)
    peer_pieces: int = 0  # pieces some peer had when last counted (``lan._others_quiet``) ...
    counted_at: float = float("-inf")  # ... at this time
    grew_at: float | None = None  # when that count last grew
    fetched: bytearray | None = None  # 1 = this machine fetched the piece from outside (``fetched_here``)
    _owners: tuple[str, ...] = ()  # the other owners: hosts and held
    _keyed: tuple[str, tuple[str, ...]] | None = None  # (me, owners) that _keys were made for
    _keys: tuple[int, ...] = ()  # hashed ids: this machine's first
    _owned: dict[int, bool] = field(default_factory=dict)  # block -> this machine owns it
    _order: list[int] | None = None  # this machine's blocks by its own score, best first
    done_to: int = 0  # blocks before this in ``order()`` had nothing free when last looked at

    @classmethod
    def for_model(cls, started: float, num_pieces: int, piece_size: int) -> LanView:
        block = block_pieces(num_pieces, piece_size)
        return cls(started, block, -(-num_pieces // block))

    def update(
        self, me: str, hosts: Sequence[str], peers: int, now: float, hold: float = 0.0, pending: int = 0
    ) -> bool:
        """The swarm's latest report; True if the owners changed."""
        self.pending = pending
        others = tuple(sorted(h for h in set(hosts) if h != me))
        if self.ready_at is None:
            self.ready_at = now
        if (me, others, peers > 0) != (self.me, self.hosts, self.peers > 0) or self.changed_at is None:
            self.changed_at = now
        self.peers = peers
        if me == self.me and hold > 0:
            for h in set(self.hosts) - set(others):
                self.held[h] = now
        for h in others:
            self.held.pop(h, None)
        if me != self.me:
            self._order, self.done_to = None, 0
        self.me, self.hosts = me, others
        changed = self._set_owners()
        self.order()  # made here, in the swarm's report, not in a connection's request for work
        return changed

    def expire(self, now: float, hold: float) -> bool:
        """Machines that left ``hold`` seconds ago stop owning blocks; True if the owners changed."""
        gone = [h for h, t in self.held.items() if now - t >= hold]
        for h in gone:
            del self.held[h]
        return bool(gone) and self._set_owners()

    def _set_owners(self) -> bool:
        owners = tuple(sorted(set(self.hosts) | set(self.held)))
        if self._keyed == (self.me, owners):
            return False
        self._owners, self._keyed = owners, (self.me, owners)
        self._keys = (_key(self.me), *(_key(h) for h in owners))
        self._owned.clear()
        return True

    @property
    def owners(self) -> int:
        """How many other machines own blocks."""
        return len(self._owners)

    @property
    def alone(self) -> bool:
        """No other machine pulls (or just left): this one owns every block."""
        return not self._owners

    def mine(self, i: int) -> bool:
        """Does this machine fetch piece ``i`` from outside?"""
        if not self._owners:
            return True
        b = i // self.block
        got = self._owned.get(b)
        if got is None:
            keys = self._keys
            mine = _mix(keys[0] ^ b)
            got = all(_mix(k ^ b) < mine for k in keys[1:])
            if len(self._owned) > 1 << 20:
                self._owned.clear()
            self._owned[b] = got
        return got

    def first_mine(self, lo: int, hi: int) -> int | None:
        """The first piece of ``[lo, hi)`` in a block of this machine."""
        return self._first(lo, hi, True)

    def first_not_mine(self, lo: int, hi: int) -> int | None:
        """The first piece of ``[lo, hi)`` in a block of another machine."""
        return self._first(lo, hi, False)

    def _first(self, lo: int, hi: int, mine: bool) -> int | None:
        b = lo // self.block
        while b * self.block < hi:
            if self.mine(b * self.block) is mine:
                return max(lo, b * self.block)
            b += 1
        return None

    def order(self) -> list[int]:
        """Every block, by this machine's own score, best first (made once, on first use)."""
        if self._order is None:
            k = _key(self.me)
            self._order = sorted(range(self.blocks), key=lambda b: _mix(k ^ b), reverse=True)
        return self._order

    def fetched_here(self, i: int, num_pieces: int) -> None:
        """This machine verified piece ``i`` from outside (a mirror)."""
        if self.fetched is None:
            self.fetched = bytearray(num_pieces)
        self.fetched[i] = 1

    def others_have(self, haves: Sequence[bytearray]) -> int:
        """How many pieces the swarms' maps ``haves`` hold that this machine did not fetch from
        outside itself: a swarm's map holds its own copy too, and what this machine fetched is
        handed to it, so counted whole the maps grow with this machine's own work on the uplink.
        One pass in C per map (int AND, popcount): no loop over the pieces."""
        if self.fetched is None:
            return sum(have.count(1) for have in haves)
        mine = int.from_bytes(self.fetched, "little")
        return sum(have.count(1) - (int.from_bytes(have, "little") & mine).bit_count() for have in haves)

    def settled(self, now: float, settle: float, grace: float, ready_wait: float) -> bool:
        """May mirrors start? (see "The start" in ``lan``)."""
        if self.ready_at is None:  # the swarm is not ready yet (metadata, checking its own copy)
            return now - self.started >= ready_wait
        if now - max(self.started, self.ready_at) >= grace:
            return True
        return self.peers > 0 and self.changed_at is not None and now - self.changed_at >= settle
