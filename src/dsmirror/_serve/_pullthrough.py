"""Pull-through caching: what the server does not have, it pulls once, verified, and serves as it lands.

A request for a file the index lacks (a Hugging Face repo file, an Ollama blob, a file of a
``--folder`` manifest) starts one ``PullJob``: a dsmirror pull of that one file from the upstream
catalog's mirrors into the store the server serves (the HF cache, the Ollama store, the folder).
Jobs are keyed by the file's final path, so every concurrent request for the same bytes — from
any client, through any repo, commit or tag that names them — waits on the same job, and the
upstream sends the bytes once.

What a waiting client gets, and when (never unverified bytes):

* a file with published piece hashes (a dsmirror manifest): the response starts at once and each
  piece of the requested range is sent as soon as it is verified, read from the partial file;
* a file known only by a whole-file digest (the Hub gives SHA-256 for LFS files and a git blob
  SHA-1 for the others; Ollama gives SHA-256 per blob): the response is held until the whole file
  has verified and been renamed into place, then it is sent like any cached file. A failed pull
  is answered with 502, so the client's own retry starts a fresh job;
* HEAD is answered at once from the upstream metadata (sizes and digests), without a pull.

Where pulled bytes go (the layouts the user's tools read, so ``hf``/``ollama`` see them too)::

    <HF cache>/models--<org>--<name>/
        blobs/<etag>                         the verified file (etag: sha256 or git blob sha1)
        snapshots/<commit>/<path>            relative symlink -> ../../blobs/<etag>, made after
        refs/<branch>                        the commit, written with the first file of a snapshot
        .dsmirror/partial/<mid>/...          the engine's partial area while pulling (see _store)
    <Ollama store>/blobs/sha256-<hex>        the verified blob
    <Ollama store>/manifests/<host>/<ns>/<name>/<tag>
                                             the manifest bytes as the upstream sent them, written
                                             only once every blob it names is in place
    <Ollama store>/.dsmirror/partial/...     (never a partial file in blobs/: Ollama prunes there)
    <folder>/<path>                          (partial area in <folder>/.dsmirror/)

These are the layouts ``_install`` documents for ``dsmirror pull --format hf|ollama``: the
engine's store is opened on the repo folder (or the Ollama store) with manifest paths
``blobs/<name>``, so a finished file is renamed straight into ``blobs/``.

Metadata (HF revision and tree, Ollama manifests) comes from the upstream first while it answers —
a partly cached snapshot must not hide the files still upstream — and from the local index when
the upstream does not know the repo or cannot be reached. Branch lookups are cached for
``metadata_ttl`` seconds, listings of a commit for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from dsmirror._core.errors import AlreadyInProgress, DsmirrorError, IntegrityError, NoSourceError, SourceError
from dsmirror._core.fsutil import atomic_write_bytes, fsync_dir
from dsmirror._fetch.engine import EngineConfig, fetch
from dsmirror._fetch.http import USER_AGENT, HttpSource
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import Catalog, Mirror, plain_url_for
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest, Piece
from dsmirror._formats.ollama import MANIFEST_V2, parse_ollama_manifest
from dsmirror._journal.store import Store
from dsmirror._resolve.plan import PullOptions, source_info
from dsmirror._schedule.info import SourceInfo
from dsmirror._schedule.scheduler import SchedulerConfig
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._folder_index import ManifestFolder
from dsmirror._serve._hf_index import HfRepo, ServedFile
from dsmirror._serve._ollama_index import OllamaModel

__all__ = ["PullJob", "PullThrough", "Upstream"]

logger = logging.getLogger(__name__)

_MAX_METADATA = 64 << 20
_MAX_SMALL_FILE = 64 << 20


@dataclass(frozen=True)
class Upstream:
    """The catalog mirrors a pull-through may use, by kind, and the token for official HF hosts."""

    hf: tuple[Mirror, ...] = ()
    ollama: tuple[Mirror, ...] = ()
    http: tuple[Mirror, ...] = ()
    hf_token: str | None = None

    @classmethod
    def from_catalog(cls, catalog: Catalog, *, hf_token: str | None = None) -> Upstream:
        return cls(
            hf=catalog.mirrors_of_kind("hf"),
            ollama=catalog.mirrors_of_kind("ollama"),
            http=catalog.mirrors_of_kind("http"),
            hf_token=hf_token,
        )

    def hf_headers(self, mirror: Mirror) -> dict[str, str]:
        # The token goes to the official Hub only, never to a third-party mirror.
        if self.hf_token and mirror.official:
            return {"Authorization": f"Bearer {self.hf_token}"}
        return {}


def _source_info(m: Mirror) -> SourceInfo:
    return source_info(m, PullOptions())


def _base(m: Mirror) -> str:
    return m.url.rstrip("/")


# --- jobs -------------------------------------------------------------------------------------


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
        self.cancel = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pulse: asyncio.Event | None = None
        self.on_done: list[Callable[[], None]] = []
        self.then_keys: set[str] = set()
        self._callbacks_lock = threading.Lock()

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
            logger.warning("pull-through of %s failed: %s", self.label, exc)
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
                        self.state = "done"
                        break
                for cb in callbacks:
                    try:
                        cb()
                    except Exception:
                        logger.exception("after pulling %s", self.label)
        else:
            with self._callbacks_lock:
                self.error = error
                self.state = "failed"
                self.on_done = []
        self.notify()

    def when_done(self, cb: Callable[[], None]) -> None:
        """Run ``cb`` once the file is in place (now, if it already is)."""
        with self._callbacks_lock:
            if self.state not in ("done", "failed"):
                self.on_done.append(cb)
                return
        if self.state == "done":
            cb()

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

        def ready() -> bool:
            store = self.store
            return store is not None and not store.closed and store.is_done(piece.index)

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
        return {
            "file": self.label,
            "state": self.state,
            "size": self.size,
            "verified_bytes": self.verified_bytes(),
            "streams_pieces": self.streams_pieces,
            "started_at": self.started_at,
            "error": str(self.error) if self.error is not None else None,
        }


def _one_file_manifest(name: str, path: str, size: int, sha256: str, piece_size: int) -> Manifest:
    count = -(-size // piece_size)
    return Manifest(name[:200], piece_size, (FileEntry(path, size, sha256, ("",) * count),))


def _engine_pull(
    job: PullJob, manifest: Manifest, dest: Path, sources: list[Source], config: EngineConfig
) -> None:
    """Run the engine for ``manifest`` into ``dest`` (job thread); stop early if the job is cancelled."""
    try:
        with Store.open(dest, manifest) as store:
            job.store = store
            events = fetch(manifest, sources, store, config=config)
            try:
                for _ in events:
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


def _already_there(path: Path, size: int, sha256: str) -> bool:
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


def _symlink_atomic(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


# --- the pull-through service -------------------------------------------------------------------


@dataclass
class _Cached:
    expires: float
    value: Any


@dataclass
class _OllamaPending:
    model: OllamaModel
    blobs_dir: Path
    manifest_path: Path


@dataclass
class PullThrough:
    """Starts, shares and tracks pull-through jobs; answers metadata from the upstream.

    Call ``start`` on the server's event loop before use and ``close`` when stopping.
    ``on_installed`` is awaited-for-nothing: it is called (from a job thread) after anything new
    is in place, so the server can rescan.
    """

    upstream: Upstream
    hf_cache: Path | None = None
    ollama_models: Path | None = None
    digests: DigestCache = field(default_factory=DigestCache)
    on_installed: Callable[[], None] | None = None
    max_parallel: int = 4
    #: Piece size of pulls of files known by a whole-file digest only (the unit of resuming).
    piece_size: int = DEFAULT_PIECE_SIZE
    metadata_ttl: float = 60.0
    negative_ttl: float = 10.0
    timeout: float = 20.0
    engine: EngineConfig = field(
        default_factory=lambda: EngineConfig(
            max_connections=16, progress_interval=0.05, scheduler=SchedulerConfig(give_up_after=60.0)
        )
    )
    transport: httpx.AsyncBaseTransport | None = None

    def __post_init__(self) -> None:
        self._jobs: dict[Path, PullJob] = {}
        self._installed: set[Path] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="dsmirror-pt")
        self._meta: dict[tuple[str, ...], _Cached] = {}
        self._inflight: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        self._ollama_pending: dict[Path, _OllamaPending] = {}
        #: Branches the upstream said point at a commit: written as refs/ with its files.
        self._branches: dict[tuple[str, str], set[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        if self.hf_cache is not None:
            self.hf_cache = self.hf_cache.resolve()
        if self.ollama_models is not None:
            self.ollama_models = self.ollama_models.resolve()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=True,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            transport=self.transport,
            trust_env=True,
        )

    async def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self._pool.shutdown(wait=True, cancel_futures=True))
        if self._client is not None:
            await self._client.aclose()

    # -- bookkeeping ------------------------------------------------------------------------

    def installed(self, path: Path) -> bool:
        """Whether ``path`` is a file a finished job verified and put in place."""
        with self._lock:
            return path in self._installed

    def jobs(self) -> list[PullJob]:
        with self._lock:
            return list(self._jobs.values())

    def status(self) -> dict[str, Any]:
        return {
            "upstream": {
                "hf": [m.url for m in self.upstream.hf],
                "ollama": [m.url for m in self.upstream.ollama],
                "http": [m.url for m in self.upstream.http],
            },
            "pulls": [job.status() for job in self.jobs()],
        }

    def _job(
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
                job = PullJob(final_path, size, work, label=label, manifest=manifest)
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
            self._pool.submit(job.run)
        return job

    def _mark_installed(self, path: Path) -> None:
        with self._lock:
            self._installed.add(path)
        if self.on_installed is not None:
            self.on_installed()

    async def _single_flight(
        self, key: tuple[str, ...], ttl_of: Callable[[Any], float], make: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Cached metadata: concurrent callers share one upstream request."""
        now = time.monotonic()
        cached = self._meta.get(key)
        if cached is not None and cached.expires > now:
            return cached.value
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(make())
            self._inflight[key] = fut
            try:
                value = await asyncio.shield(fut)
            finally:
                self._inflight.pop(key, None)
            if len(self._meta) > 4096:
                self._meta.clear()
            self._meta[key] = _Cached(time.monotonic() + ttl_of(value), value)
            return value
        return await asyncio.shield(fut)

    async def _get(self, url: str, headers: dict[str, str]) -> httpx.Response | None:
        assert self._client is not None, "PullThrough.start() was not called"
        try:
            async with self._client.stream("GET", url, headers=headers) as resp:
                body = b""
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > _MAX_METADATA:
                        logger.warning("upstream %s: metadata larger than %d bytes", url, _MAX_METADATA)
                        return None
                return httpx.Response(
                    resp.status_code, headers=resp.headers, content=body, request=resp.request
                )
        except httpx.HTTPError as exc:
            logger.warning("upstream %s: %s", url, exc)
            return None

    # -- Hugging Face -------------------------------------------------------------------------

    def _hf_repo_dir(self, repo_id: str) -> Path:
        assert self.hf_cache is not None
        return self.hf_cache / ("models--" + repo_id.replace("/", "--"))

    async def hf_repo(self, repo_id: str, revision: str) -> HfRepo | None:
        """The repo at ``revision`` as the upstream lists it, or None if no upstream knows it."""
        if not self.upstream.hf or self.hf_cache is None:
            return None
        is_commit = len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)

        def ttl(value: HfRepo | None) -> float:
            if value is None:
                return self.negative_ttl
            return 365 * 86400.0 if is_commit else self.metadata_ttl

        repo: HfRepo | None = await self._single_flight(
            ("hf", repo_id, revision), ttl, lambda: self._fetch_hf_repo(repo_id, revision)
        )
        return repo

    async def _fetch_hf_repo(self, repo_id: str, revision: str) -> HfRepo | None:
        for mirror in self.upstream.hf:
            base, headers = _base(mirror), self.upstream.hf_headers(mirror)
            info = await self._get(
                f"{base}/api/models/{repo_id}/revision/{quote(revision, safe='')}", headers
            )
            if info is None or info.status_code != 200:
                continue
            try:
                commit = str(info.json()["sha"])
            except (ValueError, KeyError, TypeError):
                logger.warning("upstream %s: no commit in the revision info of %s", mirror.name, repo_id)
                continue
            entries = await self._hf_tree(base, headers, repo_id, commit)
            if entries is None:
                continue
            try:
                return self._hf_repo_from_tree(repo_id, revision, commit, entries)
            except ValueError as exc:
                logger.warning("upstream %s: unusable listing of %s: %s", mirror.name, repo_id, exc)
        return None

    async def _hf_tree(
        self, base: str, headers: dict[str, str], repo_id: str, commit: str
    ) -> list[dict[str, Any]] | None:
        url: str | None = f"{base}/api/models/{repo_id}/tree/{commit}?recursive=true&expand=false"
        entries: list[dict[str, Any]] = []
        pages = 0
        while url:
            resp = await self._get(url, headers)
            if resp is None or resp.status_code != 200:
                return None
            page = resp.json()
            if not isinstance(page, list):
                return None
            entries += [e for e in page if isinstance(e, dict)]
            url = resp.links.get("next", {}).get("url")
            pages += 1
            if url and urlsplit(url).netloc != urlsplit(base).netloc:
                return None  # paging must stay on the mirror that answered
            if pages > 10_000:
                return None
        return entries

    def _hf_repo_from_tree(
        self, repo_id: str, revision: str, commit: str, entries: list[dict[str, Any]]
    ) -> HfRepo:
        blobs = self._hf_repo_dir(repo_id) / "blobs"
        files: dict[str, ServedFile] = {}
        for e in entries:
            if e.get("type") != "file":
                continue
            path, size, oid, lfs = e.get("path"), e.get("size"), e.get("oid"), e.get("lfs")
            if not isinstance(path, str) or not isinstance(size, int):
                continue
            try:
                if isinstance(lfs, dict) and isinstance(lfs.get("oid"), str):
                    sha256 = str(lfs["oid"])
                    files[path] = ServedFile(path, blobs / sha256, size, sha256, None, lfs=True)
                elif isinstance(oid, str):
                    files[path] = ServedFile(path, blobs / oid, size, None, oid, lfs=False)
            except ValueError as exc:
                logger.warning("skipping %s of %s: %s", path, repo_id, exc)
        refs = {} if revision == commit else {revision: commit}
        if refs:
            with self._lock:
                self._branches.setdefault((repo_id, commit), set()).add(revision)
        return HfRepo(repo_id=repo_id, commit=commit, refs=refs, files=files)

    def hf_job(self, repo: HfRepo, f: ServedFile) -> PullJob:
        """Pull ``f`` of ``repo`` into the HF cache (or join the pull already doing it)."""
        repo_dir = self._hf_repo_dir(repo.repo_id)
        link = repo_dir / "snapshots" / repo.commit / f.path

        def install_link() -> None:
            depth = f.path.count("/")
            _symlink_atomic(link, "/".join([".."] * (depth + 2) + ["blobs", f.etag]))
            # Clients download by commit; the branch they asked for came with the revision call.
            with self._lock:
                branches = set(repo.refs) | self._branches.get((repo.repo_id, repo.commit), set())
            for ref in sorted(branches):
                atomic_write_bytes(repo_dir / "refs" / ref, repo.commit.encode())

        mirrors = self.upstream.hf
        if f.lfs:
            assert f.sha256 is not None
            manifest = _one_file_manifest(
                f"{repo.repo_id}@{repo.commit}/{f.path}", f"blobs/{f.etag}", f.size, f.sha256, self.piece_size
            )

            def url_for(m: Mirror) -> Callable[[FileEntry], str]:
                url = f"{_base(m)}/{repo.repo_id}/resolve/{repo.commit}/{quote(f.path)}"
                return lambda _file: url

            def work(job: PullJob) -> None:
                if _already_there(f.disk_path, f.size, f.etag):
                    return
                sources: list[Source] = [
                    HttpSource(_source_info(m), url_for(m), headers=self.upstream.hf_headers(m))
                    for m in mirrors
                ]
                _engine_pull(job, manifest, repo_dir, sources, self.engine)

        else:
            manifest = None

            def work(job: PullJob) -> None:
                self._pull_git_blob(repo, f, mirrors)

        return self._job(
            f.disk_path,
            f.size,
            work,
            label=f"{repo.repo_id}/{f.path}",
            manifest=manifest,
            then=(f"{repo.repo_id}@{repo.commit}/{f.path}", install_link),
        )

    def _pull_git_blob(self, repo: HfRepo, f: ServedFile, mirrors: Sequence[Mirror]) -> None:
        """A small non-LFS file: fetched whole, checked against its git blob id, then put in place."""
        if f.size > _MAX_SMALL_FILE:
            raise IntegrityError(f"{f.path}: a {f.size}-byte non-LFS file is too large to pull through")
        errors: list[str] = []
        for m in mirrors:
            url = f"{_base(m)}/{repo.repo_id}/resolve/{repo.commit}/{quote(f.path)}"
            try:
                with httpx.Client(
                    timeout=self.timeout,
                    follow_redirects=True,
                    headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                ) as client:
                    r = client.get(url, headers=self.upstream.hf_headers(m))
            except httpx.HTTPError as exc:
                errors.append(f"{m.name}: {exc}")
                continue
            if r.status_code != 200:
                errors.append(f"{m.name}: HTTP {r.status_code}")
                continue
            data = r.content
            git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            if len(data) != f.size or git != f.git_sha1:
                errors.append(f"{m.name}: sent bytes that do not match the git blob id {f.git_sha1}")
                continue
            atomic_write_bytes(f.disk_path, data)
            self.digests.prime(f.disk_path, hashlib.sha256(data).hexdigest(), git)
            return
        raise NoSourceError(f"no upstream could deliver {repo.repo_id}/{f.path}: {'; '.join(errors)}")

    # -- Ollama -----------------------------------------------------------------------------

    async def ollama_model(self, namespace: str, name: str, tag: str) -> OllamaModel | None:
        """The model by tag as the first answering upstream registry has it."""
        if not self.upstream.ollama or self.ollama_models is None:
            return None

        def ttl(value: OllamaModel | None) -> float:
            return self.negative_ttl if value is None else self.metadata_ttl

        model: OllamaModel | None = await self._single_flight(
            ("ollama", namespace, name, tag), ttl, lambda: self._fetch_ollama(namespace, name, tag)
        )
        return model

    async def _fetch_ollama(self, namespace: str, name: str, tag: str) -> OllamaModel | None:
        assert self.ollama_models is not None
        for mirror in self.upstream.ollama:
            url = f"{_base(mirror)}/v2/{namespace}/{name}/manifests/{tag}"
            resp = await self._get(url, {"Accept": MANIFEST_V2})
            if resp is None or resp.status_code != 200:
                continue
            try:
                blobs_dir = self.ollama_models / "blobs"
                listed = parse_ollama_manifest(resp.content)
                store = self.ollama_models
                blobs: dict[str, Path | bytes] = {f"sha256:{b.sha256}": store / b.path for b in listed}
                host = mirror.host if urlsplit(mirror.url).port is None else urlsplit(mirror.url).netloc
                model = OllamaModel(host, namespace, name, tag, resp.content, blobs)
            except ValueError as exc:
                logger.warning(
                    "upstream %s: unusable manifest for %s/%s:%s: %s", mirror.name, namespace, name, tag, exc
                )
                continue
            manifest_path = self.ollama_models / "manifests" / model.host / namespace / name / tag
            with self._lock:
                self._ollama_pending[manifest_path] = _OllamaPending(model, blobs_dir, manifest_path)
            return model
        return None

    def ollama_blob(self, namespace: str, name: str, digest: str) -> tuple[Path, int] | None:
        """Where a blob of a manifest fetched through us goes, and its size (None: never seen)."""
        with self._lock:
            pending = list(self._ollama_pending.values())
        for p in pending:
            if (p.model.namespace, p.model.name) == (namespace, name) and (
                size := p.model.blob_size(digest)
            ) is not None:
                blob = p.model.blobs[digest]
                assert isinstance(blob, Path)
                return blob, size
        return None

    def ollama_job(self, namespace: str, name: str, digest: str, path: Path, size: int) -> PullJob:
        hexdigest = digest.removeprefix("sha256:")
        manifest = _one_file_manifest(
            f"{namespace}/{name}@{digest}", f"blobs/{path.name}", size, hexdigest, self.piece_size
        )
        mirrors = self.upstream.ollama

        def url_for(m: Mirror) -> Callable[[FileEntry], str]:
            url = f"{_base(m)}/v2/{namespace}/{name}/blobs/{digest}"
            return lambda _file: url

        def work(job: PullJob) -> None:
            if _already_there(path, size, hexdigest):
                return
            sources: list[Source] = [HttpSource(_source_info(m), url_for(m)) for m in mirrors]
            _engine_pull(job, manifest, path.parent.parent, sources, self.engine)

        return self._job(
            path,
            size,
            work,
            label=f"{namespace}/{name}@{digest}",
            manifest=manifest,
            then=("ollama-manifests", self._write_complete_ollama_manifests),
        )

    def _write_complete_ollama_manifests(self) -> None:
        """Write the manifest of every model fetched through us whose blobs are now all in place."""
        with self._lock:
            pending = list(self._ollama_pending.values())
        for p in pending:
            complete = all(
                isinstance(blob, Path) and blob.is_file() and blob.stat().st_size == layer.size
                for layer in p.model.layers
                for blob in [p.model.blobs[layer.digest]]
            )
            if complete:
                atomic_write_bytes(p.manifest_path, p.model.manifest)
                with self._lock:
                    self._ollama_pending.pop(p.manifest_path, None)

    # -- dsmirror manifest folders -------------------------------------------------------------

    def can_fill_folders(self) -> bool:
        return bool(self.upstream.http)

    def folder_job(self, folder: ManifestFolder, path: str) -> PullJob:
        """Pull one file of a served manifest folder from the catalog's plain mirrors."""
        entry = folder.manifest.file(path)
        final = folder.root / entry.path
        manifest = Manifest(folder.manifest.name, folder.manifest.piece_size, (entry,))
        mirrors = self.upstream.http

        def work(job: PullJob) -> None:
            sources: list[Source] = [HttpSource(_source_info(m), plain_url_for(m.url)) for m in mirrors]
            _engine_pull(job, manifest, folder.root, sources, self.engine)
            self.digests.prime(final, entry.sha256)

        return self._job(final, entry.size, work, label=f"{folder.name}/{path}", manifest=manifest)


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
