"""One pull of one file, shared by every request for it (``PullJob``), and the table of them.

A job is keyed by the file's final path (``JobBoard.job``): every concurrent request for the same
bytes, through any repo, commit or tag that names them, joins the one job, so the upstream sends
them once. A job runs the fetch engine in a worker thread (``run_engine``) and leaves a verified
file at its final path, or fails; a failed job is replaced by the next request for it. Requests
wait on the event loop, woken by the job thread on every engine event.

Each job keeps the engine's last progress for the status page, with each source's rate over the
last ``RATE_WINDOW`` seconds (from the bytes it delivered, as the engine's events tell), and the
board counts what the upstream sent, by source (``JobBoard.fetched``: the verified bytes each
source delivered, from the engine's events) and how many pulls ended how (``JobBoard.finished``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dsmirror._core.errors import AlreadyInProgress, DsmirrorError, IntegrityError, NoSourceError, SourceError
from dsmirror._core.events import Event, PieceRejected, Progress, PullFinished, SourceDropped
from dsmirror._fetch.engine import EngineConfig, fetch
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes, Piece
from dsmirror._journal.store import Store
from dsmirror._schedule.scheduler import Scheduler
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._upstream import UpstreamMetadata

__all__ = [
    "JobBoard",
    "PullContext",
    "PullJob",
    "already_there",
    "iter_pieces",
    "one_file_manifest",
    "pull_error_status",
    "run_engine",
]

logger = logging.getLogger(__name__)

#: Seconds over which a pull's per-source rates are measured (from what each source delivered).
RATE_WINDOW = 3.0


class PullJob:
    """One verified pull of one file into its final path; shared by every request for it.

    ``work`` runs in a worker thread and must leave a verified file at ``final_path`` or raise.
    When ``manifest`` has piece hashes, ``wait_piece``/``open_reader`` let requests stream each
    verified piece from the partial file before the whole file is done.
    """

    def __init__(
        self,
        final_path: Path,
        size: int,
        work: Callable[[PullJob], None],
        *,
        label: str,
        manifest: Manifest | None = None,
        on_fetched: Callable[[str, int], None] | None = None,
        on_finished: Callable[[str], None] | None = None,
    ) -> None:
        self.final_path = final_path
        self.size = size
        self.label = label
        self.manifest = manifest
        self._work = work
        self.state = "queued"  # queued -> running -> done | failed
        self.error: BaseException | None = None
        self.started_at = time.time()
        self.store: Store | None = None
        self.sched: Scheduler | None = None  # the engine's, once it runs: told which piece a reader needs
        self.cancel = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pulse: asyncio.Event | None = None
        self.on_done: list[Callable[[], None]] = []
        self.then_keys: set[str] = set()
        self._callbacks_lock = threading.Lock()
        #: The engine's last progress event (rates, sources); None before the first.
        self.progress: Progress | None = None
        self._on_fetched = on_fetched
        self._on_finished = on_finished
        self._delivered: dict[str, int] = {}
        self._seen: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        self._seen_lock = threading.Lock()

    # -- running (worker thread) ------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pulse = asyncio.Event()

    def run(self) -> None:
        if self.cancel.is_set():
            self._finish(DsmirrorError("the server is stopping"))
            return
        self.state = "running"
        self.notify()
        try:
            self._work(self)
        except BaseException as exc:  # reported to every waiting request
            hint = exc.hint if isinstance(exc, DsmirrorError) else None
            logger.warning("pull-through of %s failed: %s", self.label, exc, extra={"hint": hint})
            self._finish(exc)
            return
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        # The state turns "done" only after every callback ran (the snapshot link is made, the
        # file is marked servable): a waiter that sees "done" can serve the file at once.
        if error is None:
            while True:
                with self._callbacks_lock:
                    callbacks, self.on_done = self.on_done, []
                    if not callbacks:
                        self._ended("done")
                        break
                for cb in callbacks:
                    try:
                        cb()
                    except Exception:
                        logger.exception("after pulling %s", self.label)
        else:
            with self._callbacks_lock:
                self.error = error
                self._ended("failed")
                self.on_done = []
        self.notify()

    def _ended(self, state: str) -> None:
        # Counted before the state changes: whoever sees the job ended sees it counted.
        if self._on_finished is not None:
            self._on_finished(state)
        self.state = state

    def when_done(self, cb: Callable[[], None]) -> None:
        """Run ``cb`` once the file is in place (now, if it already is)."""
        with self._callbacks_lock:
            if self.state not in ("done", "failed"):
                self.on_done.append(cb)
                return
        if self.state == "done":
            cb()

    def observe(self, event: Event) -> None:
        """(job thread) Keep the engine's progress and count what each source delivered."""
        if isinstance(event, Progress):
            self.progress = event
            delivered = {s.name: s.delivered for s in event.sources}
            self._count_delivered(delivered)
            now = time.monotonic()
            with self._seen_lock:
                self._seen.append((now, delivered))
                while self._seen and self._seen[0][0] < now - RATE_WINDOW:
                    self._seen.popleft()
        elif isinstance(event, PullFinished):
            self._count_delivered(event.delivered_by_source)
        elif isinstance(event, PieceRejected):
            logger.warning(
                "pull-through of %s: %s sent a bad piece: %s", self.label, event.source, event.reason
            )
        elif isinstance(event, SourceDropped):
            logger.warning("pull-through of %s: dropped %s: %s", self.label, event.source, event.reason)

    def source_rates(self) -> dict[str, float]:
        """Bytes/s each source delivered over the last ``RATE_WINDOW`` seconds (0 once it stalls)."""
        now = time.monotonic()
        with self._seen_lock:
            seen = [(t, d) for t, d in self._seen if t >= now - RATE_WINDOW]
        if len(seen) < 2 or self.state != "running":
            return {}
        (t0, first), (_, last) = seen[0], seen[-1]
        span = max(now - t0, 0.5)
        return {name: max(0, n - first.get(name, 0)) / span for name, n in last.items()}

    def _count_delivered(self, delivered: dict[str, int]) -> None:
        for source, total in delivered.items():
            more = total - self._delivered.get(source, 0)
            if more > 0:
                self._delivered[source] = total
                if self._on_fetched is not None:
                    self._on_fetched(source, more)

    def notify(self) -> None:
        """Wake the requests waiting on this job (callable from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody waits
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        pulse, self._pulse = self._pulse, asyncio.Event()
        if pulse is not None:
            pulse.set()

    # -- waiting (event loop) ------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def streams_pieces(self) -> bool:
        """Whether verified pieces can be served before the whole file is done."""
        m = self.manifest
        return m is not None and m.has_piece_hashes and m.num_pieces > 0

    def verified_bytes(self) -> int:
        if self.state == "done":
            return self.size
        store = self.store
        return store.verified_bytes if store is not None and self.streams_pieces else 0

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            if self.state == "failed":
                assert self.error is not None
                raise self.error
            if self.state == "done":
                return
            pulse = self._pulse
            assert pulse is not None, "bind() the job to the event loop first"
            # The pulse comes from the job thread on every engine event (about every 50 ms);
            # the timeout only guards against a wake-up lost to a race with a new pulse.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pulse.wait(), 0.25)

    async def wait_done(self) -> None:
        await self._until(lambda: False)
        if self.state == "failed":
            assert self.error is not None
            raise self.error

    async def wait_piece(self, piece: Piece) -> None:
        """Return once ``piece`` is verified (or the whole file is done); raise if the pull failed."""

        told = False

        def ready() -> bool:
            nonlocal told
            store = self.store
            if store is not None and not store.closed and store.is_done(piece.index):
                return True
            sched = self.sched
            if sched is not None and not told:
                # Fetched first, or raced if its connection would bring it late (``_schedule.urgent``).
                sched.hurry(piece.index)
                told = True
            return False

        await self._until(ready)

    def open_reader(self) -> BinaryIO:
        """A file object reading verified bytes: the partial file while pulling, else the final one.

        An open descriptor of the partial file stays valid when it is renamed into place.
        """
        store = self.store
        if self.state != "done" and store is not None and self.manifest is not None:
            with contextlib.suppress(FileNotFoundError):
                return open(store.data_dir / self.manifest.files[0].path, "rb", buffering=0)
        # Unbuffered: a buffered reader would read ahead into pieces not verified yet and serve
        # those stale bytes when the next piece is read.
        return open(self.final_path, "rb", buffering=0)

    def status(self) -> dict[str, Any]:
        p = self.progress
        running = self.state == "running" and p is not None
        rates = self.source_rates()
        return {
            "file": self.label,
            "state": self.state,
            "size": self.size,
            "verified_bytes": self.verified_bytes(),
            "streams_pieces": self.streams_pieces,
            "started_at": self.started_at,
            "error": str(self.error) if self.error is not None else None,
            "hint": self.error.hint if isinstance(self.error, DsmirrorError) else None,
            "received_bytes": p.received_bytes if p is not None else 0,
            "rate": sum(rates.values()),
            "sources": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "rate": rates.get(s.name, 0.0),
                    "delivered": s.delivered,
                    "connections": s.connections if running else 0,
                    "status": s.status,
                }
                for s in (p.sources if p is not None else ())
            ],
        }


class JobBoard:
    """The pull-through's jobs by final path, run by a pool of ``max_parallel`` worker threads.

    ``on_installed`` is called (from a job thread) after a file is in place.
    """

    def __init__(self, max_parallel: int, on_installed: Callable[[], None]) -> None:
        self._jobs: dict[Path, PullJob] = {}
        self._installed: set[Path] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="dsmirror-pt")
        self._on_installed = on_installed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fetched: dict[str, int] = {}
        self._finished = {"done": 0, "failed": 0}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the waiting requests run on (the server's)."""
        self._loop = loop

    def installed(self, path: Path) -> bool:
        """Whether ``path`` is a file a finished job verified and put in place."""
        with self._lock:
            return path in self._installed

    def jobs(self) -> list[PullJob]:
        with self._lock:
            return list(self._jobs.values())

    def count_fetched(self, source: str, n: int) -> None:
        """(any thread) ``n`` more bytes came from upstream source ``source``."""
        with self._lock:
            self._fetched[source] = self._fetched.get(source, 0) + n

    def fetched(self) -> dict[str, int]:
        """Bytes received from upstream since the server started, by source name."""
        with self._lock:
            return dict(self._fetched)

    def finished(self) -> dict[str, int]:
        """How many pulls ended since the server started: ``{"done": n, "failed": n}``."""
        with self._lock:
            return dict(self._finished)

    def job(
        self,
        final_path: Path,
        size: int,
        work: Callable[[PullJob], None],
        *,
        label: str,
        manifest: Manifest | None = None,
        then: tuple[str, Callable[[], None]] | None = None,
    ) -> PullJob:
        """The job for ``final_path``: the running one, or a new one (a failed one is replaced).

        ``then`` is ``(key, callback)``: run once the file is in place, once per key and job (a
        second repo or commit naming the same blob adds its own snapshot link).
        """
        assert self._loop is not None, "PullThrough.start() was not called"
        with self._lock:
            job = self._jobs.get(final_path)
            new = job is None or job.state == "failed"
            if job is None or new:
                job = PullJob(
                    final_path,
                    size,
                    work,
                    label=label,
                    manifest=manifest,
                    on_fetched=self.count_fetched,
                    on_finished=self._count_finished,
                )
                job.bind(self._loop)
                self._jobs[final_path] = job
            fresh_key = then is not None and then[0] not in job.then_keys
            if then is not None:
                job.then_keys.add(then[0])
        if new or fresh_key:

            def finished() -> None:
                if then is not None:
                    then[1]()
                self._mark_installed(final_path)

            job.when_done(finished)
        if new:
            self._pool.submit(self._run, job)
        return job

    def _count_finished(self, state: str) -> None:
        with self._lock:
            self._finished[state] += 1

    def _run(self, job: PullJob) -> None:
        job.run()
        if job.state == "done":
            logger.info("pulled %s (%d bytes) in %.1f s", job.label, job.size, time.time() - job.started_at)

    def _mark_installed(self, path: Path) -> None:
        with self._lock:
            self._installed.add(path)
        self._on_installed()

    async def close(self) -> None:
        """Cancel every job (their verified pieces are kept) and wait for the workers."""
        for job in self.jobs():
            job.cancel.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self._pool.shutdown(wait=True, cancel_futures=True))


