"""Which machine of a LAN fetches which pieces from outside: ``LanView`` (see ``lan``, which uses it).

Rendezvous hashing (highest random weight) over blocks of pieces: every machine that knows the same
set of machines computes the same owner for every block, and a machine joining or leaving moves
only the blocks it gains or loses. Ownership is looked up lazily and cached per block, so a
700k-piece model costs nothing until its blocks are asked about.
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
    me: str = ""
    hosts: tuple[str, ...] = ()  # the other machines pulling and fetching from outside
    peers: int = 0  # connected peers of any kind (seeds too)
    changed_at: float | None = None  # when the swarm last reported a different set of peers
    ready_at: float | None = None  # when the swarm first reported (it is ready: torrent checked)
    swarm_slow: bool = False  # mirrors may take pieces peers have (set by the scheduler's tick)
    _keys: tuple[int, ...] = ()  # hashed ids: this machine's first
    _owned: dict[int, bool] = field(default_factory=dict)  # block -> this machine owns it

    def update(self, me: str, hosts: Sequence[str], peers: int, now: float) -> bool:
        """The swarm's latest report; True if the owners changed."""
        others = tuple(sorted(h for h in set(hosts) if h != me))
        if self.ready_at is None:
            self.ready_at = now
        if (me, others, peers > 0) != (self.me, self.hosts, self.peers > 0) or self.changed_at is None:
            self.changed_at = now
        self.peers = peers
        if (me, others) == (self.me, self.hosts):
            return False
        self.me, self.hosts = me, others
        self._keys = (_key(me), *(_key(h) for h in others))
        self._owned.clear()
        return True

    def mine(self, i: int) -> bool:
        """Does this machine fetch piece ``i`` from outside?"""
        if not self.hosts:
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
        b = lo // self.block
        while b * self.block < hi:
            if self.mine(b * self.block):
                return max(lo, b * self.block)
            b += 1
        return None

    def settled(self, now: float, settle: float, grace: float, ready_wait: float) -> bool:
        """May mirrors start? (see "The start" in ``lan``)."""
        if self.ready_at is None:  # the swarm is not ready yet (metadata, checking its own copy)
            return now - self.started >= ready_wait
        if now - max(self.started, self.ready_at) >= grace:
            return True
        return self.peers > 0 and self.changed_at is not None and now - self.changed_at >= settle
