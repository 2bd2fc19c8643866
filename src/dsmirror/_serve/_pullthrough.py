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
        .dsmirror/partial/<mid>/...          the engine's partial area while pulling (_journal.store)
    <Ollama store>/blobs/sha256-<hex>        the verified blob
    <Ollama store>/manifests/<host>/<ns>/<name>/<tag>
                                             the manifest bytes as the upstream sent them, written
                                             only once every blob it names is in place
    <Ollama store>/.dsmirror/partial/...     (never a partial file in blobs/: Ollama prunes there)
    <folder>/<path>                          (partial area in <folder>/.dsmirror/)

These are the layouts ``dsmirror pull --format hf|ollama`` writes (``dsmirror._formats.hfcache``,
``dsmirror._formats.ollama``, ``dsmirror._formats.private``): the engine's store is opened on the
repo folder (or the Ollama store) with manifest paths ``blobs/<name>``, so a finished file is
renamed straight into ``blobs/``.

Metadata (HF revision and tree, Ollama manifests) comes from the upstream first while it answers —
a partly cached snapshot must not hide the files still upstream — and from the local index when
the upstream does not know the repo or cannot be reached. It is asked through the registry clients
``dsmirror pull`` uses, so both read each format the same way. Branch lookups are cached for
``metadata_ttl`` seconds, listings of a commit for the life of the process.

The parts: ``PullThrough`` (here) assembles them and pulls the files of ``--folder`` manifests;
``_hf_pullthrough`` and ``_ollama_pullthrough`` are the two registry sides; ``_pulljob`` holds the
jobs, ``_upstream`` the mirrors and the metadata cache.

Documented in docs/formats.md#the-pull-through-cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsmirror._fetch.engine import EngineConfig
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import plain_url_for
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, Manifest
from dsmirror._resolve.plan import PullOptions, source_info
from dsmirror._schedule.scheduler import SchedulerConfig
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._folder_index import ManifestFolder
from dsmirror._serve._hf_pullthrough import HfPullThrough
from dsmirror._serve._ollama_pullthrough import OllamaPullThrough
from dsmirror._serve._pulljob import JobBoard, PullContext, PullJob, run_engine
from dsmirror._serve._upstream import Upstream, UpstreamMetadata

__all__ = ["PullJob", "PullThrough", "Upstream"]

_DEFAULT_ENGINE = EngineConfig(
    max_connections=16, progress_interval=0.05, scheduler=SchedulerConfig(give_up_after=60.0)
)


@dataclass
class PullThrough:
    """Starts, shares and tracks pull-through jobs; answers metadata from the upstream.

    Call ``start`` on the server's event loop before use and ``close`` when stopping. The fields
    are read when it is made, except ``on_installed``: it is called (from a job thread) after
    anything new is in place, so the server can rescan. ``hf`` and ``ollama`` are the two
    registry sides (see their modules).
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
    #: How the jobs run the engine; None: 16 connections, give up after 60 s without progress.
    engine: EngineConfig | None = None

    def __post_init__(self) -> None:
        if self.hf_cache is not None:
            self.hf_cache = self.hf_cache.resolve()
        if self.ollama_models is not None:
            self.ollama_models = self.ollama_models.resolve()
        self._board = JobBoard(self.max_parallel, self._installed_hook)
        self._metadata = UpstreamMetadata()
        self._ctx = PullContext(
            board=self._board,
            metadata=self._metadata,
            digests=self.digests,
            piece_size=self.piece_size,
            engine=self.engine or _DEFAULT_ENGINE,
            timeout=self.timeout,
            metadata_ttl=self.metadata_ttl,
            negative_ttl=self.negative_ttl,
        )
        self.hf = HfPullThrough(self._ctx, self.upstream, self.hf_cache)
        self.ollama = OllamaPullThrough(self._ctx, self.upstream, self.ollama_models)

    async def start(self) -> None:
        self._board.bind(asyncio.get_running_loop())

    async def close(self) -> None:
        await self._board.close()
        self._metadata.close()

    def _installed_hook(self) -> None:
        if self.on_installed is not None:
            self.on_installed()

    # -- bookkeeping ------------------------------------------------------------------------

    def installed(self, path: Path) -> bool:
        """Whether ``path`` is a file a finished job verified and put in place."""
        return self._board.installed(path)

    def jobs(self) -> list[PullJob]:
        return self._board.jobs()

    def fetched(self) -> dict[str, int]:
        """Bytes received from upstream since the server started, by source name."""
        return self._board.fetched()

    def finished(self) -> dict[str, int]:
        """How many pulls ended since the server started: ``{"done": n, "failed": n}``."""
        return self._board.finished()

    def status(self) -> dict[str, Any]:
        return {
            "upstream": {
                "hf": [m.url for m in self.upstream.hf],
                "ollama": [m.url for m in self.upstream.ollama],
                "http": [m.url for m in self.upstream.http],
            },
            "pulls": [job.status() for job in self.jobs()],
        }

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
            sources: list[Source] = [
                HttpSource(source_info(m, PullOptions()), plain_url_for(m.url)) for m in mirrors
            ]
            run_engine(job, manifest, folder.root, sources, self._ctx.engine)
            self.digests.prime(final, entry.sha256)

        return self._board.job(final, entry.size, work, label=f"{folder.name}/{path}", manifest=manifest)