@dataclass(frozen=True)
class PullContext:
    """What each side of the pull-through (HF, Ollama, folders) shares, and how it pulls."""

    board: JobBoard
    metadata: UpstreamMetadata
    digests: DigestCache
    #: Piece size of pulls of files known by a whole-file digest only (the unit of resuming).
    piece_size: int
    engine: EngineConfig
    #: Bounds each upstream request (metadata, small files).
    timeout: float
    #: How long a branch's commit and an Ollama tag's manifest are believed; a miss, ``negative_ttl``.
    metadata_ttl: float
    negative_ttl: float


def one_file_manifest(name: str, path: str, size: int, sha256: str, piece_size: int) -> Manifest:
    """A manifest of one file known by its whole-file SHA-256 only (no piece hashes)."""
    count = -(-size // piece_size)
    return Manifest(name[:200], piece_size, (FileEntry(path, size, sha256, NoPieceHashes(count)),))


def run_engine(
    job: PullJob, manifest: Manifest, dest: Path, sources: list[Source], config: EngineConfig
) -> None:
    """Run the engine for ``manifest`` into ``dest`` (job thread); stop early if the job is cancelled."""
    try:
        with Store.open(dest, manifest) as store:
            job.store = store
            events = fetch(
                manifest, sources, store, config=config, on_sources=lambda s: setattr(job, "sched", s)
            )
            try:
                for event in events:
                    job.observe(event)
                    job.notify()
                    if job.cancel.is_set():
                        raise DsmirrorError("the server is stopping; verified pieces are kept")
            finally:
                # Stops the engine's connections at once (fetch's own finally shuts it down).
                close = getattr(events, "close", None)
                if close is not None:
                    close()
    finally:
        for s in sources:
            s.close()


def already_there(path: Path, size: int, sha256: str) -> bool:
    """Whether a file with this content is already at ``path`` (verified by hashing it)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != size:
            return False
    except OSError:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest() == sha256


def pull_error_status(exc: BaseException) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) that tells a client a pull-through failed and may be retried."""
    if isinstance(exc, AlreadyInProgress):
        return 503, {"Retry-After": "30"}
    if isinstance(exc, SourceError | NoSourceError | IntegrityError):
        return 502, {}
    return 503, {"Retry-After": "5"}


def iter_pieces(manifest: Manifest, start: int, stop: int) -> Iterator[Piece]:
    """The pieces of a one-file manifest that overlap bytes ``[start, stop)``."""
    if stop <= start:
        return
    size = manifest.piece_size
    for index in range(start // size, (stop - 1) // size + 1):
        yield manifest.pieces[index]
