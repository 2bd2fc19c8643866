"""``bench_lan.py --trace``: record what each host's scheduler decided, for the bench's analysis.

Put on ``PYTHONPATH`` of the hosts' dsmirror processes only (never imported by dsmirror itself).
Wraps ``Scheduler`` methods and writes one JSON line per decision to ``$DSM_LAN_TRACE``, with
``time.monotonic()`` (one clock for every namespace of the machine), or, if it is a directory,
to ``trace-<pid>.jsonl`` in it. ``known`` (on "hosts" and on takes from outside): the pieces the
scheduler knew some peer had then. With ``DSM_LAN_TRACE_PEERS`` set, also each peer scan of the swarm
source: what it saw of each peer. Diagnostic only.
"""

from __future__ import annotations

import json
import os
import threading
import time

_path = os.environ.get("DSM_LAN_TRACE")
if _path:
    from dsmirror._schedule import scheduler as _sch

    if os.path.isdir(_path):  # one file per process (tests that start hosts their own way)
        _path = os.path.join(_path, f"trace-{os.getpid()}.jsonl")
    _out = open(_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    _lock = threading.Lock()

    def _log(**kw: object) -> None:
        kw["t"] = round(time.monotonic(), 4)
        with _lock:
            _out.write(json.dumps(kw) + "\n")

    S = _sch.Scheduler
    _acquire, _verified, _release, _hosts = S.acquire, S.piece_verified, S.release, S.set_lan_hosts

    def _known(self):  # type: ignore[no-untyped-def]
        """Pieces some peer has, as far as this scheduler knows now."""
        return sum(have.count(1) for have in self._board.peer_pieces.values())

    def acquire(self, name):  # type: ignore[no-untyped-def]
        a = _acquire(self, name)
        if isinstance(a, _sch.Assignment):
            kw = {"known": _known(self)} if a.outside else {}
            _log(ev="take", id=a.id, src=name, start=a.start, end=a.end, out=a.outside, race=a.race, **kw)
        return a

    def piece_verified(self, a, index, *, helped=0):  # type: ignore[no-untyped-def]
        was_done = self._pieces.is_done(index)
        go = _verified(self, a, index, helped=helped)
        _log(ev="piece", id=a.id, src=a.source, i=index, dup=was_done, end=a.end)
        return go

    def release(self, a, error=None):  # type: ignore[no-untyped-def]
        _release(self, a, error)
        _log(
            ev="end",
            id=a.id,
            src=a.source,
            next=a.next_piece,
            end=a.end,
            bytes=a.bytes_received,
            pb=a.piece_bytes,
            err=type(error).__name__ if error else None,
        )

    def set_lan_hosts(self, name, me, hosts, peers, pending=0):  # type: ignore[no-untyped-def]
        _hosts(self, name, me, hosts, peers, pending)
        _log(ev="hosts", me=me, hosts=sorted(hosts), peers=peers, pending=pending, known=_known(self))

    S.acquire, S.piece_verified, S.release, S.set_lan_hosts = acquire, piece_verified, release, set_lan_hosts
    _log(ev="start", pid=os.getpid())

    if os.environ.get("DSM_LAN_TRACE_PEERS"):  # each peer scan's view of the peers (diagnostic)
        import libtorrent as _lt

        from dsmirror._fetch.swarm import source as _src

        _scan = _src.SwarmSource._scan_peers

        def _scan_peers(self, now):  # type: ignore[no-untyped-def]
            due = self._peer_view and now >= self._next_peer_scan
            _scan(self, now)
            if due and self.handle is not None:
                # (peer id, in its handshake, connecting, pieces its bitfield and haves told)
                f = _lt.peer_info
                peers = [
                    (bytes(p.pid.to_bytes()).decode("latin-1"), int(p.flags & f.handshake > 0),
                     int(p.flags & f.connecting > 0), p.num_pieces)
                    for p in self.handle.get_peer_info()
                ]  # fmt: skip
                _log(ev="scan", view=self._peer_have.count(1), peers=peers)

        _src.SwarmSource._scan_peers = _scan_peers
