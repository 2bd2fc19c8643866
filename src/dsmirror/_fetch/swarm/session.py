"""One libtorrent session with dsmirror's settings, and how sessions are closed safely.

Session settings
================
TCP only (uTP is an order of magnitude slower on a LAN and on loopback), local service discovery
on (an office LAN finds its seeders with no configuration), DHT off unless asked for, UPnP and
NAT-PMP off, several connections per IP allowed (peers on one host, loopback tests), a reconnect
delay of 1 s instead of 60 s, and ``--peer`` addresses re-dialled every few seconds until they
answer (libtorrent gives up on a refused address for a minute otherwise). An upload limit applies to
LAN peers as well (libtorrent exempts them by default).

A session of the manifest's own swarm (``trust_pieces``: the torrent derived from the manifest,
see ``dsmirror._fetch.swarm.torrent``) runs with libtorrent's hash checks off, because that
torrent's piece hashes are not SHA-1s of the pieces; its users check every piece against the
manifest instead and ban the peers that sent bad ones by address (``ban``).

Such a session also keeps each torrent's piece picker once it has every piece
(``suggest_mode = suggest_read_cache``, as libtorrent's own ``high_performance_seed`` preset
sets). Without it libtorrent 2.1 crashes: with hash checks off, ``add_piece`` passes a piece
synchronously once every block of it is queued or done, and in the last piece of a file padded
to a piece boundary (BEP 47) the pad blocks count as done from the start, so that happens at its
last block of data, with the pad blocks still to loop over. If that piece was the last one
missing while the torrent wanted some piece, the torrent becomes a seed there and frees its
piece picker, and ``add_piece`` goes on with a null picker (a segfault in libtorrent's network
thread, in ``piece_picker::is_finished``; ``tests/test_swarm_trust.py``). The suggestion
messages the setting adds only reorder what peers pick among the pieces they want: a piece at
priority 0 is never picked for being suggested.

Disk I/O
========
Sessions use libtorrent's ``posix_disk_io`` (``pread``/``pwrite`` in the session's own thread),
not 2.1's default ``pread_disk_io``. That one's disk cache hashes written blocks in the
background, outside its jobs, and removing a torrent frees the cached blocks of its pieces
without waiting for that hasher (an assertion, off in release builds, says it is idle): a torrent
removed right after pieces were added to it (the end of every pull: the last pieces from mirrors
go to the swarm, then the torrent is removed) corrupts the heap now and then (glibc's
``malloc_consolidate(): unaligned fastbin chunk detected`` or ``corrupted double-linked list``
from ``disk_cache::clear_piece_impl``, a segfault in ``disk_cache::kick_hasher``: 5 single-host
``hf://`` pulls in 120 with ``MALLOC_PERTURB_``). ``posix_disk_io`` has no cache and no thread of
its own, so nothing of a torrent is left in use when it is removed; it took pieces at the same
rate here (256-265 MB/s of ``add_piece``, hashed and written, against 275-380 for the default).

Closing sessions
================
Every call into libtorrent's Python binding releases the GIL and takes it back in a C++
destructor. A thread that comes back from such a call after the interpreter began to finalize is
ended by CPython with ``pthread_exit``, whose forced unwind through that ``noexcept`` destructor
aborts the process ("terminate called without an active exception", exit code 134). So no thread
may still be inside libtorrent when Python exits, and a session must not be destroyed while another
thread calls into it (its torrent handles would wait on a dead session; its alerts would be freed
under the reader). Hence: code that calls into a session does so inside ``SwarmSession.using()``;
``SwarmSession.close()`` asks those loops to end (``stopping``), waits for them, and only then
destroys the session, with the GIL held throughout; ``SwarmSource.close()`` waits for its run
thread before it touches libtorrent. An ``atexit`` hook stops and closes any session still open
when Python exits (a seeding thread nobody stopped, a pull left running in a daemon thread).

The waits here (for the listen socket, for threads to leave at exit) wait on libtorrent's and
Python's own threads, so they use the real monotonic clock, not an injected one.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import string
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import libtorrent as lt

from dsmirror._core.errors import Interrupted, UsageError
from dsmirror._fetch.swarm.config import SwarmConfig, parse_endpoint

__all__ = ["DEFAULT_LISTEN", "REDIAL", "SwarmSession", "endpoint_text", "open_sessions"]

DEFAULT_LISTEN = "0.0.0.0:6881,[::]:6881"
REDIAL = 3.0  # seconds between dials of --peer addresses that are not connected
_LSD_EVERY = 1  # seconds between local service discovery announces of a session's torrents
_ALERTS = (
    lt.alert_category.error
    | lt.alert_category.peer
    | lt.alert_category.status
    | lt.alert_category.storage
    | lt.alert_category.piece_progress
)

#: Settings of a session that trusts its torrents' pieces (see "Session settings": the picker is
#: kept, or ``add_piece`` of the last piece of a padded file can read it after it was freed).
_TRUSTING: lt.settings_pack = {
    "disable_hash_checks": True,
    "suggest_mode": int(lt.suggest_mode_t.suggest_read_cache),
}

#: libtorrent's disk I/O back end for every session (see "Disk I/O").
_DISK_IO = "posix_disk_io_constructor"

_EXIT_WAIT = 10.0  # seconds the atexit hook waits for threads still inside a session
_EXITING = threading.Event()  # Python is exiting: every session is stopping
_SESSIONS: weakref.WeakSet[SwarmSession] = weakref.WeakSet()  # not closed yet


#: Peer ids of dsmirror sessions: this prefix, a role letter, 11 random characters. The role tells
#: the other machines of a LAN whether this one fetches from mirrors and so owns a share of the
#: uplink work (``dsmirror._schedule.lan``): UPLINK for a pull with mirrors, OTHER for the rest.
PEER_ID_PREFIX = "-DS0200-"
UPLINK, OTHER = "M", "S"


def new_peer_id(role: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return PEER_ID_PREFIX + role + "".join(secrets.choice(alphabet) for _ in range(11))


def _close_sessions_at_exit() -> None:
    """Last resort (see "Closing sessions"): stop and close what is still open when Python exits."""
    _EXITING.set()
    deadline = time.monotonic() + _EXIT_WAIT
    for session in list(_SESSIONS):
        session.close(timeout=max(0.0, deadline - time.monotonic()))


atexit.register(_close_sessions_at_exit)


def open_sessions() -> list[SwarmSession]:
    """The sessions of this process not closed yet (tests check that none is left behind)."""
    return [s for s in list(_SESSIONS) if not s.destroyed]


class SwarmSession:
    """One libtorrent session with dsmirror's settings. Alerts are popped by one thread at a time.

    Code calling into the session runs inside ``using()`` and ends when ``stopping`` turns true;
    ``close()`` waits for it before destroying the session (see "Closing sessions").
    """

    def __init__(self, config: SwarmConfig, *, trust_pieces: bool = False) -> None:
        self.config = config
        self.trust_pieces = trust_pieces
        self._banned: set[str] = set()
        self._closed = False  # close() was called: no new work
        self._dying = False  # a thread is destroying the libtorrent session
        self._destroyed = False  # the libtorrent session is gone
        self._orphaned = False  # close() gave up waiting: the last user out destroys it
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._users: list[int] = []  # thread ids inside using()
        self.peer_id = new_peer_id(OTHER)
        listen = config.listen or DEFAULT_LISTEN
        if config.listen:
            host, port = parse_endpoint(config.listen)
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        settings: lt.settings_pack = {
            "listen_interfaces": listen,
            "enable_dht": config.dht,
            "enable_lsd": config.lsd,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "min_reconnect_time": 1,
            # Announce each torrent on the LAN every few seconds, not every 5 minutes: a torrent a
            # seeder took over from its pull (dsmirror._share.seed) is not added again, so it makes
            # no announce of its own, and a host that was killed and restarts is not dialled by
            # it for a long time (libtorrent backs off from the address that failed).
            "local_service_announce_interval": _LSD_EVERY,
            # A pull's torrent wants no piece until the scheduler gives it some, so it looks
            # finished ("upload only"); keep such connections so peers still tell us their pieces.
            "close_redundant_connections": False,
            "max_failcount": 100,
            "alert_mask": _ALERTS,
            "user_agent": "dsmirror/0.1 libtorrent/" + lt.__version__,
            "alert_queue_size": 100_000,
            # 20 characters: libtorrent uses them as the whole peer id (see PEER_ID_PREFIX).
            "peer_fingerprint": self.peer_id,
            "disable_hash_checks": trust_pieces,
        }
        if trust_pieces:
            settings.update(_TRUSTING)
            # who sent which block: a piece the manifest rejects bans its senders
            settings["alert_mask"] = _ALERTS | lt.alert_category.block_progress
        if config.upload_rate:
            settings["upload_rate_limit"] = int(config.upload_rate)
        if config.download_rate:
            settings["download_rate_limit"] = int(config.download_rate)
        if config.max_peers:
            settings["connections_limit"] = int(config.max_peers)
        params = lt.session_params(settings)
        params.disk_io_constructor = _DISK_IO  # see "Disk I/O"
        self.ses = lt.session(params)
        _SESSIONS.add(self)
        # libtorrent exempts LAN peers from rate limits; a user's --upload-rate means everyone.
        if config.upload_rate or config.download_rate:
            local = self.ses.get_peer_class(self.ses.local_peer_class_id)
            local["upload_limit"] = int(config.upload_rate or 0)
            local["download_limit"] = int(config.download_rate or 0)
            self.ses.set_peer_class(self.ses.local_peer_class_id, local)
        self._check_listen()

    def _check_listen(self) -> None:
        """Raise UsageError if an explicit --listen address cannot be bound."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            self.ses.wait_for_alert(100)
            for a in self.ses.pop_alerts():
                if isinstance(a, lt.listen_failed_alert) and self.config.listen:
                    self.close()
                    raise UsageError(
                        f"cannot listen on {self.config.listen}: {a.message()}",
                        hint="choose another --listen HOST:PORT",
                    )
            if self.ses.is_listening():
                return

    @property
    def listen_port(self) -> int:
        return int(self.ses.listen_port())

    def add_torrent(self, atp: Any) -> Any:
        atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
        atp.peers = list(atp.peers) + self.config.peer_endpoints
        known = set(atp.trackers)
        atp.trackers = list(atp.trackers) + [t for t in self.config.trackers if t not in known]
        return self.ses.add_torrent(atp)

    def dial(self, handle: Any) -> None:
        """Connect the configured --peer addresses that are not connected to ``handle``."""
        if not self.config.peers:
            return
        try:
            connected = {tuple(p.ip) for p in handle.get_peer_info()}
        except RuntimeError:
            return
        for ep in self.config.peer_endpoints:
            if ep not in connected:
                with contextlib.suppress(RuntimeError):
                    handle.connect_peer(ep)

    def take_uplink_share(self) -> None:
        """Tell peers (by the peer id of torrents added from now on) that this machine fetches a
        share of the model from mirrors."""
        if self.peer_id[len(PEER_ID_PREFIX)] != UPLINK:
            self.peer_id = new_peer_id(UPLINK)
            self.ses.apply_settings({"peer_fingerprint": self.peer_id})

    def trust(self) -> None:
        """Turn libtorrent's hash checks off from now on (to seed a derived torrent; see above)."""
        if not self.trust_pieces:
            self.trust_pieces = True
            self.ses.apply_settings(_TRUSTING.copy())

    def ban(self, address: str) -> bool:
        """Refuse every peer at ``address`` from now on (disconnects it); False if it already was."""
        if address in self._banned:
            return False
        self._banned.add(address)
        f = lt.ip_filter()
        for a in self._banned:
            f.add_rule(a, a, 1)
        self.ses.set_ip_filter(f)
        return True

    def alerts(self, timeout: float) -> list[Any]:
        if self.ses.wait_for_alert(int(timeout * 1000)) is None:
            return []
        return list(self.ses.pop_alerts())

    def remove(self, handle: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self.ses.remove_torrent(handle)

    @property
    def closed(self) -> bool:
        """``close()`` was called (the session may still be waiting for its users to leave)."""
        return self._closed

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    @property
    def stopping(self) -> bool:
        """Loops using the session should end now: it is being closed, or Python is exiting."""
        return self._closed or _EXITING.is_set()

    @contextlib.contextmanager
    def using(self) -> Iterator[SwarmSession]:
        """Mark the calling code as a user of the session: ``close()`` waits until it leaves."""
        me = threading.get_ident()
        with self._lock:
            if self._dying:
                raise Interrupted("the BitTorrent session was closed")
            self._users.append(me)
        try:
            yield self
        finally:
            with self._idle:
                self._users.remove(me)
                self._idle.notify_all()
                last = self._orphaned and not self._users and not self._dying
            if last:
                self._destroy()

    def close(self, timeout: float = 30.0) -> None:
        """Stop libtorrent's threads; idempotent, from any thread.

        Users (``using()``, on other threads) see ``stopping`` and are waited for up to
        ``timeout`` seconds; if one is still inside then, the last one to leave destroys the
        session instead (never under a thread calling into it).
        """
        me = threading.get_ident()
        with self._idle:
            self._closed = True
            if self._destroyed:
                return
            if not self._idle.wait_for(lambda: all(u == me for u in self._users), timeout):
                self._orphaned = True
                return
        self._destroy()

    def _destroy(self) -> None:
        """Destroy the libtorrent session; returns only once it is gone (whoever destroys it)."""
        with self._idle:
            if self._dying:
                self._idle.wait_for(lambda: self._destroyed)
                return
            self._dying = True
            ses = self.__dict__.pop("ses")
        try:
            # Dropping the last reference runs libtorrent's session destructor (abort, then join
            # its threads) with the GIL held: Python cannot begin to finalize while libtorrent
            # stops. No pause() first: that call releases the GIL (see "Closing sessions").
            del ses
        finally:
            with self._idle:
                self._destroyed = True
                self._idle.notify_all()
            _SESSIONS.discard(self)


def endpoint_text(endpoint: Any) -> str:
    """``host:port`` of a libtorrent endpoint (``[host]:port`` for IPv6); ``?`` if it is none."""
    try:
        host, port = endpoint
    except (TypeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
