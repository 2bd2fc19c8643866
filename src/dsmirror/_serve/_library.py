"""What a running server serves, kept in step with the disk: the ``Library``.

``ModelIndex`` is immutable, so a change on disk (``hf download`` or ``ollama pull`` finished, a
pull-through completed) is picked up by building a new index and swapping it in: requests in
flight keep the index they started with, new requests see the new one. Rebuilding is cheap:
``DigestCache`` remembers every digest computed, so a rescan of an unchanged store only walks
folders and reads symlinks.

When to rescan: on a timer (``interval``), and when a request misses (a client asks for a model
the index does not have: it may have just been installed). Misses are rate-limited
(``min_interval``) and share one scan, so a client probing unknown names cannot make the server
walk the disk in a loop. Scans run in the default executor, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dsmirror._core.errors import DsmirrorError
from dsmirror._formats.manifest import Manifest
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._folder_index import ManifestFolder, index_manifest_folder
from dsmirror._serve._hf_index import index_hf_cache
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_index import index_ollama_store

__all__ = ["IndexSource", "Library", "ServeRoots", "StaticIndex"]

logger = logging.getLogger(__name__)


class IndexSource(Protocol):
    """Where the app gets its index: ``index`` now, and a rescan it may ask for after a miss."""

    @property
    def index(self) -> ModelIndex: ...

    async def refresh_after_miss(self) -> bool:
        """Rescan if allowed now; True if the index changed."""
        ...


class StaticIndex:
    """A fixed index (tests, embedding): never rescans."""

    def __init__(self, index: ModelIndex) -> None:
        self._index = index

    @property
    def index(self) -> ModelIndex:
        return self._index

    async def refresh_after_miss(self) -> bool:
        return False


@dataclass(frozen=True)
class ServeRoots:
    """The stores and folders to serve. A store that does not exist (yet) serves nothing."""

    hf_cache: Path | None = None
    ollama_models: Path | None = None
    folders: Sequence[tuple[Manifest, Path]] = ()


def _signature(index: ModelIndex) -> frozenset[tuple[str, ...]]:
    """What clients can see of an index: changes in it are what a rescan looks for."""
    items: set[tuple[str, ...]] = set()
    for repo in index.hf_repos:
        items.add(("hf", repo.repo_id, repo.commit, *sorted(repo.refs)))
        items.update(("hf-file", repo.repo_id, repo.commit, f.path, f.etag) for f in repo.files.values())
    for model in index.ollama_models:
        items.add(("ollama", model.reference, model.digest))
    for folder in index.folders:
        items.update(("folder", folder.sha256, path) for path in folder.files)
    return frozenset(items)


class Library:
    """The current ``ModelIndex`` of ``roots``, rebuilt on a timer and after misses."""

    def __init__(
        self,
        roots: ServeRoots,
        *,
        digests: DigestCache | None = None,
        min_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roots = roots
        self.digests = digests or DigestCache()
        self.min_interval = min_interval
        self._clock = clock
        self._index = ModelIndex()
        self._signature: frozenset[tuple[str, ...]] = frozenset()
        self._last_scan = float("-inf")
        self._scan_task: asyncio.Future[bool] | None = None
        self.scans = 0

    @property
    def index(self) -> ModelIndex:
        return self._index

    def scan(self) -> bool:
        """Rebuild the index from disk now (blocking); True if what is served changed."""
        index = self._build()
        signature = _signature(index)
        changed = signature != self._signature
        self._index, self._signature = index, signature
        self._last_scan = self._clock()
        self.scans += 1
        if changed:
            counts = index.counts()
            logger.info(
                "serving %d HF repos, %d Ollama models, %d folders (%d files)",
                counts["hf_repos"],
                counts["ollama_models"],
                len(index.folders),
                counts["files"],
            )
        return changed

    def _build(self) -> ModelIndex:
        hf = []
        if self.roots.hf_cache is not None and self.roots.hf_cache.is_dir():
            try:
                hf = index_hf_cache(self.roots.hf_cache, digests=self.digests)
            except (OSError, DsmirrorError) as exc:
                logger.warning("cannot index the HF cache %s: %s", self.roots.hf_cache, exc)
        ollama = []
        if self.roots.ollama_models is not None and self.roots.ollama_models.is_dir():
            try:
                ollama = index_ollama_store(self.roots.ollama_models)
            except OSError as exc:
                logger.warning("cannot index the Ollama store %s: %s", self.roots.ollama_models, exc)
        folders: list[ManifestFolder] = []
        for manifest, root in self.roots.folders:
            try:
                folders.append(index_manifest_folder(manifest, root, digests=self.digests))
            except OSError as exc:
                logger.warning("cannot index %s: %s", root, exc)
        try:
            return ModelIndex(hf, ollama, folders)
        except DsmirrorError as exc:  # e.g. two snapshots claiming one ref while a pull moves it
            logger.warning("keeping the previous index: %s", exc)
            return self._index

    async def refresh(self) -> bool:
        """Rescan in the executor; concurrent callers share one scan."""
        task = self._scan_task
        if task is None or task.done():
            loop = asyncio.get_running_loop()
            task = self._scan_task = loop.run_in_executor(None, self.scan)
        return await asyncio.shield(task)

    async def refresh_after_miss(self) -> bool:
        task = self._scan_task
        if task is not None and not task.done():
            return await asyncio.shield(task)
        if self._clock() - self._last_scan < self.min_interval:
            return False
        return await self.refresh()

    async def rescan_every(self, interval: float) -> None:
        """Rescan forever, every ``interval`` seconds (run as a task; cancel to stop)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # a scan must never kill the timer
                logger.exception("rescan failed")
