"""The BitTorrent swarm (libtorrent) as one more source of a pull: :class:`SwarmSource`.

How the swarm takes part in a pull
==================================
One scheduler decides which pieces come from which source (``dsmirror._schedule``). The swarm sees
the engine only through a ``PieceBroker`` (``dsmirror._fetch.broker``): it asks it for work like an
HTTP connection does (``acquire``), and may hold several assignments at once
("slots"): torrent pieces of the pieces it holds get a libtorrent priority above 0, every other
piece priority 0, so libtorrent never downloads a piece the scheduler gave to a mirror. The torrent
is added with ``default_dont_download``, so even a magnet's pieces start at priority 0 when its
metadata arrives. ``set_piece_deadline`` is never used: it raises a priority-0 piece to 7.

Which pieces the swarm should ask for depends on what its peers have: the swarm keeps a map of the
pieces some connected peer (or libtorrent's own copy) has, refreshed every loop turn for a small
map and every 0.25 s for a large one (``scan_period``), and at the next turn when a peer came, left
or first told its pieces; it hands the map to the scheduler (``Scheduler.set_peer_pieces``) so that
the swarm is given only those and mirrors the others, which is what lets a LAN fetch each piece
from outside about once (``scripts/bench_lan.py``). When the peers that had a piece leave, the
swarm gives back, after ``_STALL`` seconds, a span whose first piece no peer has any more. To learn
what peers have, the torrent must not look finished while the swarm holds no work (seeds drop
upload-only peers): one missing piece is then kept at priority 1 (``_bait``).

When libtorrent finishes a piece (``piece_finished_alert``: its own SHA-1 / SHA-256 Merkle check
passed), the swarm reads it back (``read_piece``: through libtorrent's disk layer, which also sees
blocks not yet written out) and hands it to ``broker.deliver``, which checks it against the
manifest's SHA-256, stores it and tells the scheduler. Pieces are delivered in the order of their
assignment, because an assignment is a span ``[next_piece, end)``; priorities falling from 7 at the
head of a span make libtorrent finish them roughly in that order, and a piece finished early waits
in libtorrent's storage until it is next. A span the scheduler cut short (work stealing) or a head
piece another source won (the tail race) is noticed within one loop turn; its pieces go back to
priority 0.

The other way round: every piece verified from any source is handed to libtorrent with
``torrent_handle.add_piece`` (libtorrent checks it against the torrent's hashes too), after which
the session serves it to peers. So machines of a LAN that pull the same model at once share what
each fetched from outside while the pulls are running. At most ``_MAX_INJECTING`` pieces are in
libtorrent's hands at once, so a fast mirror cannot pile memory up in the session.

A peer that sends a piece failing libtorrent's hash check is banned by libtorrent (a piece from one
peer alone bans it at once; pieces mixed from several peers go through libtorrent's smart-ban
plugin); the swarm reports ``PieceRejected`` and ``SourceTrouble`` and the piece is fetched again.
Bytes libtorrent accepted but the manifest's SHA-256 rejects (a torrent that is not the manifest's)
blame the swarm source itself, which the scheduler bans after ``ban_after_corrupt`` such pieces.

The manifest's own swarm of a manifest with ``sha1`` is a real torrent (``own``, not
``trusting``): all of the above applies to it. A piece libtorrent accepted that the manifest's
SHA-256 refuses (a ``sha1`` naming other bytes) is tainted as below, so that a mirror fetches it.

The manifest's own swarm with placeholder piece hashes (a manifest without ``sha1``,
``Torrent.derived``; why in ``dsmirror._fetch.swarm.torrent``) runs with libtorrent's hash checks
off, so the checks are done here, before anything else sees the piece: every piece libtorrent
finishes from peers is read back at once (``_check``, at most ``_MAX_CHECKING`` at a time) and its
SHA-256 compared with the manifest's. A bad one is never delivered: the peers that sent its blocks
(``block_finished_alert``) get a strike, a peer that sent a bad piece alone, or two bad pieces, is
banned by address (``SwarmSession.ban``), and the piece is "tainted": the scheduler is told no peer
has it, a mirror fetches it, and the verified bytes then overwrite libtorrent's copy (``add_piece``
with ``overwrite_existing``). What the engine is handed is checked against the manifest once more.

Sharing the uplink: each machine of a LAN pulling the same model tells the scheduler which
machines pull it now (``set_lan_hosts``: the peer ids of the connected dsmirror peers that fetch
from mirrors and are not seeds, and its own; the role is in the peer id, see
``session.PEER_ID_PREFIX``), so that each fetches its own blocks from outside
(``dsmirror._schedule.lan``).

Seeding after the pull: with ``pull --seed`` a pull that completed does not remove its torrent
(``close``): the verified pieces still queued are handed to libtorrent, and a torrent that then
holds every piece, none of them unchecked, keeps serving its peers from its copy until the seeder
takes it over (``take_live``; "The hand-over" in ``dsmirror._share.seed``). That is why a new
copy is kept in plain files (``bt/<path>``, files at priority 4, pieces at 0) rather than in
libtorrent's part file: the seeder points the torrent at the installed files, which have the same
paths, without moving or reading anything.

Time: the stall limit, the peer scans and the resume saves follow the broker's (injected) clock;
only the waits for libtorrent's alerts are real time (also the wait for the last pieces above).

The disk: libtorrent's copy (``bt/``) is a second copy of what the pull verified or took from peers,
up to the model's size again (the store's own files are preallocated at open). So that it never
fills the disk, the swarm reads the free space of the partial area's file system on every turn of
its loop and counts what it has asked libtorrent to write but libtorrent has not yet written
(pieces handed over, pieces its slots are fetching): when less than ``disk_reserve`` would be
left, the copy stops growing. Verified pieces are no longer handed to libtorrent (only their
indices are kept, to hand over once space is back: twice the reserve free), and with mirrors in
the pull the swarm gives its spans back and takes no new ones, so peers keep getting what the copy
holds and the mirrors fetch the rest. It says so once (``SourceTrouble``). A pull --seed whose copy
stopped short seeds from the installed files instead of taking its torrent over. Without mirrors
the swarm still downloads (nothing else can finish the pull).

One copy per finished file: once the store verified a file (the engine calls ``file_verified``)
and libtorrent holds every piece of it (none tainted, none unchecked, none being handed over),
libtorrent writes to that file no more, and both copies hold the same bytes. Its file in ``bt/`` is
then replaced by a hard link to the store's partial file (renamed over it) and libtorrent is told
to close its file handles (``flush_cache``): the disk keeps one copy of that file, which the install
moves into place (a rename: the link stays) and the seeder then serves. libtorrent downloads only
pieces at a priority above 0, which the swarm gives to pieces the store lacks, so it never writes
into a linked file; and a resumed pull removes the links from ``bt/`` before libtorrent opens it
(``_unshare``: a piece the store no longer trusts is fetched again). A pull of a model of many
files thus holds a second copy only of the files still in progress. Not for a single-file model
(an Ollama blob): its one file is complete only at the end.

Leaving: a pull that finished without ``--seed`` used to remove its torrent at once, taking with it
the pieces it fetched last, which no LAN peer had copied yet: the machines still pulling fetched
them from outside again (test_lan_registry's "leave" case: 1.11-1.27x upstream). The engine now
stops the swarm's loop when every file is verified (``stop``) and closes it after the install
(``close``): there, while a connected peer that is not a seed lacks a piece this machine holds
and no other connected peer has, or verified pieces still wait to be handed to libtorrent, the
torrent stays up to ``_LINGER`` seconds (uploading; the installed files are in place already,
``bt.lock`` held). Ctrl-C ends that wait, not the pull, which is done.

Where libtorrent keeps its copy and its resume data meanwhile: ``dsmirror._fetch.swarm.resume``;
the session it runs in: ``dsmirror._fetch.swarm.session``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from dsmirror._core.errors import DsmirrorError, NoSourceError, PieceMismatch, SourceNotFound, UsageError
from dsmirror._core.events import PieceRejected, SourceDropped, SourceTrouble
from dsmirror._core.sizes import format_bytes
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.resume import (
    RESUME_EVERY,
    drop_copy,
    hold_copy,
    read_resume,
    save_resume,
    write_resume,
)
from dsmirror._fetch.swarm.session import PEER_ID_PREFIX, REDIAL, UPLINK, SwarmSession, endpoint_text
from dsmirror._fetch.swarm.torrent import (
    PieceMap,
    Torrent,
    check_torrent,
    magnet_for,
    own_swarm,
    torrent_from_info,
)
from dsmirror._formats.manifest import Manifest, Piece
from dsmirror._journal.store import SPACE_MARGIN
from dsmirror._schedule.info import SourceInfo

if TYPE_CHECKING:
    from dsmirror._fetch.broker import PieceBroker
    from dsmirror._schedule.scheduler import Assignment

__all__ = ["LiveTorrent", "SwarmSource", "SwarmStats"]

_MAX_INJECTING = 16  # pieces handed to libtorrent with add_piece and not yet checked by it
_TARGET_BYTES = 64 << 20  # pieces held in slots: enough to keep a LAN link busy between loop turns
_STALL = 5.0  # a slot whose head no peer has for this long is given back (when mirrors exist)
_PEER_SCAN = 0.25  # seconds between refreshes of which pieces the connected peers have, at most
_PEER_SCAN_MIN = 0.05  # ... and at least (a loop turn), for a map cheap to make (``scan_period``)
_PENDING_FOR = 0.5  # a peer connecting or in its handshake counts as on its way this long (s)
_MAX_CHECKING = 16  # pieces of the manifest's own swarm being read back to be checked
_UPLINK_ID = PEER_ID_PREFIX + UPLINK  # peer ids of machines that fetch a share from mirrors
_BAN_STRIKES = 2  # bad pieces with a peer's blocks in them that ban it (one if it sent all blocks)
_HAND_OVER_WAIT = 10.0  # seconds the end of a pull --seed waits for libtorrent to take its last pieces
_LINGER = 5.0  # seconds a finished pull without --seed may stay for the peers still pulling ("Leaving")


def disk_reserve(total: int) -> int:
    """Free bytes libtorrent's copy leaves on a file system of ``total`` bytes (see "The disk"):
    2% of it, at least the store's margin and at most 1 GiB (several seconds of writes at the
    fastest LAN rates, between two turns of the loop)."""
    return max(SPACE_MARGIN, min(1 << 30, total // 50))


@dataclass
class SwarmStats:
    """What the swarm did during a pull (libtorrent's counters, read when the pull ends)."""

    downloaded: int = 0  # payload bytes received from peers
    uploaded: int = 0  # payload bytes sent to peers
    redundant: int = 0  # received twice (libtorrent's end game)
    failed: int = 0  # received and failed the hash check
    injected: int = 0  # pieces verified from other sources and handed to libtorrent for peers
    banned_peers: int = 0
    #: pieces not handed to libtorrent when the pull ended, for lack of disk space ("The disk")
    starved: int = 0
    lowest_free: int = -1  # the least free space the swarm saw on the partial area's file system
    lingered: bool = False  # a finished pull stayed for LAN peers still pulling ("Leaving")


@dataclass(frozen=True)
class LiveTorrent:
    """A pull's torrent still in its session and serving peers from ``area/bt``, every piece in
    it verified: what ``pull --seed`` seeds, without removing and adding it again
    (``SwarmSource.take_live``; see "Seeding after the pull" in the module docstring)."""

    torrent: Torrent
    handle: Any
    area: Path  # the pull's partial area: libtorrent's copy is ``bt/``, its resume data ``bt.resume``
    lock: int = -1  # descriptor holding ``area/bt.lock`` (``resume.hold_copy``) until ``drop_copy``


@dataclass
class _Slot:
    a: Assignment
    owned: set[int] = field(default_factory=set)  # manifest pieces with priority > 0 for this slot
    head_since: float = 0.0
    head: int = -1
    seen: tuple[int, int] = (-1, -1)  # (next_piece, end) when its priorities were last set


_NONZERO = bytes([0] + [1] * 255)
#: After ``_bait`` found no piece, it looks again once libtorrent loses one, or after this (s).
_BAIT_RESCAN = 5.0


def scan_period(cost: float) -> float:
    """Seconds until the next peer scan, after one that took ``cost`` seconds: every loop turn for
    a small map (98 pieces: ~0.3 ms), so that a piece or a peer that appears on the LAN reaches the
    scheduler at once, not up to a quarter of a second later (the first byte of a machine alone
    waits for that, and so does the end of every pull: its last pieces come from peers); for a
    large map (0.08-0.17 s at 700k pieces) ``_PEER_SCAN``, so that scans take a tenth of the loop
    at most."""
    return min(_PEER_SCAN, max(_PEER_SCAN_MIN, 10 * cost))


def piece_runs(to_torrent: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """``to_torrent`` as runs ``(first manifest piece, its torrent piece or -1, length)`` of pieces
    that follow each other in both (a file's pieces: about one run a file)."""
    runs: list[tuple[int, int, int]] = []
    for i, t in enumerate(to_torrent):
        if runs:
            i0, t0, ln = runs[-1]
            if (t0 < 0 and t < 0) or (t0 >= 0 and t == t0 + ln):
                runs[-1] = (i0, t0, ln + 1)
                continue
        runs.append((i, t if t >= 0 else -1, 1))
    return tuple(runs)


def peer_view(
    avail: list[int], mine: bytearray, tainted: set[int], runs: tuple[tuple[int, int, int], ...]
) -> bytearray:
    """For each manifest piece, 1 if some connected peer (``avail``, libtorrent's availability by
    torrent piece, possibly short) or libtorrent's own copy (``mine``, 0/1 by torrent piece) has
    its torrent piece and that piece is not tainted; 0 for a piece the torrent does not hold.
    ``runs``: the manifest's pieces in the torrent (``piece_runs``).

    In C-speed steps, not a Python loop per piece (0.08-0.17 s at 700k pieces, 4 times a second):
    the two 0/1 byte strings are OR-ed as integers (no carries), then copied run by run.
    """
    nt = len(mine)
    counts = avail[:nt]
    try:
        seen = bytes(counts)
    except ValueError:  # a count over 255
        seen = bytes(map(bool, counts))
    seen = seen.translate(_NONZERO) + bytes(nt - len(seen))
    got = bytearray((int.from_bytes(seen, "little") | int.from_bytes(mine, "little")).to_bytes(nt, "little"))
    for t in tainted:
        if 0 <= t < nt:
            got[t] = 0
    out = bytearray(sum(ln for _, _, ln in runs))
    for i0, t0, ln in runs:
        if t0 >= 0:
            out[i0 : i0 + ln] = got[t0 : t0 + ln]
    return out


class SwarmSource:
    """A BitTorrent swarm of a manifest's pieces; implements ``dsmirror._fetch.broker.SwarmSource``.

    ``torrent`` (the metadata) or ``magnet`` (metadata then comes from peers) names the swarm; with
    neither, the info-hashes the manifest records are used.
    """

    def __init__(
        self,
        manifest: Manifest,
        *,
        config: SwarmConfig,
        torrent: Torrent | None = None,
        magnet: str | None = None,
        name: str = "swarm",
        session: SwarmSession | None = None,
        max_slots: int = 8,
    ) -> None:
        self.manifest = manifest
        self.config = config
        self.torrent = torrent
        self.magnet = magnet or (None if torrent else magnet_for(manifest))
        if self.torrent is None and self.magnet is None:
            raise UsageError("no torrent or magnet link for the swarm", hint="give --torrent FILE")
        self.map: PieceMap | None = check_torrent(manifest, torrent) if torrent else None
        self.info = SourceInfo(name, "bittorrent", "swarm", region="p2p", max_connections=max_slots)
        self.trusting = bool(torrent is not None and torrent.derived)  # libtorrent checks nothing
        # The manifest's own swarm, with placeholder piece hashes (trusting) or the real ones.
        self.own = torrent is not None and own_swarm(manifest, torrent)
        self.session = session or SwarmSession(config, trust_pieces=self.trusting)
        self.handle: Any = None
        self.completed = False  # every piece of the pull verified (set when the pull's run ends)
        self.stats = SwarmStats()
        self._pending: queue.SimpleQueue[tuple[int, bytes | None]] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()  # close() was called: the run loop ends
        self._idle = threading.Event()  # run() is not running (close() waits for it)
        self._idle.set()
        self._area: Path | None = None  # the pull's partial area (bt/, bt.resume), once run
        # state of the run thread
        self._slots: dict[int, _Slot] = {}
        self._owner: dict[int, _Slot] = {}
        self._reading: set[int] = set()
        self._injecting: set[int] = set()
        self._have = bytearray()
        self._prio = bytearray()
        self._prio_changed: set[int] = set()  # torrent pieces whose _prio libtorrent has not got
        self._cooldown = 0.0
        self._stalled_until = 0.0  # a stalled span was given back: no new work before then
        self._view_at_wait = 0  # _peer_have (as an integer) when acquire last said wait
        self._next_dial = 0.0
        self._next_resume = 0.0
        self._ready = False
        self._dropped = False
        self._peer_have = bytearray()  # manifest piece -> some connected peer has it
        self._peer_view = False  # the scheduler reads _peer_have (Scheduler.set_peer_pieces)
        self._runs: tuple[tuple[int, int, int], ...] | None = None  # piece_runs(map.to_torrent)
        self._next_peer_scan = 0.0
        self._next_peer_look = 0.0  # the next look at the peers (a scan if due, or if they changed)
        self._peers_seen = (0, 0, 0)  # ``_peer_signature`` at the last scan
        self._bait_piece = -1  # manifest piece kept at priority 1 while no slot wants one
        self._inject_failures = 0
        self._bait_from = 0
        self._bait_none_at: float | None = None  # when _bait_search last found nothing
        # the manifest's own swarm (self.trusting): pieces libtorrent finished that we check
        self._unchecked: set[int] = set()  # torrent pieces finished from peers, not checked yet
        self._to_check: list[int] = []  # of those, not being read yet
        self._checking: set[int] = set()
        self._tainted: set[int] = set()  # torrent pieces libtorrent holds with bytes the manifest rejects
        self._senders: dict[int, set[str]] = {}  # torrent piece -> addresses that sent its blocks
        self._strikes: dict[str, int] = {}
        # [registry pulls, H5] pieces without piece hashes: who sent them (``blame``)
        self._blame_lock = threading.Lock()
        self._sent_by: dict[int, frozenset[str]] = {}  # manifest piece -> addresses that sent it
        self._blamed: queue.SimpleQueue[tuple[list[int], list[str]]] = queue.SimpleQueue()
        self._share: tuple[tuple[str, ...], int, int] = ((), -1, 0)  # (machines pulling, peers, pending)
        self._connecting: dict[tuple[str, int], float] = {}  # peer not through its handshake -> since
        self._broker: PieceBroker | None = None
        self._live: LiveTorrent | None = None  # left running by close() for the seeder
        self._plain_on_metadata = False  # a magnet's copy goes to plain files (``_add``)
        # The disk ("The disk" in the module docstring): the copy stops growing while low.
        self._disk_low = False
        self._reserve = -1  # disk_reserve of the partial area's file system, once run
        self._starved: set[int] = set()  # manifest pieces not handed to libtorrent while low
        # One copy per finished file ("One copy per finished file"): files the store verified,
        # to link once libtorrent holds all of their pieces, and those linked.
        self._verified_files: queue.SimpleQueue[tuple[int, Path]] = queue.SimpleQueue()
        self._to_link: dict[int, Path] = {}
        self.linked: set[int] = set()

    @property
    def name(self) -> str:
        return self.info.name

    # -- engine protocol -----------------------------------------------------------------------
    def piece_available(self, piece: Piece, data: bytes | None) -> None:
        self._pending.put((piece.index, data))

    def file_verified(self, file_index: int, path: Path) -> None:
        """The store verified file ``file_index``, kept at ``path`` until it is installed."""
        self._verified_files.put((file_index, path))

    def run(self, broker: PieceBroker) -> None:
        with self._lock:
            if self._closed:
                return
            self._idle.clear()
        try:
            with self.session.using():
                self._area = broker.partial_area
                if broker.has_mirrors:
                    self.session.take_uplink_share()  # before the torrent is added: its peer id
                self.handle = self._add(self._area)
                try:
                    self._loop(broker)
                finally:
                    if self.map is not None:  # [registry pulls, H5] blame of the last file verified
                        self._take_blame(broker)
                    for slot in list(self._slots.values()):
                        self._drop(broker, slot)
                    self.completed = broker.finished()
        finally:
            self._idle.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """End the run loop (the pull is done), leaving the torrent for ``close``; whether it ended
        within ``timeout`` seconds (else the session is closed: the run thread is stuck)."""
        self._stop.set()
        if not self._idle.wait(timeout):
            self.session.close()  # the run thread is stuck: it destroys the session when it leaves
            return False
        return True

    def close(self, timeout: float = 30.0) -> None:
        """End of the pull: keep libtorrent's copy resumable, or delete it once the pull is done.

        Waits (up to ``timeout`` seconds) for ``run`` to end first: two threads must not pop the
        session's alerts at once, nor may the session go while the run thread calls into it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.stop(timeout):
            return
        area, handle = self._area, self.handle
        if handle is not None and not self.session.stopping:
            with self.session.using():
                self._finish(area, handle)
        if not (self.config.seed and self.completed):
            self.session.close()

    def take_live(self) -> LiveTorrent | None:
        """The pull's torrent, left running by ``close()`` for a seeder to take over (once)."""
        live, self._live = self._live, None
        return live

    def _finish(self, area: Path | None, handle: Any) -> None:
        if handle.is_valid():
            st = handle.status()
            self.stats.downloaded = int(st.total_payload_download)
            self.stats.uploaded = int(st.total_payload_upload)
            self.stats.redundant = int(st.total_redundant_bytes)
            self.stats.failed = int(st.total_failed_bytes)
        if area is not None and self.completed and self.config.seed and self._hand_over(handle):
            assert self.torrent is not None
            # bt/ is in use until the seeder takes the torrent over: a pull started meanwhile
            # must not delete it as a dead process's leftover (``resume.drop_stale_copy``).
            self._live = LiveTorrent(self.torrent, handle, area, hold_copy(area))
            return
        if area is not None:
            if not self.completed and handle.is_valid() and handle.status().has_metadata:
                save_resume(self.session, self.handle, area, wait=True)
            lock = -1
            if self.completed and handle.is_valid():
                lock = hold_copy(area)  # a pull of the same model meanwhile leaves bt/ alone
                self._linger(handle)
            self.session.remove(handle)
            if self.completed:
                drop_copy(area, lock)

    def _linger(self, handle: Any) -> None:
        """Stay up to ``_LINGER`` s while LAN peers still pulling need what only we hold ("Leaving")."""
        broker = self._broker
        deadline = time.monotonic() + _LINGER
        try:
            while time.monotonic() < deadline and not self.session.stopping:
                if broker is not None:
                    self._feed(broker)
                if not self._needed(handle):
                    return
                self.stats.lingered = True
                for a in self.session.alerts(0.1):
                    if isinstance(a, lt.piece_finished_alert):
                        self._finished(a)
        except KeyboardInterrupt:
            return  # Ctrl-C ends the courtesy wait: the pull itself is done and installed

    def _finished(self, a: Any) -> int:
        """libtorrent holds torrent piece ``t`` of this ``piece_finished_alert`` after the pull
        (lingering or handing over): had, and no longer being injected. Returns ``t``."""
        t = int(a.piece_index)
        if t < len(self._have):
            self._have[t] = 1
        self._injecting.discard(t)
        return t

    def _needed(self, handle: Any) -> bool:
        """Whether a connected peer that is not a seed lacks a piece only this machine holds, or
        verified pieces still wait to be handed to libtorrent while such a peer is there."""
        if not handle.is_valid():
            return False
        peers = handle.get_peer_info()
        if not any(not p.flags & lt.peer_info.seed for p in peers):
            return False
        if self._injecting or not self._pending.empty():
            return True
        # Which pieces some connected peer has, from their bitfields (libtorrent keeps no
        # piece_availability for a torrent that has every piece: it returns an empty list).
        # One byte per piece, read as big integers: an OR per peer, not a loop over the pieces.
        have = bytes(bytearray(handle.status(lt.status_flags_t.query_pieces).pieces))
        n = len(have)
        theirs = 0
        for p in peers:
            theirs |= int.from_bytes(bytes(bytearray(p.pieces))[:n].ljust(n, b"\0"), "big")
        return int.from_bytes(have, "big") & ~theirs != 0

    def _hand_over(self, handle: Any) -> bool:
        """Whether the pull's torrent can go on serving until a seeder takes it over (see
        "Seeding after the pull"): it keeps its copy in plain files, holds every piece, and holds
        no bytes the manifest did not vouch for. The verified pieces still queued for libtorrent
        (the last ones from mirrors) are handed to it first, for up to ``_HAND_OVER_WAIT`` s."""
        broker, pm, torrent = self._broker, self.map, self.torrent
        if broker is None or pm is None or torrent is None or self._dropped or pm.missing_files:
            return False
        if not handle.is_valid():
            return False
        self._check_disk(broker)
        if self._disk_low or self._starved:
            self.stats.starved = len(self._starved)
            return False  # its copy stopped short ("The disk"): the seeder reads the installed files
        prios = list(handle.get_file_priorities())
        if any(not f.pad and (k >= len(prios) or prios[k] == 0) for k, f in enumerate(torrent.files)):
            return False  # its copy is in the part file: no files to point elsewhere
        # Pieces libtorrent took from peers that no check saw yet (the manifest's own swarm) are
        # overwritten with the verified bytes, like tainted ones.
        for t in self._unchecked:
            i = pm.from_torrent.get(t)
            if i is not None:
                self._tainted.add(t)
                self._pending.put((i, None))
        self._unchecked.clear()
        # What libtorrent holds now (the run loop saw the alerts up to its last turn only); a
        # piece it holds ignores add_piece, with no alert.
        have = handle.status(lt.status_flags_t.query_pieces).pieces
        for t, v in enumerate(have):
            if v and t < len(self._have):
                self._have[t] = 1
                if t not in self._tainted:
                    self._injecting.discard(t)
        deadline = time.monotonic() + _HAND_OVER_WAIT
        while time.monotonic() < deadline and not self.session.stopping:
            self._feed(broker)
            if not self._injecting and self._pending.empty():
                return not self._tainted and handle.status().num_pieces == torrent.num_pieces
            for a in self.session.alerts(0.05):
                if isinstance(a, lt.piece_finished_alert):
                    self._tainted.discard(self._finished(a))
                elif isinstance(a, lt.hash_failed_alert) and int(a.piece_index) in self._injecting:
                    return False  # verified bytes the torrent refuses: not this model's torrent
        return False

    # -- adding the torrent --------------------------------------------------------------------
    def _add(self, area: Path) -> Any:
        """Add the torrent over ``area/bt`` (resumed from ``area/bt.resume`` if it still holds)."""
        bt = area / "bt"
        if self.own:
            # The manifest's own swarm: libtorrent may have checked nothing it holds, and after a
            # kill its part file may not match its resume data ("partfile_read ... No such file" dropped
            # the swarm of a restarted pull, which then took from the upstream what its peers
            # seeded). The store is the authority: start libtorrent's copy afresh; the pieces
            # the store verified are handed to it again (``_become_ready``).
            shutil.rmtree(bt, ignore_errors=True)
            with contextlib.suppress(OSError):
                (area / "bt.resume").unlink()
        self._unshare(bt)
        atp = read_resume(area)
        resumed = atp is not None
        # A magnet's files get priority 4 once its metadata arrives (``_become_ready``), so that
        # its copy is in plain files too, unless resume data says where the copy is.
        self._plain_on_metadata = self.torrent is None and not resumed
        if atp is None:
            if self.torrent is not None:
                atp = lt.add_torrent_params()
                atp.ti = self.torrent.info()
            else:
                assert self.magnet is not None
                atp = lt.parse_magnet_uri(self.magnet)
        elif self.torrent is not None:
            atp.ti = self.torrent.info()
        atp.save_path = str(bt)
        atp.flags |= lt.torrent_flags.default_dont_download
        atp.flags &= ~lt.torrent_flags.seed_mode
        if self.torrent is not None:
            atp.renamed_files = self.torrent.renamed_files()
            atp.piece_priorities = [0] * self.torrent.num_pieces
            if not resumed:
                # Files at priority 4 (the pieces stay at 0): libtorrent keeps its copy in plain
                # files, ``bt/<path>``, not in a part file, so that a seeder can take the torrent
                # over by pointing it at the installed files (see "Seeding after the pull").
                atp.file_priorities = [0 if f.pad else 4 for f in self.torrent.files]
            # else: keep the resume data's file priorities. Resume data of a copy kept in the
            # part file (``bt/.<hash>.parts``: files at priority 0, as before the above) stays so:
            # files at priority 4 again would make libtorrent look for those pieces in the files
            # themselves ("partfile_read ... No such file").
        return self.session.add_torrent(atp)

    def _unshare(self, bt: Path) -> None:
        """Files of ``bt/`` linked to the store's in an earlier run ("One copy per finished file")
        are removed before libtorrent opens them: a piece of one that the store no longer trusts
        (found damaged at the resume) is fetched again, and libtorrent must not write a peer's
        unchecked blocks into the store's file. libtorrent gets them back from the store."""
        for f in self.manifest.files:
            copy = bt / f.path
            with contextlib.suppress(OSError):
                if copy.lstat().st_nlink > 1:
                    copy.unlink()

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self, broker: PieceBroker) -> None:
        # Until the engine stops (not merely until every piece is verified): a file that fails its
        # whole-file digest reopens pieces, and peers keep getting pieces until the end.
        while not (broker.stopping() or self._dropped or self._stop.is_set() or self.session.stopping):
            alerts = self.session.alerts(0.05)
            now = broker.clock.now()
            for a in alerts:
                self._on_alert(broker, a)
            if self._dropped:
                return
            if not self._ready and not self._become_ready(broker):
                if self._dropped:
                    return
                self._dial(now)
                continue
            self._scan_peers(now)
            self._take_blame(broker)
            self._check(broker)
            self._review(broker, now)
            self._check_disk(broker)
            self._feed(broker)
            self._link_files()
            if not self._acquire(broker, now):
                return
            self._bait(broker)
            self._apply_priorities()
            self._dial(now)
            if now >= self._next_resume:
                self._next_resume = now + RESUME_EVERY
                save_resume(self.session, self.handle, broker.partial_area, wait=False)

    def _dial(self, now: float) -> None:
        if now >= self._next_dial:
            self._next_dial = now + REDIAL
            self.session.dial(self.handle)

    def _become_ready(self, broker: PieceBroker) -> bool:
        """Metadata known, map checked, files checked: start working. False: not yet (or never)."""
        h = self.handle
        st = h.status()
        if not st.has_metadata:
            return False
        if self.map is None:
            ti = h.torrent_file()
            got = torrent_from_info(ti)
            try:
                self.map = check_torrent(self.manifest, got)
            except DsmirrorError as exc:
                self._retire(broker, f"the swarm's torrent does not match the manifest: {exc}")
                return False
            self.torrent = got
            for idx, path in got.renamed_files().items():
                h.rename_file(idx, path)
            if self._plain_on_metadata:
                # As ``_add`` does for a torrent it knows (see "Seeding after the pull"): libtorrent
                # holds no piece yet; the pieces stay at priority 0 until the scheduler decides.
                h.prioritize_files([0 if f.pad else 4 for f in got.files])
                h.prioritize_pieces([0] * got.num_pieces)  # in the same turn: nothing fetched
        if st.state in (
            lt.torrent_status.states.checking_files,
            lt.torrent_status.states.checking_resume_data,
        ):
            return False
        assert self.torrent is not None
        n = self.torrent.num_pieces
        self._prio = bytearray(n)
        # One call for every bit (a have_piece call per piece took 7.9 s at 700k pieces).
        self._have = bytearray(h.status(lt.status_flags_t.query_pieces).pieces)
        if len(self._have) != n:
            self._have = bytearray(1 if h.have_piece(t) else 0 for t in range(n))
        h.prioritize_pieces([0] * n)
        if self.trusting:  # libtorrent's copy from an earlier run: check it before it is used
            for i, t in enumerate(self.map.to_torrent):
                if t >= 0 and self._have[t] and not broker.is_verified(i):
                    self._unchecked.add(t)
                    self._to_check.append(t)
        # Pieces the store verified (earlier runs, other sources) that libtorrent lacks: serve them.
        for i in range(self.manifest.num_pieces):
            t = self.map.to_torrent[i]
            if t >= 0 and not self._have[t] and broker.is_verified(i):
                self._pending.put((i, None))
        self._peer_have = bytearray(self.manifest.num_pieces)
        self._broker = broker
        broker.set_peer_pieces(self.name, self._peer_have)
        self._peer_view = True
        self._ready = True
        self._next_resume = broker.clock.now() + RESUME_EVERY
        return True

    def _scan_peers(self, now: float) -> None:
        """Refresh which pieces some connected peer has (the scheduler reads it, see module doc)."""
        if not self._peer_view or now < self._next_peer_look:
            return
        self._next_peer_look = now + _PEER_SCAN_MIN  # (loop turns come at every alert)
        if now < self._next_peer_scan and self._peer_signature() == self._peers_seen:
            return  # not due, and no peer came, left, or told its pieces since the last scan
        began = time.perf_counter()  # (what a scan costs sets how often: ``scan_period``)
        self._next_peer_scan = now + _PEER_SCAN
        assert self.map is not None
        avail = self.handle.piece_availability()
        if len(avail) < len(self._have) and not self.handle.status().is_seeding:
            return  # no piece picker yet
        # A seeding torrent has no piece picker (and no availability): libtorrent's own copy is
        # the whole view then. Skipping it would hide the pieces it finished since the last scan
        # (the last one it downloads makes it a seed) from the scheduler for good, and a pull
        # with no mirror would wait for them until it gives up.
        # libtorrent's own copy counts too (a bait piece, a piece finished after a cut).
        if self._runs is None:
            self._runs = piece_runs(self.map.to_torrent)
        view = peer_view(avail, self._have, self._tainted, self._runs)
        if (int.from_bytes(view, "little") & ~self._view_at_wait) != 0:
            # Pieces new on the LAN: ask the scheduler for them now, not after its last "wait"
            # (the end of a pull came up to 0.2 s late), unless a stalled span was given back.
            self._cooldown = self._stalled_until
        self._peer_have[:] = view
        self._update_share(now)
        self._next_peer_scan = now + scan_period(time.perf_counter() - began)

    def _peer_signature(self) -> tuple[int, int, int]:
        """(peers through their handshake, peers on their way, peers that told they have pieces):
        a change means a scan now (a large map is scanned every ``_PEER_SCAN`` only, and a seeder
        met just before a machine alone would start must be seen before it does)."""
        met = on_way = told = 0
        for p in self.handle.get_peer_info():
            if p.flags & lt.peer_info.connecting or p.flags & lt.peer_info.handshake:
                on_way += 1
            else:
                met += 1
                told += p.num_pieces > 0
        return met, on_way, told

    def _update_share(self, now: float) -> None:
        """Tell the scheduler who pulls this model on the LAN (see the module docstring), and how
        many peers are on their way: connecting or in their handshake, for ``_PENDING_FOR`` s at
        most each (an address that does not answer is dialled again and again)."""
        setter = getattr(self._broker, "set_lan_hosts", None)
        if setter is None:
            return
        hosts: list[str] = []
        peers = pending = told = 0
        connecting: dict[tuple[str, int], float] = {}
        for p in self.handle.get_peer_info():
            if p.flags & lt.peer_info.connecting or p.flags & lt.peer_info.handshake:
                key = (str(p.ip[0]), int(p.ip[1]))
                since = connecting[key] = self._connecting.get(key, now)
                pending += now - since < _PENDING_FOR
                continue
            peers += 1
            told += p.num_pieces > 0
            pid = bytes(p.pid.to_bytes()).decode("latin-1")
            if pid.startswith(_UPLINK_ID) and not p.flags & lt.peer_info.seed:
                hosts.append(pid)
        self._connecting = connecting
        self._peers_seen = (peers, len(connecting), told)
        share = (tuple(sorted(hosts)), peers, pending)
        if share != self._share:
            self._share = share
            setter(self.name, self.session.peer_id, share[0], peers, pending)

    def _retire(self, broker: PieceBroker, reason: str) -> None:
        self._dropped = True
        if not broker.has_mirrors:
            raise NoSourceError(reason, hint="check the torrent or magnet link, or add mirrors")
        broker.ban(self.name, reason)
        broker.emit(SourceDropped(self.name, reason))

    # -- alerts --------------------------------------------------------------------------------
    def _on_alert(self, broker: PieceBroker, a: Any) -> None:
        if isinstance(a, lt.block_finished_alert):
            if self.trusting:
                t, addr = int(a.piece_index), str(a.ip[0])
                i = self.map.from_torrent.get(t) if self.map else None
                if i is not None and not self.manifest.pieces[i].sha256:
                    # [registry pulls, H5] kept for ``blame``; some blocks' alerts come after the
                    # piece's (libtorrent checks nothing: the piece is done when its last block is)
                    with self._blame_lock:
                        self._sent_by[i] = self._sent_by.get(i, frozenset()) | {addr}
                else:
                    self._senders.setdefault(t, set()).add(addr)
        elif isinstance(a, lt.piece_finished_alert):
            t = int(a.piece_index)
            if t < len(self._have):
                self._have[t] = 1
            if t in self._injecting:
                self._injecting.discard(t)
                self._tainted.discard(t)
                self._senders.pop(t, None)
            elif self.trusting and t not in self._unchecked:
                self._unchecked.add(t)  # from peers, and libtorrent checked nothing: we do
                self._to_check.append(t)
        elif isinstance(a, lt.read_piece_alert):
            self._on_read(broker, a)
        elif isinstance(a, lt.hash_failed_alert):
            t = int(a.piece_index)
            if t in self._injecting:
                # Bytes the manifest verified fail the torrent's hash: the torrent is not this
                # model's (twice, not once: a peer's blocks of the same piece may have mixed in).
                self._injecting.discard(t)
                self._inject_failures += 1
                if self._inject_failures >= 2:
                    why = f"torrent piece {t} does not match the manifest's verified bytes"
                    if self.own and not self.trusting:  # made from the manifest's sha1: they are wrong
                        why += " (the manifest's sha1 piece hashes are wrong; its SHA-256s are not)"
                    self._retire(broker, why)
                return
            i = self.map.from_torrent.get(t) if self.map else None
            piece = self.manifest.pieces[i] if i is not None else None
            broker.emit(
                PieceRejected(
                    self.name,
                    i if i is not None else -1,
                    piece.path if piece else "",
                    f"torrent piece {t} from the swarm failed its hash check; fetching it again",
                )
            )
        elif isinstance(a, lt.peer_ban_alert):
            self.stats.banned_peers += 1
            peer = endpoint_text(getattr(a, "endpoint", None))
            why = f"banned peer {peer}: it sent data that failed the hash check"
            broker.emit(SourceTrouble(self.name, why, None))
        elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            broker.emit(SourceTrouble(self.name, f"libtorrent: {a.message()}", None))
            if isinstance(a, lt.file_error_alert) and not self._dropped:
                self._retire(broker, f"libtorrent cannot use its storage: {a.message()}")
        elif isinstance(a, lt.save_resume_data_alert) and self._area is not None:
            write_resume(self._area, a)

    def _check(self, broker: PieceBroker) -> None:
        """Read back pieces libtorrent finished from peers (the manifest's own swarm) to check them."""
        while self._to_check and len(self._checking) < _MAX_CHECKING:
            t = self._to_check.pop(0)
            if t in self._unchecked and t not in self._checking:
                self._checking.add(t)
                self.handle.read_piece(t)

    def _checked(self, broker: PieceBroker, t: int, i: int, buf: bytes) -> bool:
        """Whether torrent piece ``t`` (manifest piece ``i``) may be used; handles a bad one."""
        self._checking.discard(t)
        if t not in self._unchecked:
            return t not in self._tainted
        self._unchecked.discard(t)
        piece = self.manifest.pieces[i]
        if not piece.sha256:
            # [registry pulls, H5] No piece hash to check it by (a file with a whole-file SHA-256
            # only): accepted, its file's digest decides; who sent it is kept for ``blame``.
            return True
        if hashlib.sha256(buf[: piece.length]).hexdigest() == piece.sha256:
            self._senders.pop(t, None)
            return True
        senders = self._senders.pop(t, set())
        self._tainted.add(t)
        self._have[t] = 0
        self._bait_none_at = None  # a piece to bait with again
        self._peer_have[i] = 0
        who = ", ".join(sorted(senders)) or "an unknown peer"
        why = f"piece {i} from {who} does not match the manifest"
        broker.emit(PieceRejected(self.name, i, piece.path, why))
        for addr in senders:
            self._strikes[addr] = self._strikes.get(addr, 0) + (_BAN_STRIKES if len(senders) == 1 else 1)
            if self._strikes[addr] >= _BAN_STRIKES and self.session.ban(addr):
                self.stats.banned_peers += 1
                why = f"banned peer {addr}: it sent data that does not match the manifest"
                broker.emit(SourceTrouble(self.name, why, None))
        slot = self._owner.get(i)
        if slot is not None:
            self._drop(broker, slot)  # the rest of its span goes back; this piece to a mirror
        return False

    # -- [registry pulls, H5] pieces without piece hashes: blamed after their file failed -----
    def blame(self, bad: list[int]) -> list[int]:
        """Pieces ``bad`` (no piece hashes) came from this swarm and were proven wrong (their file
        failed its digest; fetched again elsewhere they differ and the file then matched). Ban the
        addresses that sent them (one that sent a bad piece alone at once, one among several
        senders at its second strike) and return every piece the banned addresses sent, to be
        fetched again. Thread-safe (the engine's repair calls it); the bans and the overwriting of
        libtorrent's bad copies happen in the run thread."""
        banned: set[str] = set()
        with self._blame_lock:
            for i in bad:
                senders = self._sent_by.get(i, frozenset())
                for addr in senders:
                    self._strikes[addr] = self._strikes.get(addr, 0) + (
                        _BAN_STRIKES if len(senders) == 1 else 1
                    )
                    if self._strikes[addr] >= _BAN_STRIKES:
                        banned.add(addr)
            again = sorted(i for i, who in self._sent_by.items() if who & banned and i not in bad)
        self._blamed.put((list(bad) + again, sorted(banned)))
        return again

    def suspect(self, pieces: list[int]) -> None:
        """Pieces ``pieces`` (no piece hashes) this swarm delivered are fetched again elsewhere
        to be compared (their file failed its digest): nobody gets them from us meanwhile, and
        the scheduler does not count on our peers having them (a mirror must take them)."""
        self._blamed.put((list(pieces), []))

    def _take_blame(self, broker: PieceBroker) -> None:
        assert self.map is not None
        while True:
            try:
                pieces, banned = self._blamed.get_nowait()
            except queue.Empty:
                return
            for addr in banned:
                if self.session.ban(addr):
                    self.stats.banned_peers += 1
                    why = f"banned peer {addr}: it sent pieces that failed their file's SHA-256"
                    broker.emit(SourceTrouble(self.name, why, None))
            for i in pieces:
                t = self.map.to_torrent[i]
                if t < 0:
                    continue
                # libtorrent's copy is bad: nobody gets it from us, and the good bytes (fetched
                # again) overwrite it (``_feed``), also when they were verified before this.
                self._tainted.add(t)
                if t < len(self._have):  # (empty until the swarm is ready)
                    self._have[t] = 0
                    self._bait_none_at = None  # a piece to bait with again
                if i < len(self._peer_have):
                    self._peer_have[i] = 0
                if broker.is_verified(i):
                    self._pending.put((i, None))

    def _on_read(self, broker: PieceBroker, a: Any) -> None:
        assert self.map is not None
        i = self.map.from_torrent.get(int(a.piece))
        if i is None:
            return
        self._reading.discard(i)
        if a.error.value():
            self._checking.discard(int(a.piece))
        elif self.trusting and not self._checked(broker, int(a.piece), i, a.buffer):
            return
        if a.error.value():
            broker.emit(
                SourceTrouble(
                    self.name, f"cannot read piece {i} back from libtorrent: {a.error.message()}", None
                )
            )
            self._have[int(a.piece)] = 0
            self._bait_none_at = None  # a piece to bait with again
            return
        slot = self._owner.get(i)
        if slot is None or slot.a.next_piece != i or not broker.wanted(slot.a):
            return
        self._deliver(broker, slot, i, a.buffer)

    def _deliver(self, broker: PieceBroker, slot: _Slot, i: int, buf: bytes) -> None:
        piece = self.manifest.pieces[i]
        try:
            go_on = broker.deliver(slot.a, piece, bytes(buf[: piece.length]), self.name)
        except PieceMismatch as exc:
            broker.emit(PieceRejected(self.name, exc.piece, exc.path, str(exc)))
            # libtorrent's copy passed the torrent's hash, not the manifest's (a torrent, or a
            # manifest's sha1, that names other bytes): as a tainted piece, nobody gets it from us,
            # the scheduler counts no peer on it (a mirror fetches it; else the swarm would be
            # given it again and again), and the verified bytes overwrite it.
            assert self.map is not None
            t = self.map.to_torrent[i]
            self._tainted.add(t)
            self._have[t] = 0
            self._bait_none_at = None  # a piece to bait with again
            self._peer_have[i] = 0
            self._drop(broker, slot, exc)
            return
        self._unown(slot, i)
        if not go_on:
            self._drop(broker, slot)
            return
        slot.seen = (slot.a.next_piece, slot.a.end)  # priorities shift with the head: see _review
        for k, j in enumerate(range(slot.a.next_piece, min(slot.a.end, slot.a.next_piece + 7))):
            self._own(slot, j, max(1, 7 - k))
        self._pull_head(slot, broker.clock.now())

    def _pull_head(self, slot: _Slot, now: float) -> None:
        """Ask libtorrent for the head piece of ``slot`` if it has it already."""
        assert self.map is not None
        i = slot.a.next_piece
        if i >= slot.a.end or i in self._reading:
            return
        if slot.head != i:
            slot.head, slot.head_since = i, now
        t = self.map.to_torrent[i]
        if t >= 0 and self._have[t]:
            self._reading.add(i)
            self.handle.read_piece(t)

    # -- assignments ---------------------------------------------------------------------------
    def _own(self, slot: _Slot, i: int, prio: int) -> None:
        assert self.map is not None
        t = self.map.to_torrent[i]
        slot.owned.add(i)
        self._owner[i] = slot
        if t >= 0 and self._prio[t] != prio:
            self._prio[t] = prio
            self._prio_changed.add(t)

    def _unown(self, slot: _Slot, i: int) -> None:
        assert self.map is not None
        slot.owned.discard(i)
        if self._owner.get(i) is slot:
            del self._owner[i]
            t = self.map.to_torrent[i]
            if t >= 0 and self._prio[t]:
                self._prio[t] = 0
                self._prio_changed.add(t)

    def _drop(self, broker: PieceBroker, slot: _Slot, error: BaseException | None = None) -> None:
        for i in list(slot.owned):
            self._unown(slot, i)
        if self._slots.pop(slot.a.id, None) is not None:
            broker.release(slot.a, error)

    def _review(self, broker: PieceBroker, now: float) -> None:
        """Follow what the scheduler did to our slots: cut short, lost the head, finished."""
        assert self.map is not None
        avail: list[int] | None = None
        for slot in list(self._slots.values()):
            a = slot.a
            if not broker.wanted(a):
                self._drop(broker, slot)
                continue
            if slot.seen != (a.next_piece, a.end):
                slot.seen = (a.next_piece, a.end)
                live = range(a.next_piece, a.end)
                for i in [i for i in slot.owned if i not in live]:
                    self._unown(slot, i)  # cut short: another source took the far end
                for k, i in enumerate(live):
                    self._own(slot, i, max(1, 7 - k))
            self._pull_head(slot, now)
            stalled = now - slot.head_since > _STALL and slot.head not in self._reading
            if broker.has_mirrors and stalled:
                # No peer has had the head piece for a while (the peers that had it left): give
                # the span back to the mirrors rather than wait for the tail race.
                if avail is None:
                    avail = list(self.handle.piece_availability())
                t = self.map.to_torrent[slot.head]
                if t >= 0 and t < len(avail) and avail[t] <= 0:
                    self._drop(broker, slot)
                    self._cooldown = self._stalled_until = now + _STALL

    def _want_more(self) -> bool:
        if len(self._slots) >= self.info.max_connections:
            return False
        if self._disk_low and self._broker is not None and self._broker.has_mirrors:
            return False  # nothing more into libtorrent's copy: the mirrors fetch it
        if self.handle.status().num_peers == 0:
            # One slot even so: a torrent with every piece at priority 0 is "finished", and a
            # finished torrent does not keep connections to seeds. More only once peers are there.
            return not self._slots
        held = sum(len(s.owned) for s in self._slots.values()) * self.manifest.piece_size
        return held < _TARGET_BYTES

    def _acquire(self, broker: PieceBroker, now: float) -> bool:
        """Take work while there is room. False: the scheduler has nothing more for the swarm."""
        assert self.map is not None
        while now >= self._cooldown and self._want_more():
            got = broker.acquire(self.name)
            if got is None:
                return bool(self._slots)
            if isinstance(got, float):
                # From now, not from the turn's start: the turn may have taken a while since (a
                # link, a disk check), and the wait counts from this answer (the broker's rule).
                self._cooldown = broker.clock.now() + min(got, 1.0)
                self._view_at_wait = int.from_bytes(self._peer_have, "little")
                break
            if got.file_index in self.map.missing_files:
                path = self.manifest.files[got.file_index].path
                broker.release(got, SourceNotFound(f"{path} is not in the torrent", source=self.name))
                continue
            slot = _Slot(got, head_since=now, seen=(got.next_piece, got.end))
            self._slots[got.id] = slot
            for k, i in enumerate(range(got.next_piece, got.end)):
                self._own(slot, i, max(1, 7 - k))
            self._pull_head(slot, now)
        return True

    def _bait(self, broker: PieceBroker) -> None:
        """Keep the torrent wanting one piece while the swarm holds none.

        A torrent that wants nothing is "finished" and tells peers it is upload-only, and seeds
        then close the connection (libtorrent's ``close_redundant_connections``, on in most
        clients): we would never learn which pieces they have. So one piece the store lacks keeps
        priority 1. If libtorrent fetches it, nothing is lost: when the scheduler gives the swarm
        that piece it is delivered at once, and if a mirror got it first it cost LAN bytes only.
        """
        assert self.map is not None
        if broker.finished() or (self._disk_low and broker.has_mirrors):
            return
        wanting = any(
            self.map.to_torrent[i] >= 0 and not self._have[self.map.to_torrent[i]]
            for slot in self._slots.values()
            for i in slot.owned
        )
        i = self._bait_piece
        if i >= 0 and (wanting or self._have[self.map.to_torrent[i]] or broker.is_verified(i)):
            t = self.map.to_torrent[i]
            if i not in self._owner and self._prio[t]:
                self._prio[t] = 0
                self._prio_changed.add(t)
            self._bait_piece = i = -1
        if wanting:
            return
        if i < 0:
            now = broker.clock.now()
            if self._bait_none_at is not None and now - self._bait_none_at < _BAIT_RESCAN:
                return  # none last time: none until libtorrent loses a piece (or a while passed)
            i = self._bait_search(broker)
            self._bait_none_at = now if i < 0 else None
            if i >= 0:
                self._bait_piece = self._bait_from = i
        if i >= 0 and not self._prio[self.map.to_torrent[i]]:
            self._prio[self.map.to_torrent[i]] = 1
            self._prio_changed.add(self.map.to_torrent[i])

    def _bait_search(self, broker: PieceBroker) -> int:
        """A piece for ``_bait``: in the torrent, not in libtorrent's copy, not verified, not taken
        by a slot; from ``_bait_from`` on, round the end; -1 if none.

        Pieces libtorrent has are skipped in C (``bytearray.find`` over each run of
        ``piece_runs``), so a call costs the pieces it looks at that libtorrent lacks, not the
        model's (a loop over every piece took ~0.3 s at 700k pieces, each engine turn, whenever
        nothing qualified: a torrent of only some files, or near a pull's end).
        """
        assert self.map is not None
        if self._runs is None:
            self._runs = piece_runs(self.map.to_torrent)
        have, start = self._have, self._bait_from
        for lo_bound, hi_bound in ((start, self.manifest.num_pieces), (0, start)):
            for first, t0, length in self._runs:
                if t0 < 0 or first + length <= lo_bound or first >= hi_bound:
                    continue
                lo = max(first, lo_bound)
                t, t_end = t0 + lo - first, t0 + min(first + length, hi_bound) - first
                while (t := have.find(0, t, t_end)) >= 0:
                    j = first + t - t0
                    if not broker.is_verified(j) and j not in self._owner:
                        return j
                    t += 1
        return -1

    def _apply_priorities(self) -> None:
        """Send libtorrent the priorities that changed: (piece, priority) pairs, not the whole
        list (27-43 ms a call at 700k pieces, up to 20 calls a second; a few pairs: 0.06 ms)."""
        if self._prio_changed:
            changed, self._prio_changed = self._prio_changed, set()
            if len(changed) * 4 > len(self._prio):
                self.handle.prioritize_pieces(list(self._prio))
            else:
                self.handle.prioritize_pieces([(t, self._prio[t]) for t in sorted(changed)])

    def _check_disk(self, broker: PieceBroker) -> None:
        """Stop or resume the growth of libtorrent's copy by the free space ("The disk")."""
        assert self.map is not None
        area = self._area
        if area is None:
            return
        try:
            usage = shutil.disk_usage(area)
        except OSError:
            return
        if self._reserve < 0:
            self._reserve = disk_reserve(usage.total)
        if self.stats.lowest_free < 0 or usage.free < self.stats.lowest_free:
            self.stats.lowest_free = usage.free
        # Bytes libtorrent was asked for and may not have written yet: pieces handed over, and
        # the pieces the slots fetch that it does not hold.
        owed = len(self._injecting) + sum(
            1 for i in self._owner if (t := self.map.to_torrent[i]) >= 0 and not self._have[t]
        )
        free = usage.free - owed * self.manifest.piece_size
        if not self._disk_low and free < self._reserve:
            self._disk_low = True
            if broker.has_mirrors:
                for slot in list(self._slots.values()):
                    self._drop(broker, slot)
                if self._bait_piece >= 0:
                    t = self.map.to_torrent[self._bait_piece]
                    if self._prio[t]:
                        self._prio[t] = 0
                        self._prio_changed.add(t)
                    self._bait_piece = -1
            why = (
                f"{format_bytes(usage.free)} free on the disk of {area}: libtorrent's copy for LAN "
                f"peers stops growing (they get what it holds; {format_bytes(self._reserve)} stays free)"
            )
            broker.emit(SourceTrouble(self.name, why, None))
        elif self._disk_low and free >= 2 * self._reserve:
            self._disk_low = False
            for i in sorted(self._starved):
                self._pending.put((i, None))  # read back from the store when handed over
            self._starved.clear()

    def _link_files(self) -> None:
        """Share the blocks of verified files libtorrent holds whole ("One copy per finished file")."""
        assert self.map is not None
        while True:
            try:
                fi, path = self._verified_files.get_nowait()
            except queue.Empty:
                break
            self._to_link[fi] = path
        if not self._to_link or self._area is None:
            return
        rng = self.manifest.file_piece_ranges
        for fi, path in list(self._to_link.items()):
            r = rng[fi]
            ts = [self.map.to_torrent[i] for i in (r.start, r.stop - 1)] if len(r) else []
            if not ts or min(ts) < 0 or fi in self.map.missing_files:
                del self._to_link[fi]  # not in the torrent: nothing to share
                continue
            t0, t1 = ts[0], ts[1] + 1
            if self._have.find(0, t0, t1) >= 0 or any(
                t0 <= t < t1 for t in (*self._tainted, *self._unchecked, *self._injecting)
            ):
                continue  # libtorrent may still write into its copy of the file
            del self._to_link[fi]
            copy = self._area / "bt" / self.manifest.files[fi].path
            tmp = copy.with_name(copy.name + ".dsmirror-link")
            try:
                if os.path.samefile(copy, path):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.link(path, tmp)
                os.replace(tmp, copy)
            except OSError:  # another file system, no hard links, gone: the two copies stay
                with contextlib.suppress(OSError):
                    tmp.unlink()
                continue
            self.linked.add(fi)
            self.handle.flush_cache()  # closes its handles: the old copy's blocks are freed

    def _feed(self, broker: PieceBroker) -> None:
        """Hand verified pieces to libtorrent so that peers can have them (while the disk has
        room: only their indices are kept otherwise, the bytes are read again later)."""
        assert self.map is not None
        while len(self._injecting) < _MAX_INJECTING:
            try:
                i, data = self._pending.get_nowait()
            except queue.Empty:
                return
            if self._disk_low:
                self._starved.add(i)
                continue
            t = self.map.to_torrent[i]
            if t < 0 or (self._have[t] and t not in self._tainted) or t in self._injecting:
                continue
            piece = self.manifest.pieces[i]
            if data is None:
                try:
                    data = broker.read_piece(piece)
                except (OSError, KeyError):
                    continue
            pad = self.map.padded[i] - len(data)
            self._injecting.add(t)
            self.stats.injected += 1
            # A tainted piece (bad bytes from a peer in libtorrent's copy) is overwritten.
            flags = lt.torrent_handle.overwrite_existing if t in self._tainted else 0
            self.handle.add_piece(t, data + bytes(pad) if pad else data, flags)
