"""Seeding models to the LAN over BitTorrent: ``dsmirror seed``, ``pull --seed``, ``serve --seed``.

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

``pull --seed`` is ``seed_after_pull`` over the pull's events: the pull (``dsmirror._pull``, the
layer below) leaves its session open for it, and a pull of a torrent no manifest describes
(``dsmirror._fetch.swarm.only``) is seeded the same way from where it installed the files.

The hand-over
=============
Machines of a LAN that still pull the model take pieces from one that finished. If the finished
pull removed its torrent and the seeder added it again, its peers would lose it for the time
they take to reconnect (1.5-1.8 s on the namespaced LAN, over 9 s after ``hf://`` pulls), and
fetch from the upstream meanwhile what it had. So with ``--seed`` the pull's torrent
is never removed: the pull leaves it running in its session, serving from libtorrent's own copy
(``bt/`` in the partial area) while the files are installed (``SwarmSource.take_live``: only a
torrent that holds every piece, each of them verified), and the seeder then points it at the
installed files (``move_storage`` with ``reset_save_path_unchecked``: the path changes, no file
moves, nothing is read) and deletes libtorrent's copy. Its peer connections stay up throughout
(``tests/test_swarm_handover.py``). What it serves is what dsmirror verified either way: before
the move libtorrent's copy (every piece in it checked: by libtorrent against the torrent's hashes,
or against the manifest in the manifest's own swarm, pieces nobody checked yet overwritten with
the store's), after it the installed files, verified piece by piece and whole as the pull ended.
A torrent added anew is in seed mode instead, in which libtorrent checks each piece the first
time a peer asks for it. A pull whose copy cannot be pointed elsewhere (resume data from before,
with its copy in a part file; a magnet) is seeded the old way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from dsmirror._core.clock import Clock, SystemClock
from dsmirror._core.errors import InputError, IntegrityError, Interrupted, StorageError, UsageError
from dsmirror._core.events import Event
from dsmirror._fetch.swarm.config import (
    PeerStatus,
    SeedingStarted,
    SeedingStopped,
    SeedStatus,
    SwarmConfig,
    TorrentStatus,
)
from dsmirror._fetch.swarm.resume import drop_copy
from dsmirror._fetch.swarm.session import REDIAL, SwarmSession, endpoint_text
from dsmirror._fetch.swarm.source import LiveTorrent, SwarmSource
from dsmirror._fetch.swarm.torrent import Torrent, create_torrent, derived_torrent, load_torrent
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes
from dsmirror._formats.private import PrivateArea

if TYPE_CHECKING:
    from dsmirror._install.store_model import StoreFile, StoreModel
    from dsmirror._pull import Pulled

_MOVE_WAIT = 10.0  # seconds libtorrent may take to point a running torrent at the installed files

__all__ = [
    "SeedTarget",
    "own_swarm_target",
    "piece_size_for",
    "seed",
    "seed_after_pull",
    "seed_targets_in",
    "store_seed_target",
]


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
    live: Sequence[LiveTorrent] = (),
    stop: threading.Event | None = None,
    interval: float = 1.0,
    clock: Clock | None = None,
) -> Iterator[Event]:
    """Seed ``targets`` until ``stop`` is set (or the consumer stops iterating / is interrupted).

    Yields ``SeedingStarted``, then ``SeedStatus`` every ``interval`` seconds, and
    ``SeedingStopped`` when ``stop`` ends it. The session is closed on the way out in every case
    (also one passed in, even if seeding cannot start). ``clock`` times the status events and the
    seconds ``SeedingStopped`` reports (libtorrent's alert waits are real time).

    ``live``: torrents of a pull that are still running in ``session`` (``pull --seed``); a
    target of the same torrent takes one over instead of being added (see "The hand-over"
    above), and libtorrent's copy of each is deleted.
    """
    ses = session
    try:
        if not targets:
            raise UsageError(
                "nothing to seed", hint="give a folder pulled by dsmirror, or MANIFEST/TORRENT --from DIR"
            )
        for t in targets:
            _check_files(t)
        # The manifest's own swarm (a derived torrent) needs libtorrent's hash checks off; its
        # peers check every piece against the manifest (dsmirror._fetch.swarm.torrent).
        trusting = any(t.torrent.derived for t in targets)
        ses = ses or SwarmSession(config, trust_pieces=trusting)
        if trusting:
            ses.trust()
        yield from _seed(ses, targets, live, stop, interval, clock or SystemClock())
    finally:
        if ses is not None:
            ses.close()
        for lv in live:  # the session is gone: nothing reads libtorrent's copy any more
            _drop_copy(lv)


def _seed(
    ses: SwarmSession,
    targets: Sequence[SeedTarget],
    live: Sequence[LiveTorrent],
    stop: threading.Event | None,
    interval: float,
    clock: Clock,
) -> Iterator[Event]:
    t0 = clock.now()
    handles: list[tuple[SeedTarget, Any]] = []
    with ses.using():
        running = list(live)
        for t in targets:
            same = [lv for lv in running if _same_torrent(lv.torrent, t.torrent) and not t.disk]
            if same:
                running.remove(same[0])
                h = _take_over(ses, same[0], t)
                if h is not None:
                    handles.append((t, h))
                    continue
            handles.append((t, _add_seeding(ses, t)))
        for lv in running:  # a pull's torrent no target names
            ses.remove(lv.handle)
            _drop_copy(lv)
        prints = [_fingerprint(t) for t, _h in handles]
        gone: dict[int, str] = {}  # handles[k] no longer seeded: why
        yield SeedingStarted(
            tuple(t.name for t in targets), tuple(t.torrent.magnet for t in targets), ses.listen_port
        )
        next_status = 0.0
        next_dial = 0.0
        try:
            # ses.stopping: closed from elsewhere, or Python is exiting (see "Closing sessions" in
            # dsmirror._fetch.swarm.session)
            while not ses.stopping and (stop is None or not stop.is_set()):
                ses.alerts(0.1)
                now = clock.now()
                if now >= next_dial:
                    next_dial = now + REDIAL
                    for _t, h in handles:
                        ses.dial(h)
                if now >= next_status:
                    next_status = now + interval
                    _watch(ses, handles, prints, gone)
                    yield _seed_status(handles, gone)
        except (KeyboardInterrupt, Interrupted):
            pass  # Ctrl-C or SIGTERM (the CLI raises Interrupted from its handler): a clean stop
        yield SeedingStopped(_seed_status(handles, gone).uploaded, clock.now() - t0)


def _add_seeding(ses: SwarmSession, t: SeedTarget, *, upload_only: bool = False) -> Any:
    """Add ``t`` in seed mode: libtorrent checks each piece the first time a peer asks for it.
    ``upload_only``: it never downloads either (files that changed under it, see ``_watch``)."""
    atp = lt.add_torrent_params()
    atp.ti = t.torrent.info()
    atp.save_path = str(t.folder)
    atp.renamed_files = t.renames()
    atp.flags |= lt.torrent_flags.seed_mode
    atp.flags &= ~lt.torrent_flags.default_dont_download
    if upload_only:
        atp.flags |= lt.torrent_flags.upload_mode
    return ses.add_torrent(atp)


_Print = tuple[tuple[int, int, int] | None, ...]


def _fingerprint(t: SeedTarget) -> _Print:
    """(size, mtime_ns, inode) of each of ``t``'s files where they are; None for a missing one."""
    out: list[tuple[int, int, int] | None] = []
    for f in t.torrent.content_files:
        try:
            st = (t.folder / t.disk_path(f.path)).stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def _watch(
    ses: SwarmSession, handles: list[tuple[SeedTarget, Any]], prints: list[_Print], gone: dict[int, str]
) -> None:
    """Stop serving pieces nobody checked since their files changed (written to, replaced,
    deleted: a new size, mtime or inode).

    libtorrent reads a piece it holds as checked without checking it again: a torrent taken over
    from the pull holds every piece so (verified as the pull ran), one added in seed mode each
    piece a peer asked for once. So after such a change it would serve whatever the file now
    holds, and the peer's check would ban this machine. The torrent is added again in seed mode
    (each piece checked before it is first served again; a changed one fails and is not served;
    upload mode, so nothing is downloaded into the user's files). In a session with libtorrent's
    hash checks off (a placeholder-hash swarm, ``SwarmSession.trust``) seed mode checks nothing:
    the torrent is stopped instead. Its peer connections are lost either way: files rarely change.
    """
    for k, (t, h) in enumerate(handles):
        if k in gone:
            continue
        now = _fingerprint(t)
        if now == prints[k]:
            continue
        prints[k] = now
        _remove_and_wait(ses, h)
        if ses.trust_pieces:
            gone[k] = "stopped: its files changed"
            continue
        handles[k] = (t, _add_seeding(ses, t, upload_only=True))


def _same_torrent(a: Torrent, b: Torrent) -> bool:
    return (a.btih, a.btmh) == (b.btih, b.btmh)


def _take_over(ses: SwarmSession, live: LiveTorrent, target: SeedTarget) -> Any | None:
    """Point the pull's running torrent at the installed files (see "The hand-over"); its handle,
    or None if libtorrent did not move it (it is removed then, and the target added anew)."""
    h = live.handle
    moved = False
    if h.is_valid():
        # Only the path changes: no file is moved, nothing is checked; the files under
        # target.folder have the torrent's paths (the pull renamed its files as the target does).
        h.move_storage(str(target.folder), lt.move_flags_t.reset_save_path_unchecked)
        deadline = time.monotonic() + _MOVE_WAIT
        while not moved and time.monotonic() < deadline and not ses.stopping:
            for a in ses.alerts(0.1):
                if isinstance(a, lt.storage_moved_alert) and a.handle == h:
                    moved = True
                elif isinstance(a, lt.storage_moved_failed_alert) and a.handle == h:
                    deadline = 0.0
    if not moved and h.is_valid():
        _remove_and_wait(ses, h)
    _drop_copy(live)
    return h if moved else None


def _remove_and_wait(ses: SwarmSession, h: Any) -> None:
    """Remove ``h``'s torrent; the same torrent is added next, which libtorrent refuses while
    this one is still there."""
    ses.remove(h)
    deadline = time.monotonic() + _MOVE_WAIT
    while time.monotonic() < deadline and not ses.stopping:
        if any(isinstance(a, lt.torrent_removed_alert) for a in ses.alerts(0.1)):
            break


def _drop_copy(live: LiveTorrent) -> None:
    """Delete libtorrent's copy of a pull that was taken over (or dropped): nothing reads it."""
    drop_copy(live.area, live.lock)


def _seed_status(handles: Sequence[tuple[SeedTarget, Any]], gone: dict[int, str] | None = None) -> SeedStatus:
    torrents = []
    for k, (t, h) in enumerate(handles):
        if gone and k in gone:
            torrents.append(
                TorrentStatus(t.name, t.torrent.btih or t.torrent.btmh or "", gone[k], 0.0, 0, ())
            )
            continue
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
                # a pull's torrent taken over says "finished" (its pieces were at priority 0)
                "seeding" if st.is_seeding else str(st.state),
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


def own_swarm_target(manifest: Manifest, folder: Path, seeded: Sequence[SeedTarget]) -> SeedTarget | None:
    """The manifest's own swarm (its derived torrent) over ``folder``, for a hand-started seed,
    unless ``seeded`` has it already: pulls that know no torrent meet there, so a seeder of only
    the published (hybrid) torrent is never found by them.

    Only with real piece hashes (a manifest with ``sha1``): that torrent is checked by libtorrent
    like any other. A placeholder one would need a session with hash checks off, in which the
    other torrents' pieces would go out unchecked too (seed mode checks each before its first
    upload); it is seeded where a pull left it as the folder's torrent (``seed_targets_in``).
    """
    derived = derived_torrent(manifest)
    if derived is None or derived.derived or any(_same_torrent(t.torrent, derived) for t in seeded):
        return None
    return SeedTarget(derived, folder)


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
    from dsmirror._verify.digest import hash_file_pieces, hash_local_file

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
        entries.append(FileEntry(f.path, f.size, sha, NoPieceHashes(-(-f.size // ps))))
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


def seed_after_pull(
    pull: Generator[Event, None, Pulled | None], *, clock: Clock | None = None
) -> Iterator[Event]:
    """``pull --seed``: the events of ``pull`` (``dsmirror._pull.pull`` or ``run_plan``), then, if
    it was asked to seed (``SwarmConfig.seed``), seeding what it installed until interrupted.

    The pull's session is reused when it left one open (see ``seed``); otherwise the model's
    torrent is made from the verified files and saved for ``dsmirror seed DEST``.
    """
    pulled = yield from pull
    if pulled is None or not pulled.swarm.seed:
        return
    if pulled.torrent is not None:  # a pull from peers alone
        done = pulled.torrent
        target = SeedTarget(done.torrent, done.dest)
        yield from seed([target], pulled.swarm, session=done.session, clock=clock)
        return
    plan = pulled.plan
    sw = plan.swarms[0] if plan.swarms else None  # its session and torrent are reused
    torrent = sw.torrent if isinstance(sw, SwarmSource) else None
    session = sw.session if isinstance(sw, SwarmSource) and not sw.session.closed else None
    running = sw.take_live() if isinstance(sw, SwarmSource) else None
    live = [running] if running is not None and session is not None else []
    if running is not None and not live:  # its session is gone: so is the torrent
        _drop_copy(running)
    if torrent is None:  # the model has no torrent yet: make it from the verified files
        torrent = create_torrent(plan.manifest, plan.dest, verify=False)
        with contextlib.suppress(StorageError):
            torrent.write(PrivateArea(plan.dest).torrent(plan.manifest.sha256))
    targets = [SeedTarget(torrent, plan.dest)]
    derived = derived_torrent(plan.manifest)
    if derived is not None and derived.btih != torrent.btih:
        # Pulls of the manifest that know no torrent meet in its own swarm: seed that one too.
        targets.append(SeedTarget(derived, plan.dest))
    yield from seed(targets, pulled.swarm, session=session, live=live, clock=clock)
