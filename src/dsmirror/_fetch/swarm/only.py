"""Pulls of a magnet link or .torrent that no manifest describes: from peers alone.

A magnet link or .torrent that no catalog manifest names is pulled from peers alone by a
:class:`SwarmOnlyPull` (instead of the engine): the torrent's own hashes check the bytes, files are
installed when all are in, and a manifest is made from them (see the class for the layout).

Seeding afterwards (``pull --seed``) is the caller's step: ``SwarmOnlyPull.run`` returns the
installed torrent and, when asked to seed, the session still open (see :class:`InstalledTorrent`).

Documented in docs/formats.md#the-swarm-bt-btresume-and-torrents.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as lt

from dsmirror._core.clock import Clock, SystemClock
from dsmirror._core.errors import (
    DiskFull,
    DsmirrorError,
    InputError,
    IntegrityError,
    Interrupted,
    ManifestError,
    NoSourceError,
    StorageError,
)
from dsmirror._core.events import (
    Event,
    PieceRejected,
    Progress,
    PullFinished,
    PullStarted,
    SourceProgress,
    SourceTrouble,
)
from dsmirror._core.fsutil import atomic_write_bytes, storage_errors
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.resume import RESUME_EVERY, flush_writes, read_resume, save_resume, write_resume
from dsmirror._fetch.swarm.session import SwarmSession, endpoint_text
from dsmirror._fetch.swarm.torrent import Torrent, file_aligned, load_torrent, torrent_from_info
from dsmirror._formats.manifest import (
    DEFAULT_PIECE_SIZE,
    MAX_PIECE_SIZE,
    MIN_PIECE_SIZE,
    FileEntry,
    Manifest,
    load_manifest,
    parse_manifest,
)
from dsmirror._formats.private import PrivateArea
from dsmirror._install.records import record_dir_install, vouched
from dsmirror._journal.files import install_file, lock_area, write_install_record
from dsmirror._journal.store import SPACE_MARGIN
from dsmirror._verify.digest import hash_file_pieces

if TYPE_CHECKING:
    from dsmirror._core.settings import Settings

__all__ = ["InstalledTorrent", "SwarmOnlyPull"]

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
          lock        flock(2)-ed by the running pull (see ``dsmirror._journal.files.lock_area``)
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
        self,
        config: SwarmConfig,
        *,
        give_up_after: float,
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> Generator[Event, None, InstalledTorrent]:
        """Fetch, install, record; yields the events of any pull and returns what it installed.

        ``config.download_rate`` is the pull's --max-rate; ``give_up_after``: seconds without news
        from any peer before the pull fails. With ``config.seed`` the session is left open for the
        caller to seed with (``InstalledTorrent.session``). ``clock`` times the give-up limit, the
        progress events and the resume saves (libtorrent's alert waits are real time).
        """
        return _SwarmOnlyRun(self, config, give_up_after, settings, clock or SystemClock()).run()


@dataclass(frozen=True)
class InstalledTorrent:
    """What a :class:`SwarmOnlyPull` installed into ``dest``.

    ``session``: the pull's session, still open, when the pull was asked to seed
    (``SwarmConfig.seed``) and fetched something; the caller then owns it and must close it
    (``seed`` closes it when seeding ends). None otherwise.
    """

    manifest: Manifest
    torrent: Torrent
    dest: Path
    session: SwarmSession | None = None


class _SwarmOnlyRun:
    def __init__(
        self,
        job: SwarmOnlyPull,
        config: SwarmConfig,
        give_up_after: float,
        settings: Settings | None,
        clock: Clock,
    ) -> None:
        self.job = job
        self.clock = clock
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
        self.t0 = self.clock.now()

    def run(self) -> Generator[Event, None, InstalledTorrent]:
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
        try:
            yield PullFinished(
                manifest.name,
                str(job.dest),
                tuple(f.path for f in manifest.files),
                self.total,
                fetched,
                self.before,
                self.redundant,
                self.failed,
                self.clock.now() - self.t0,
                {"swarm": fetched} if fetched else {},
            )
        except BaseException:  # the consumer stopped here: the session is not handed over
            if self.session is not None:
                self.session.close()
            raise
        return InstalledTorrent(manifest, torrent, job.dest, self.session if self.config.seed else None)

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
        last_news = self.clock.now()
        while True:  # metadata (a magnet), then libtorrent's check of what bt/ holds
            self._pump(0.1)
            yield from self._drain()
            st = h.status()
            if st.has_metadata and st.state not in _CHECKING:
                break
            if self.clock.now() - last_news > give_up:
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
        last_news = self.clock.now()
        while True:
            self._pump(0.05)
            yield from self._drain()
            st = h.status()
            now = self.clock.now()
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
        area = PrivateArea(job.dest)
        with storage_errors(job.dest):
            record = {
                entry.path: install_file(src, job.dest, entry.path)
                for entry, src in zip(manifest.files, sources, strict=True)
            }
            atomic_write_bytes(area.installed_manifest(manifest.sha256), manifest.canonical_bytes)
            torrent.write(area.torrent(manifest.sha256))
            # The install record last: it is what says the model is in place.
            write_install_record(area.install_record(manifest.sha256), record)
        if self.settings is not None:
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
            intact = intact and vouched(record, f.path, st)
        if intact:
            return m, t
    return None
