"""The BitTorrent swarm (libtorrent) as one more source of a pull, and seeding.

How the swarm takes part in a pull
==================================
One scheduler decides which pieces come from which source (``_scheduler``). The swarm asks it for
work like an HTTP connection does (``acquire``), and may hold several assignments at once
("slots"): torrent pieces of the pieces it holds get a libtorrent priority above 0, every other
piece priority 0, so libtorrent never downloads a piece the scheduler gave to a mirror. The torrent
is added with ``default_dont_download``, so even a magnet's pieces start at priority 0 when its
metadata arrives. ``set_piece_deadline`` is never used: it raises a priority-0 piece to 7.

Which pieces the swarm should ask for depends on what its peers have: the swarm keeps a map of the
pieces some connected peer (or libtorrent's own copy) has, refreshed every 0.25 s, and hands it to
the scheduler (``Scheduler.set_peer_pieces``) so that the swarm is given
only those and mirrors the others, which is what lets a LAN fetch each piece from outside about
once (``scripts/bench_lan.py``). When the peers that had a piece leave, the swarm gives back, after
``_STALL`` seconds, a span whose first piece no peer has any more. To learn what peers
have, the torrent must not look finished while the swarm holds no work (seeds drop upload-only
peers): one missing piece is then kept at priority 1 (``_bait``).

When libtorrent finishes a piece (``piece_finished_alert``: its own SHA-1 / SHA-256 Merkle check
passed), the swarm reads it back (``read_piece``: through libtorrent's disk layer, which also sees
blocks not yet written out) and hands it to ``ctx.deliver``, which checks it against the
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

Where libtorrent keeps its data during a pull, and its resume data: ``dsmirror._fetch.swarm.resume``.
Session settings and how sessions are closed safely: ``dsmirror._fetch.swarm.session``.

Seeding
=======
``seed`` adds each torrent in seed mode over the files where they are (nothing is copied):
libtorrent does not re-check them at start but checks each piece the first time a peer asks for
it, so a file damaged on disk is never served. After a pull with ``--seed`` the model's torrent is
added the same way over the installed files. A successful pull with a swarm saves the torrent as
``DEST/.dsmirror/torrents/<manifest sha256>.torrent``, which is what ``dsmirror seed DEST`` finds.

Models in the Ollama store and the Hugging Face cache are seeded where they are too
(``store_seed_target``): libtorrent needs one ``save_path``, and ``renamed_files`` maps each torrent
file to its place below it, so an Ollama model (``$OLLAMA_MODELS``: its manifest and
``blobs/sha256-<hex>``, the same paths in the torrent) and a Hugging Face snapshot (the repo folder:
torrent paths are the repo's paths, read from ``blobs/<etag>``) are shared without a copy.

Torrents no manifest describes
==============================
A magnet link or .torrent that no catalog manifest names is pulled from peers alone by a
:class:`SwarmOnlyPull` (instead of the engine): the torrent's own hashes check the bytes, files are
installed when all are in, and a manifest is made from them (see the class for the layout).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from dsmirror._core.errors import (
    DiskFull,
    DsmirrorError,
    InputError,
    IntegrityError,
    Interrupted,
    ManifestError,
    NoSourceError,
    PieceMismatch,
    SourceNotFound,
    StorageError,
    UsageError,
)
from dsmirror._core.events import (
    Event,
    PieceRejected,
    Progress,
    PullFinished,
    PullStarted,
    SourceDropped,
    SourceProgress,
    SourceTrouble,
)
from dsmirror._core.fsutil import atomic_write_bytes, fsync_dir, safe_join, storage_errors
from dsmirror._fetch.swarm.config import (
    PeerStatus,
    SeedingStarted,
    SeedingStopped,
    SeedStatus,
    SwarmConfig,
    TorrentStatus,
    parse_endpoint,
)
from dsmirror._fetch.swarm.resume import (
    RESUME_EVERY,
    flush_writes,
    read_resume,
    save_resume,
    write_resume,
)
from dsmirror._fetch.swarm.session import REDIAL, SwarmSession, endpoint_text
from dsmirror._fetch.swarm.torrent import (
    PieceMap,
    Torrent,
    check_torrent,
    create_torrent,
    file_aligned,
    load_torrent,
    magnet_for,
    torrent_from_info,
)
from dsmirror._formats.manifest import (
    DEFAULT_PIECE_SIZE,
    MAX_PIECE_SIZE,
    MIN_PIECE_SIZE,
    FileEntry,
    Manifest,
    Piece,
    hash_file_pieces,
    load_manifest,
    parse_manifest,
)
from dsmirror._formats.private import PrivateArea
from dsmirror._journal.store import SPACE_MARGIN, Store, lock_area
from dsmirror._schedule.info import SourceInfo

if TYPE_CHECKING:
    from dsmirror._core.settings import Settings
    from dsmirror._fetch.engine import _Engine
    from dsmirror._install.store_model import StoreFile, StoreModel
    from dsmirror._schedule.scheduler import Assignment

__all__ = [
    "PeerStatus",
    "SeedStatus",
    "SeedTarget",
    "SeedingStarted",
    "SeedingStopped",
    "SwarmConfig",
    "SwarmOnlyPull",
    "SwarmSession",
    "SwarmSource",
    "SwarmStats",
    "TorrentStatus",
    "parse_endpoint",
    "piece_size_for",
    "seed",
    "seed_after_pull",
    "seed_targets_in",
    "store_seed_target",
]

_MAX_INJECTING = 16  # pieces handed to libtorrent with add_piece and not yet checked by it
_TARGET_BYTES = 64 << 20  # pieces held in slots: enough to keep a LAN link busy between loop turns
_STALL = 5.0  # a slot whose head no peer has for this long is given back (when mirrors exist)
_PEER_SCAN = 0.25  # seconds between refreshes of which pieces the connected peers have


# -- the swarm as a source ---------------------------------------------------------------------
@dataclass
class SwarmStats:
    """What the swarm did during a pull (libtorrent's counters, read when the pull ends)."""

    downloaded: int = 0  # payload bytes received from peers
    uploaded: int = 0  # payload bytes sent to peers
    redundant: int = 0  # received twice (libtorrent's end game)
    failed: int = 0  # received and failed the hash check
    injected: int = 0  # pieces verified from other sources and handed to libtorrent for peers
    banned_peers: int = 0


@dataclass
class _Slot:
    a: Assignment
    owned: set[int] = field(default_factory=set)  # manifest pieces with priority > 0 for this slot
    head_since: float = 0.0
    head: int = -1
    seen: tuple[int, int] = (-1, -1)  # (next_piece, end) when its priorities were last set


class SwarmSource:
    """A BitTorrent swarm of a manifest's pieces; implements the engine's ``SwarmSource`` protocol.

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
        self.session = session or SwarmSession(config)
        self.handle: Any = None
        self.completed = False  # every piece of the pull verified (set when the pull's run ends)
        self.stats = SwarmStats()
        self._pending: queue.SimpleQueue[tuple[int, bytes | None]] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()  # close() was called: the run loop ends
        self._idle = threading.Event()  # run() is not running (close() waits for it)
        self._idle.set()
        self._store: Store | None = None
        # state of the run thread
        self._slots: dict[int, _Slot] = {}
        self._owner: dict[int, _Slot] = {}
        self._reading: set[int] = set()
        self._injecting: set[int] = set()
        self._have = bytearray()
        self._prio = bytearray()
        self._prio_dirty = False
        self._cooldown = 0.0
        self._next_dial = 0.0
        self._next_resume = 0.0
        self._ready = False
        self._dropped = False
        self._peer_have = bytearray()  # manifest piece -> some connected peer has it
        self._peer_view = False  # the scheduler reads _peer_have (Scheduler.set_peer_pieces)
        self._next_peer_scan = 0.0
        self._bait_piece = -1  # manifest piece kept at priority 1 while no slot wants one
        self._inject_failures = 0
        self._bait_from = 0

    @property
    def name(self) -> str:
        return self.info.name

    # -- engine protocol -----------------------------------------------------------------------
    def piece_available(self, piece: Piece, data: bytes | None) -> None:
        self._pending.put((piece.index, data))

    def run(self, ctx: _Engine) -> None:
        store = ctx.store
        with self._lock:
            if self._closed:
                return
            self._idle.clear()
        try:
            with self.session.using():
                self._store = store
                self.handle = self._add(store)
                try:
                    self._loop(ctx)
                finally:
                    for slot in list(self._slots.values()):
                        self._drop(ctx, slot)
                    self.completed = store.complete()
        finally:
            self._idle.set()

    def close(self, timeout: float = 30.0) -> None:
        """End of the pull: keep libtorrent's copy resumable, or delete it once the pull is done.

        Waits (up to ``timeout`` seconds) for ``run`` to end first: two threads must not pop the
        session's alerts at once, nor may the session go while the run thread calls into it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if not self._idle.wait(timeout):
            self.session.close()  # the run thread is stuck: it destroys the session when it leaves
            return
        store, handle = self._store, self.handle
        if handle is not None and not self.session.stopping:
            with self.session.using():
                self._finish(store, handle)
        if not (self.config.seed and self.completed):
            self.session.close()

    def _finish(self, store: Store | None, handle: Any) -> None:
        if handle.is_valid():
            st = handle.status()
            self.stats.downloaded = int(st.total_payload_download)
            self.stats.uploaded = int(st.total_payload_upload)
            self.stats.redundant = int(st.total_redundant_bytes)
            self.stats.failed = int(st.total_failed_bytes)
        if store is not None:
            if not self.completed and handle.is_valid() and handle.status().has_metadata:
                save_resume(self.session, self.handle, store.area, wait=True)
            self.session.remove(handle)
            if self.completed:
                shutil.rmtree(store.area / "bt", ignore_errors=True)
                with contextlib.suppress(OSError):
                    (store.area / "bt.resume").unlink()

    # -- adding the torrent --------------------------------------------------------------------
    def _add(self, store: Store) -> Any:
        bt = store.area / "bt"
        atp = read_resume(store.area)
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
            atp.file_priorities = []
        return self.session.add_torrent(atp)

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self, ctx: _Engine) -> None:
        # Until the engine stops (not merely until every piece is verified): a file that fails its
        # whole-file digest reopens pieces, and peers keep getting pieces until the end.
        while not (ctx.stop.is_set() or self._dropped or self._stop.is_set() or self.session.stopping):
            alerts = self.session.alerts(0.05)
            now = time.monotonic()
            for a in alerts:
                self._on_alert(ctx, a)
            if self._dropped:
                return
            if not self._ready and not self._become_ready(ctx):
                if self._dropped:
                    return
                self._dial(now)
                continue
            self._scan_peers(now)
            self._review(ctx, now)
            self._feed(ctx)
            if not self._acquire(ctx, now):
                return
            self._bait(ctx)
            self._apply_priorities()
            self._dial(now)
            if now >= self._next_resume:
                self._next_resume = now + RESUME_EVERY
                save_resume(self.session, self.handle, ctx.store.area, wait=False)

    def _dial(self, now: float) -> None:
        if now >= self._next_dial:
            self._next_dial = now + REDIAL
            self.session.dial(self.handle)

    def _become_ready(self, ctx: _Engine) -> bool:
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
                self._retire(ctx, f"the swarm's torrent does not match the manifest: {exc}")
                return False
            self.torrent = got
            for idx, path in got.renamed_files().items():
                h.rename_file(idx, path)
        if st.state in (
            lt.torrent_status.states.checking_files,
            lt.torrent_status.states.checking_resume_data,
        ):
            return False
        assert self.torrent is not None
        n = self.torrent.num_pieces
        self._prio = bytearray(n)
        self._have = bytearray(1 if h.have_piece(t) else 0 for t in range(n))
        h.prioritize_pieces([0] * n)
        # Pieces the store verified (earlier runs, other sources) that libtorrent lacks: serve them.
        for i in range(self.manifest.num_pieces):
            t = self.map.to_torrent[i]
            if t >= 0 and not self._have[t] and ctx.store.is_done(i):
                self._pending.put((i, None))
        self._peer_have = bytearray(self.manifest.num_pieces)
        ctx.sched.set_peer_pieces(self.name, self._peer_have)
        self._peer_view = True
        self._ready = True
        self._next_resume = time.monotonic() + RESUME_EVERY
        return True

    def _scan_peers(self, now: float) -> None:
        """Refresh which pieces some connected peer has (the scheduler reads it, see module doc)."""
        if not self._peer_view or now < self._next_peer_scan:
            return
        self._next_peer_scan = now + _PEER_SCAN
        assert self.map is not None
        avail = self.handle.piece_availability()
        if len(avail) < len(self._have):
            return  # no piece picker: libtorrent has every piece (or none yet)
        have, mine = self._peer_have, self._have
        for i, t in enumerate(self.map.to_torrent):
            # libtorrent's own copy counts too (a bait piece, a piece finished after a cut).
            v = 1 if t >= 0 and (avail[t] > 0 or mine[t]) else 0
            if have[i] != v:
                have[i] = v

    def _retire(self, ctx: _Engine, reason: str) -> None:
        self._dropped = True
        if not ctx.sources:
            raise NoSourceError(reason, hint="check the torrent or magnet link, or add mirrors")
        ctx.sched.ban(self.name, reason)
        ctx.emit(SourceDropped(self.name, reason))

    # -- alerts --------------------------------------------------------------------------------
    def _on_alert(self, ctx: _Engine, a: Any) -> None:
        if isinstance(a, lt.piece_finished_alert):
            t = int(a.piece_index)
            if t < len(self._have):
                self._have[t] = 1
            self._injecting.discard(t)
        elif isinstance(a, lt.read_piece_alert):
            self._on_read(ctx, a)
        elif isinstance(a, lt.hash_failed_alert):
            t = int(a.piece_index)
            if t in self._injecting:
                # Bytes the manifest verified fail the torrent's hash: the torrent is not this
                # model's (twice, not once: a peer's blocks of the same piece may have mixed in).
                self._injecting.discard(t)
                self._inject_failures += 1
                if self._inject_failures >= 2:
                    self._retire(ctx, f"torrent piece {t} does not match the manifest's verified bytes")
                return
            i = self.map.from_torrent.get(t) if self.map else None
            piece = self.manifest.pieces[i] if i is not None else None
            ctx.emit(
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
            ctx.emit(SourceTrouble(self.name, why, None))
        elif isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            ctx.emit(SourceTrouble(self.name, f"libtorrent: {a.message()}", None))
            if isinstance(a, lt.file_error_alert):
                self._retire(ctx, f"libtorrent cannot use its storage: {a.message()}")
        elif isinstance(a, lt.save_resume_data_alert) and self._store is not None:
            write_resume(self._store.area, a)

    def _on_read(self, ctx: _Engine, a: Any) -> None:
        assert self.map is not None
        i = self.map.from_torrent.get(int(a.piece))
        if i is None:
            return
        self._reading.discard(i)
        if a.error.value():
            ctx.emit(
                SourceTrouble(
                    self.name, f"cannot read piece {i} back from libtorrent: {a.error.message()}", None
                )
            )
            self._have[int(a.piece)] = 0
            return
        slot = self._owner.get(i)
        if slot is None or slot.a.next_piece != i or not ctx.sched.wanted(slot.a):
            return
        self._deliver(ctx, slot, i, a.buffer)

    def _deliver(self, ctx: _Engine, slot: _Slot, i: int, buf: bytes) -> None:
        piece = self.manifest.pieces[i]
        try:
            go_on = ctx.deliver(slot.a, piece, bytes(buf[: piece.length]), self.name)
        except PieceMismatch as exc:
            ctx.emit(PieceRejected(self.name, exc.piece, exc.path, str(exc)))
            self._drop(ctx, slot, exc)
            return
        self._unown(slot, i)
        if not go_on:
            self._drop(ctx, slot)
            return
        slot.seen = (slot.a.next_piece, slot.a.end)  # priorities shift with the head: see _review
        for k, j in enumerate(range(slot.a.next_piece, min(slot.a.end, slot.a.next_piece + 7))):
            self._own(slot, j, max(1, 7 - k))
        self._pull_head(slot)

    def _pull_head(self, slot: _Slot) -> None:
        """Ask libtorrent for the head piece of ``slot`` if it has it already."""
        assert self.map is not None
        i = slot.a.next_piece
        if i >= slot.a.end or i in self._reading:
            return
        if slot.head != i:
            slot.head, slot.head_since = i, time.monotonic()
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
            self._prio_dirty = True

    def _unown(self, slot: _Slot, i: int) -> None:
        assert self.map is not None
        slot.owned.discard(i)
        if self._owner.get(i) is slot:
            del self._owner[i]
            t = self.map.to_torrent[i]
            if t >= 0 and self._prio[t]:
                self._prio[t] = 0
                self._prio_dirty = True

    def _drop(self, ctx: _Engine, slot: _Slot, error: BaseException | None = None) -> None:
        for i in list(slot.owned):
            self._unown(slot, i)
        if self._slots.pop(slot.a.id, None) is not None:
            ctx.sched.release(slot.a, error)

    def _review(self, ctx: _Engine, now: float) -> None:
        """Follow what the scheduler did to our slots: cut short, lost the head, finished."""
        assert self.map is not None
        avail: list[int] | None = None
        for slot in list(self._slots.values()):
            a = slot.a
            if not ctx.sched.wanted(a):
                self._drop(ctx, slot)
                continue
            if slot.seen != (a.next_piece, a.end):
                slot.seen = (a.next_piece, a.end)
                live = range(a.next_piece, a.end)
                for i in [i for i in slot.owned if i not in live]:
                    self._unown(slot, i)  # cut short: another source took the far end
                for k, i in enumerate(live):
                    self._own(slot, i, max(1, 7 - k))
            self._pull_head(slot)
            stalled = now - slot.head_since > _STALL and slot.head not in self._reading
            if ctx.sources and stalled:
                # No peer has had the head piece for a while (the peers that had it left): give
                # the span back to the mirrors rather than wait for the tail race.
                if avail is None:
                    avail = list(self.handle.piece_availability())
                t = self.map.to_torrent[slot.head]
                if t >= 0 and t < len(avail) and avail[t] <= 0:
                    self._drop(ctx, slot)
                    self._cooldown = now + _STALL

    def _want_more(self) -> bool:
        if len(self._slots) >= self.info.max_connections:
            return False
        if self.handle.status().num_peers == 0:
            # One slot even so: a torrent with every piece at priority 0 is "finished", and a
            # finished torrent does not keep connections to seeds. More only once peers are there.
            return not self._slots
        held = sum(len(s.owned) for s in self._slots.values()) * self.manifest.piece_size
        return held < _TARGET_BYTES

    def _acquire(self, ctx: _Engine, now: float) -> bool:
        """Take work while there is room. False: the scheduler has nothing more for the swarm."""
        assert self.map is not None
        while now >= self._cooldown and self._want_more():
            got = ctx.sched.acquire(self.name)
            if got is None:
                return bool(self._slots)
            if isinstance(got, float):
                self._cooldown = now + min(got, 1.0)
                break
            if got.file_index in self.map.missing_files:
                path = self.manifest.files[got.file_index].path
                ctx.sched.release(got, SourceNotFound(f"{path} is not in the torrent", source=self.name))
                continue
            slot = _Slot(got, head_since=now, seen=(got.next_piece, got.end))
            self._slots[got.id] = slot
            for k, i in enumerate(range(got.next_piece, got.end)):
                self._own(slot, i, max(1, 7 - k))
            self._pull_head(slot)
        return True

    def _bait(self, ctx: _Engine) -> None:
        """Keep the torrent wanting one piece while the swarm holds none.

        A torrent that wants nothing is "finished" and tells peers it is upload-only, and seeds
        then close the connection (libtorrent's ``close_redundant_connections``, on in most
        clients): we would never learn which pieces they have. So one piece the store lacks keeps
        priority 1. If libtorrent fetches it, nothing is lost: when the scheduler gives the swarm
        that piece it is delivered at once, and if a mirror got it first it cost LAN bytes only.
        """
        assert self.map is not None
        if ctx.sched.finished():
            return
        wanting = any(
            self.map.to_torrent[i] >= 0 and not self._have[self.map.to_torrent[i]]
            for slot in self._slots.values()
            for i in slot.owned
        )
        i = self._bait_piece
        if i >= 0 and (wanting or self._have[self.map.to_torrent[i]] or ctx.store.is_done(i)):
            t = self.map.to_torrent[i]
            if i not in self._owner and self._prio[t]:
                self._prio[t] = 0
                self._prio_dirty = True
            self._bait_piece = i = -1
        if wanting:
            return
        n = self.manifest.num_pieces
        for k in range(n if i < 0 else 0):
            j = (self._bait_from + k) % n
            tj = self.map.to_torrent[j]
            if tj >= 0 and not self._have[tj] and not ctx.store.is_done(j) and j not in self._owner:
                self._bait_piece = self._bait_from = i = j
                break
        if i >= 0 and not self._prio[self.map.to_torrent[i]]:
            self._prio[self.map.to_torrent[i]] = 1
            self._prio_dirty = True

    def _apply_priorities(self) -> None:
        if self._prio_dirty:
            self._prio_dirty = False
            self.handle.prioritize_pieces(list(self._prio))

    def _feed(self, ctx: _Engine) -> None:
        """Hand verified pieces to libtorrent so that peers can have them."""
        assert self.map is not None
        while len(self._injecting) < _MAX_INJECTING:
            try:
                i, data = self._pending.get_nowait()
            except queue.Empty:
                return
            t = self.map.to_torrent[i]
            if t < 0 or self._have[t] or t in self._injecting:
                continue
            piece = self.manifest.pieces[i]
            if data is None:
                try:
                    data = ctx.store.read_piece(piece)
                except (OSError, KeyError):
                    continue
            pad = self.map.padded[i] - len(data)
            self._injecting.add(t)
            self.stats.injected += 1
            self.handle.add_piece(t, data + bytes(pad) if pad else data, 0)


# -- seeding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedTarget:
    """A torrent to seed from the files where they are: ``folder/<path>`` for each of its files.

    ``disk`` maps a torrent path to another path under ``folder`` (a Hugging Face snapshot file is
    read from its blob); libtorrent's ``renamed_files`` does the mapping, so nothing is copied.
    """

    torrent: Torrent
    folder: Path
    disk: tuple[tuple[str, str], ...] = ()  # (torrent path, path under folder)

    @property
    def name(self) -> str:
        return self.torrent.name

    def disk_path(self, path: str) -> str:
        return dict(self.disk).get(path, path)

    def renames(self) -> dict[int, str]:
        """libtorrent ``renamed_files``: each content file to where it is below ``folder``."""
        return {k: self.disk_path(p) for k, p in self.torrent.renamed_files().items()}


def _check_files(target: SeedTarget) -> None:
    for f in target.torrent.content_files:
        p = target.folder / target.disk_path(f.path)
        try:
            size = p.stat().st_size
        except OSError:
            raise InputError(
                f"{p} is missing: cannot seed {target.name} from {target.folder}",
                hint="seed the folder the model was pulled or installed into (--from DIR)",
            ) from None
        if size != f.size:
            raise InputError(
                f"{p} is {size} bytes, the torrent says {f.size}: cannot seed {target.name}",
                hint="check the folder with dsmirror verify MANIFEST DIR",
            )


def seed(
    targets: Sequence[SeedTarget],
    config: SwarmConfig,
    *,
    session: SwarmSession | None = None,
    stop: threading.Event | None = None,
    interval: float = 1.0,
) -> Iterator[Event]:
    """Seed ``targets`` until ``stop`` is set (or the consumer stops iterating / is interrupted).

    Yields ``SeedingStarted``, then ``SeedStatus`` every ``interval`` seconds, and
    ``SeedingStopped`` when ``stop`` ends it. The session is closed on the way out in every case.
    """
    if not targets:
        raise UsageError(
            "nothing to seed", hint="give a folder pulled by dsmirror, or MANIFEST/TORRENT --from DIR"
        )
    for t in targets:
        _check_files(t)
    ses = session or SwarmSession(config)
    t0 = time.monotonic()
    handles: list[tuple[SeedTarget, Any]] = []
    try:
        with ses.using():
            for t in targets:
                atp = lt.add_torrent_params()
                atp.ti = t.torrent.info()
                atp.save_path = str(t.folder)
                atp.renamed_files = t.renames()
                atp.flags |= lt.torrent_flags.seed_mode
                atp.flags &= ~lt.torrent_flags.default_dont_download
                handles.append((t, ses.add_torrent(atp)))
            yield SeedingStarted(
                tuple(t.name for t in targets), tuple(t.torrent.magnet for t in targets), ses.listen_port
            )
            next_status = 0.0
            next_dial = 0.0
            try:
                # ses.stopping: closed from elsewhere, or Python is exiting (see "Closing sessions")
                while not ses.stopping and (stop is None or not stop.is_set()):
                    ses.alerts(0.1)
                    now = time.monotonic()
                    if now >= next_dial:
                        next_dial = now + REDIAL
                        for _t, h in handles:
                            ses.dial(h)
                    if now >= next_status:
                        next_status = now + interval
                        yield _seed_status(handles)
            except (KeyboardInterrupt, Interrupted):
                pass  # Ctrl-C or SIGTERM (the CLI raises Interrupted from its handler): a clean stop
            yield SeedingStopped(_seed_status(handles).uploaded, time.monotonic() - t0)
    finally:
        ses.close()


def _seed_status(handles: Sequence[tuple[SeedTarget, Any]]) -> SeedStatus:
    torrents = []
    for t, h in handles:
        st = h.status()
        peers = tuple(
            PeerStatus(
                endpoint_text(p.ip),
                str(p.client, "utf-8", "replace") if isinstance(p.client, bytes) else str(p.client),
                float(p.payload_up_speed),
                int(p.total_upload),
                float(p.payload_down_speed),
                float(p.progress),
            )
            for p in h.get_peer_info()
        )
        torrents.append(
            TorrentStatus(
                t.name,
                t.torrent.btih or t.torrent.btmh or "",
                str(st.state),
                float(st.upload_payload_rate),
                int(st.total_payload_upload),
                peers,
            )
        )
    return SeedStatus(
        sum(x.upload_rate for x in torrents), sum(x.uploaded for x in torrents), tuple(torrents)
    )


def seed_targets_in(folder: Path) -> list[SeedTarget]:
    """The torrents a dsmirror pull saved in ``folder`` (``.dsmirror/torrents/*.torrent``)."""
    found = sorted(PrivateArea(folder).torrents_dir.glob("*.torrent"))
    return [SeedTarget(load_torrent(p), folder) for p in found]


def torrent_record_path(dest: Path, manifest: Manifest) -> Path:
    return PrivateArea(dest).torrent(manifest.sha256)


def piece_size_for(total: int) -> int:
    """Piece size of a torrent made for seeding an installed model: about 1024 pieces, 256 KiB-16 MiB.

    Deterministic, so every machine that seeds the same model makes the same torrent (one swarm).
    """
    size = 256 << 10
    while size < 16 << 20 and size * 1024 < total:
        size <<= 1
    return size


def store_seed_target(
    model: StoreModel,
    *,
    format: str = "hybrid",
    cache: Path | None = None,
    on_hashing: Callable[[str], None] | None = None,
) -> SeedTarget:
    """A torrent of a model in the Ollama store or the Hugging Face cache, over its files where they are.

    The torrent's files are the model's (an Ollama model: its manifest and ``blobs/sha256-<hex>``,
    so a copy is an Ollama store again; a Hugging Face snapshot: its repo paths), read from the
    store's own files. The torrent is made once per model and kept in ``cache``; before it is made,
    every file the store does not vouch for (dsmirror's install record) is checked against the
    digest its store name gives, so no torrent is made of damaged bytes. While seeding, libtorrent
    checks each piece against the torrent before it first serves it. ``on_hashing`` is told when
    the slow part (reading every file) starts.
    """
    from dsmirror._verify.digest import hash_local_file

    ps = piece_size_for(sum(f.size for f in model.files))
    entries: list[FileEntry] = []
    unchecked: list[StoreFile] = []
    for f in sorted(model.files, key=lambda f: f.path):
        if len(f.digest) == 64:
            sha = f.digest
            if not f.vouched:
                unchecked.append(f)
        else:  # a small git blob (named by its SHA-1) or a file with no name digest: hash it now
            d = hash_local_file(model.root / f.disk, ps)
            sha = d.sha256
            if f.digest and d.git_sha1 != f.digest:
                raise IntegrityError(f"{model.root / f.disk} does not match its name: not seeding it")
        entries.append(FileEntry(f.path, f.size, sha, ("",) * -(-f.size // ps)))
    manifest = Manifest(model.name, ps, tuple(entries), meta={"ref": model.ref})
    cached = cache / f"{manifest.sha256}-{format}.torrent" if cache is not None else None
    disk = tuple((f.path, f.disk) for f in model.files)
    if cached is not None and cached.is_file():
        with contextlib.suppress(InputError):
            return SeedTarget(load_torrent(cached), model.root, disk)
    if on_hashing is not None:
        on_hashing(f"{model.ref}: checking its files and making its {format} torrent (once) ...")
    for f in unchecked:
        if hash_file_pieces(model.root / f.disk, ps)[1] != f.digest:
            raise IntegrityError(
                f"{model.root / f.disk} does not match its SHA-256 name: not seeding it",
                hint="remove the model and pull it again",
            )
    torrent = create_torrent(
        manifest,
        model.root,
        format=format,
        verify=False,
        disk={f.path: model.root / f.disk for f in model.files},
    )
    if cached is not None:
        with contextlib.suppress(StorageError):
            torrent.write(cached)
    return SeedTarget(torrent, model.root, disk)


# -- pulls of a torrent no manifest describes ----------------------------------------------------
_VERIFIED = lt.torrent_handle.piece_granularity
_CHECKING = (
    lt.torrent_status.states.checking_files,
    lt.torrent_status.states.checking_resume_data,
)


@dataclass(frozen=True)
class SwarmOnlyPull:
    """A pull of a magnet link or .torrent that no manifest describes: from peers alone.

    What checks the bytes is the torrent itself: libtorrent verifies every piece against the
    torrent's hashes (SHA-1 for v1, SHA-256 Merkle trees for v2 and hybrid) and bans peers that
    send bad data. For a magnet, the metadata comes from the peers and is checked against the
    info-hash. On-disk layout while it runs (the store's partial area, keyed by the info-hash)::

        DEST/.dsmirror/partial/bt-<btih or btmh>/
          lock        flock(2)-ed by the running pull (see ``_store.lock_area``)
          torrent     the torrent's metadata once known (a resumed magnet needs no peer for it)
          bt/<name>/<path>...   libtorrent's files, as the torrent names them (pad files never written)
          bt.resume   as for a swarm source: libtorrent's resume data + size/mtime of every bt/ file

    Resume data is saved every minute and when the pull stops unfinished; it is only trusted while
    the files under ``bt/`` are as recorded, otherwise libtorrent re-checks them. When every piece
    is in, each file is hashed (SHA-256 of the file and of each piece) and only then are they all
    renamed into ``DEST/<path>``; then the manifest made from those digests is recorded::

        DEST/.dsmirror/installed/<mid>.manifest.json   the manifest (``<mid>``: its SHA-256)
        DEST/.dsmirror/installed/<mid>.json            install record (path -> size, mtime, inode)
        DEST/.dsmirror/torrents/<mid>.torrent          the torrent (``dsmirror seed DEST``)

    The manifest's pieces are the torrent's when the torrent is file-aligned (v2, hybrid, a v1
    torrent with pad files): same piece size, and the manifest records the info-hashes, so the
    manifest can later be pulled from mirrors and this swarm together. A v1 torrent whose pieces
    span files gets ``DEFAULT_PIECE_SIZE`` pieces and no ``torrent`` field; ``meta.bittorrent``
    says which (``"pieces": "torrent"`` or ``"derived locally"``). Either way every digest was
    computed here from bytes the torrent's hashes verified: the manifest vouches for no more than
    the torrent did. A pull of the same torrent into the same DEST again is a no-op.
    """

    name: str
    dest: Path
    btih: str | None
    btmh: str | None
    torrent: Torrent | None = None
    magnet: str | None = None
    ref: str = ""

    @property
    def area(self) -> Path:
        return PrivateArea(self.dest).swarm_partial(str(self.btih or self.btmh))

    def run(
        self, config: SwarmConfig, *, give_up_after: float, settings: Settings | None = None
    ) -> Iterator[Event]:
        """Fetch, install, record; yields the events of any pull (then seeding with ``config.seed``).

        ``config.download_rate`` is the pull's --max-rate; ``give_up_after``: seconds without news
        from any peer before the pull fails.
        """
        return _SwarmOnlyRun(self, config, give_up_after, settings).run()


class _SwarmOnlyRun:
    def __init__(
        self, job: SwarmOnlyPull, config: SwarmConfig, give_up_after: float, settings: Settings | None
    ) -> None:
        self.job = job
        self.give_up_after = give_up_after
        self.settings = settings
        self.config = config
        self.session: SwarmSession | None = None
        self.handle: Any = None
        self.torrent: Torrent | None = job.torrent
        self.events: list[Event] = []
        self.total = 0  # bytes of the torrent's content files
        self.before = 0  # of them verified when this run started (resume)
        self.verified = 0
        self.redundant = 0
        self.failed = 0
        self.peers = 0
        self.t0 = time.monotonic()

    def run(self) -> Iterator[Event]:
        job = self.job
        done = _installed_torrent(job.dest, {h for h in (job.btih, job.btmh) if h})
        if done is not None:  # pulled into DEST before, and unchanged since: nothing to fetch
            manifest, torrent = done
            self.total = self.before = self.verified = manifest.total_size
            yield PullStarted(
                manifest.name,
                manifest.sha256,
                str(job.dest),
                manifest.total_size,
                self.before,
                torrent.num_pieces,
                torrent.piece_size,
                ("swarm",),
            )
        else:
            manifest, torrent = yield from self._fetch_and_install()
            yield Progress(self.total, self.total, 0.0, 0.0, (self._source(0.0),), self.total)
        fetched = self.total - self.before
        yield PullFinished(
            manifest.name,
            str(job.dest),
            tuple(f.path for f in manifest.files),
            self.total,
            fetched,
            self.before,
            self.redundant,
            self.failed,
            time.monotonic() - self.t0,
            {"swarm": fetched} if fetched else {},
        )
        if self.config.seed:
            yield from seed([SeedTarget(torrent, job.dest)], self.config, session=self.session)

    def _fetch_and_install(self) -> Generator[Event, None, tuple[Manifest, Torrent]]:
        job = self.job
        with storage_errors(job.dest):
            job.area.mkdir(parents=True, exist_ok=True)
        lock = lock_area(job.area, job.dest)
        finished = False
        try:
            self.session = SwarmSession(self.config)
            with self.session.using():
                try:
                    self.handle = self.session.add_torrent(self._params())
                    yield from self._download()
                    installed = self._install()
                    finished = True
                finally:
                    if not finished:
                        self._keep_for_resume()
            return installed
        except KeyboardInterrupt:
            raise Interrupted(
                "interrupted; what peers sent is kept: run the same command to resume"
            ) from None
        finally:
            if self.session is not None and not (finished and self.config.seed):
                self.session.close()
            os.close(lock)
            if finished:
                with contextlib.suppress(OSError):
                    (job.area / "lock").unlink()
                    job.area.rmdir()

    def _keep_for_resume(self) -> None:
        ses, h = self.session, self.handle
        if ses is not None and not ses.closed and h is not None and h.is_valid() and h.status().has_metadata:
            save_resume(ses, h, self.job.area, wait=True)

    # -- fetching ------------------------------------------------------------------------------
    def _params(self) -> Any:
        job = self.job
        atp = read_resume(job.area)
        if atp is None:
            saved = job.area / "torrent"
            if self.torrent is None and saved.is_file():
                with contextlib.suppress(InputError):
                    self.torrent = load_torrent(saved)
            if self.torrent is not None:
                atp = lt.add_torrent_params()
            else:
                assert job.magnet is not None
                atp = lt.parse_magnet_uri(job.magnet)
        if self.torrent is not None:
            atp.ti = self.torrent.info()
        atp.save_path = str(job.area / "bt")
        atp.flags &= ~lt.torrent_flags.seed_mode
        # Nothing is downloaded until what bt/ already holds is counted (see _download).
        atp.flags |= lt.torrent_flags.default_dont_download
        return atp

    def _pump(self, timeout: float) -> None:
        """Handle libtorrent's alerts; what the user should see goes to ``self.events``."""
        assert self.session is not None
        if self.session.stopping:  # Python is exiting (see "Closing sessions")
            raise Interrupted("stopped: the BitTorrent session is closing")
        for a in self.session.alerts(timeout):
            if isinstance(a, lt.hash_failed_alert) and self.torrent is not None:
                t = int(a.piece_index)
                f = self.torrent.file_at(t)
                self.events.append(
                    PieceRejected(
                        "swarm",
                        t,
                        f.path if f else "",
                        f"torrent piece {t} failed its hash check; fetching it again",
                    )
                )
            elif isinstance(a, lt.peer_ban_alert):
                peer = endpoint_text(getattr(a, "endpoint", None))
                why = f"banned peer {peer}: it sent data that failed the hash check"
                self.events.append(SourceTrouble("swarm", why, None))
            elif isinstance(a, lt.file_error_alert):
                raise StorageError(
                    f"libtorrent cannot use {a.filename()}: {a.message()}", path=str(a.filename())
                )
            elif isinstance(a, lt.torrent_error_alert):
                self.events.append(SourceTrouble("swarm", f"libtorrent: {a.message()}", None))
            elif isinstance(a, lt.save_resume_data_alert):
                write_resume(self.job.area, a)
        self.session.dial(self.handle)

    def _verified(self) -> int:
        """Bytes of content files in pieces that passed the torrent's hash check."""
        assert self.torrent is not None
        done = self.handle.file_progress(_VERIFIED)
        return sum(int(done[k]) for k, f in enumerate(self.torrent.files) if not f.pad)

    def _source(self, rate: float) -> SourceProgress:
        status = "ok" if self.peers or self.verified == self.total else "retrying"
        return SourceProgress(
            "swarm", "bittorrent", "p2p", rate, self.verified - self.before, self.peers, status
        )

    def _download(self) -> Iterator[Event]:
        job, h = self.job, self.handle
        give_up = self.give_up_after
        last_news = time.monotonic()
        while True:  # metadata (a magnet), then libtorrent's check of what bt/ holds
            self._pump(0.1)
            yield from self._drain()
            st = h.status()
            if st.has_metadata and st.state not in _CHECKING:
                break
            if time.monotonic() - last_news > give_up:
                what = "sent the torrent's metadata" if not st.has_metadata else "answered"
                raise NoSourceError(
                    f"no peer {what} in {give_up:.0f} s",
                    hint="name a peer with --peer HOST:PORT (or check the magnet link)",
                )
        if self.torrent is None:
            self.torrent = torrent_from_info(h.torrent_file())
        torrent = self.torrent
        _check_layout(torrent)
        with contextlib.suppress(StorageError):
            if not (job.area / "torrent").is_file():
                torrent.write(job.area / "torrent")
        self.total = sum(f.size for f in torrent.content_files)
        self.before = self.verified = self._verified()
        need = self.total - self.before
        free = shutil.disk_usage(job.area).free
        if need + SPACE_MARGIN > free and need > 0:
            raise DiskFull(path=str(job.dest), needed=need + SPACE_MARGIN, available=free)
        h.prioritize_files([4] * len(torrent.files))  # libtorrent's default priority: want it all
        yield PullStarted(
            torrent.name,
            "",  # no manifest yet: it is made from the files once they are all in
            str(job.dest),
            self.total,
            self.before,
            torrent.num_pieces,
            torrent.piece_size,
            ("swarm",),
        )
        next_progress = next_resume = 0.0
        last_news = time.monotonic()
        while True:
            self._pump(0.05)
            yield from self._drain()
            st = h.status()
            now = time.monotonic()
            self.peers = int(st.num_peers)
            if st.is_seeding:
                break
            if now >= next_progress:
                next_progress = now + 0.25
                verified = self._verified()
                if verified != self.verified:
                    self.verified, last_news = verified, now
                rate = float(st.download_payload_rate)
                left = self.total - verified
                yield Progress(
                    verified,
                    self.total,
                    rate,
                    left / rate if rate > 0 else None,
                    (self._source(rate),),
                    verified,
                )
            if now >= next_resume:
                if next_resume:
                    assert self.session is not None
                    save_resume(self.session, h, job.area, wait=False)
                next_resume = now + RESUME_EVERY
            if now - last_news > give_up:
                raise NoSourceError(
                    f"no progress for {give_up:.0f} s from any peer",
                    hint="name a peer with --peer HOST:PORT; what arrived is kept for a resume",
                )
        st = h.status()
        self.verified = self.total
        self.redundant, self.failed = int(st.total_redundant_bytes), int(st.total_failed_bytes)

    def _settle(self) -> None:
        """Wait until every verified piece is in bt/'s files (see ``flush_writes``), then stop the torrent."""
        assert self.session is not None
        if not flush_writes(self.session, self.handle, 600.0):
            if self.session.stopping:
                raise Interrupted("stopped: the BitTorrent session is closing")
            raise StorageError(
                f"libtorrent did not finish writing {self.job.area / 'bt'} within 10 minutes",
                path=str(self.job.area / "bt"),
            )
        self.session.remove(self.handle)
        self.handle = None

    def _drain(self) -> Iterator[Event]:
        evs, self.events = self.events, []
        yield from evs

    # -- installing ----------------------------------------------------------------------------
    def _install(self) -> tuple[Manifest, Torrent]:
        """Hash the complete files, rename them into DEST, record manifest, install and torrent."""
        job, torrent = self.job, self.torrent
        assert self.session is not None and torrent is not None
        fs = self.handle.torrent_file().layout()
        self._settle()
        bt = job.area / "bt"
        aligned = file_aligned(torrent) and _manifest_piece_size(torrent.piece_size)
        ps = torrent.piece_size if aligned else DEFAULT_PIECE_SIZE
        entries: list[FileEntry] = []
        sources: list[Path] = []
        with storage_errors(bt):
            for k, f in enumerate(torrent.files):
                if f.pad:
                    continue
                src = bt / str(fs.file_path(k))
                if f.size == 0 and not src.exists():
                    src.parent.mkdir(parents=True, exist_ok=True)
                    src.touch()  # libtorrent may not create empty files
                size, sha, pieces = hash_file_pieces(src, ps)
                if size != f.size:
                    raise IntegrityError(f"{src}: {size} bytes after the download, the torrent says {f.size}")
                entries.append(FileEntry(f.path, f.size, sha, tuple(pieces)))
                sources.append(src)
        info = {
            k: v for k, v in (("btih", torrent.btih), ("btmh", torrent.btmh), ("format", torrent.format)) if v
        }
        meta = {
            "source": job.ref or torrent.magnet,
            "bittorrent": {
                **info,
                "piece_size": torrent.piece_size,
                "pieces": "torrent" if aligned else "derived locally",
            },
        }
        manifest = Manifest(
            torrent.name[:200] or job.name,
            ps,
            tuple(entries),
            torrent.manifest_fields() if aligned else None,
            meta,
        )
        manifest = parse_manifest(manifest.canonical_bytes, origin=f"manifest of {torrent.name}")
        record: dict[str, list[int]] = {}
        with storage_errors(job.dest):
            for entry, src in zip(manifest.files, sources, strict=True):
                dst = safe_join(job.dest, entry.path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(src, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(src, dst)
                fsync_dir(dst.parent)
                st = dst.stat()
                record[entry.path] = [st.st_size, st.st_mtime_ns, st.st_ino]
            area = PrivateArea(job.dest)
            atomic_write_bytes(area.installed_manifest(manifest.sha256), manifest.canonical_bytes)
            torrent.write(torrent_record_path(job.dest, manifest))
            # The install record last: it is what says the model is in place.
            atomic_write_bytes(
                area.install_record(manifest.sha256), json.dumps(record, sort_keys=True).encode()
            )
        if self.settings is not None:
            from dsmirror._install.records import record_dir_install

            with contextlib.suppress(StorageError):
                record_dir_install(self.settings, job.ref or torrent.magnet, "dir", manifest, job.dest)
        shutil.rmtree(bt, ignore_errors=True)
        for name in ("bt.resume", "torrent"):
            with contextlib.suppress(OSError):
                (job.area / name).unlink()
        return manifest, torrent


def _manifest_piece_size(size: int) -> bool:
    return MIN_PIECE_SIZE <= size <= MAX_PIECE_SIZE and size & (size - 1) == 0


def _check_layout(torrent: Torrent) -> None:
    """Refuse a torrent whose file list cannot be installed safely (checked like a manifest's)."""
    skeleton = {
        "format": "dsmirror-manifest",
        "version": 1,
        "name": torrent.name[:200] or "torrent",
        "piece_size": DEFAULT_PIECE_SIZE,
        "files": [
            {"path": f.path, "size": f.size, "sha256": "0" * 64, "pieces": None}
            for f in torrent.content_files
        ],
    }
    try:
        parse_manifest(json.dumps(skeleton).encode())
    except ManifestError as exc:
        raise InputError(f"the torrent's files cannot be installed safely: {exc.message}") from None


def _installed_torrent(dest: Path, hashes: set[str]) -> tuple[Manifest, Torrent] | None:
    """The manifest and torrent of an earlier pull of this torrent into ``dest``, if still intact."""
    for path in sorted(PrivateArea(dest).torrents_dir.glob("*.torrent")):
        try:
            t = load_torrent(path)
        except InputError:
            continue
        if not hashes & ({t.btih, t.btmh} - {None}):
            continue
        area = PrivateArea(dest)
        try:
            m = load_manifest(area.installed_manifest(path.stem), expected_sha256=path.stem)
            record = json.loads(area.install_record(path.stem).read_bytes())
        except (DsmirrorError, OSError, ValueError):
            continue
        intact = True
        for f in m.files:
            try:
                st = (dest / f.path).lstat()
            except OSError:
                intact = False
                break
            intact = intact and record.get(f.path) == [st.st_size, st.st_mtime_ns, st.st_ino]
        if intact:
            return m, t
    return None


def seed_after_pull(
    swarms: Sequence[object], manifest: Manifest, dest: Path, config: SwarmConfig
) -> Iterator[Event]:
    """``pull --seed``: seed the installed model until interrupted (see ``seed``).

    ``swarms``: the pull's swarm sources; the first one's session and torrent are reused.
    """
    sw = swarms[0] if swarms else None
    torrent = sw.torrent if isinstance(sw, SwarmSource) else None
    session = sw.session if isinstance(sw, SwarmSource) and not sw.session.closed else None
    if torrent is None:  # the model has no torrent yet: make it from the verified files
        torrent = create_torrent(manifest, dest, verify=False)
        with contextlib.suppress(StorageError):
            torrent.write(torrent_record_path(dest, manifest))
    yield from seed([SeedTarget(torrent, dest)], config, session=session)
