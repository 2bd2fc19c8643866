"""The Ollama side of the pull-through: manifests from the upstream registries, blobs into the store.

A tag's manifest is fetched with ``fetch_ollama_manifest``, the client ``dsmirror pull`` uses (its
size bound, its ``Docker-Content-Digest`` check, the one manifest parser), from the first upstream
registry that serves a valid one; it is believed for ``metadata_ttl`` seconds. Its blobs are then
known by digest and size, and a request for one starts its pull (``job``): the engine's store is
opened on the Ollama store with the manifest path ``blobs/sha256-<hex>``, so the verified blob is
renamed straight into ``blobs/`` (partial bytes stay under ``.dsmirror/``: Ollama prunes
``blobs/``). The manifest is written to ``manifests/registry.ollama.ai/<ns>/<name>/<tag>`` only
once every blob it names is in place, so Ollama never sees a model whose blobs are not all there.
Whichever upstream served it, it is filed under the registry its name is in (the catalog's ollama
mirrors are mirrors of the Ollama registry), as ``dsmirror pull NAME --format ollama`` files it,
so ``ollama run NAME`` on the box finds a model that came through any upstream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.errors import NoSourceError, UsageError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.manifest import FileEntry
from dsmirror._formats.ollama import DEFAULT_HOST, OllamaName
from dsmirror._resolve.plan import PullOptions, source_info
from dsmirror._resolve.registries.ollama import fetch_ollama_manifest
from dsmirror._serve._ollama_index import OllamaModel
from dsmirror._serve._pulljob import PullContext, PullJob, already_there, one_file_manifest, run_engine
from dsmirror._serve._upstream import Upstream

__all__ = ["OllamaPullThrough"]

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A model fetched through us whose manifest is not in the store yet."""

    model: OllamaModel
    manifest_path: Path


class OllamaPullThrough:
    """Metadata and pulls of Ollama models (nothing, without ollama mirrors or an Ollama store)."""

    def __init__(self, ctx: PullContext, upstream: Upstream, models: Path | None) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.models = models
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()

    async def model(self, namespace: str, name: str, tag: str) -> OllamaModel | None:
        """The model by tag as the first answering upstream registry has it."""
        if not self.upstream.ollama or self.models is None:
            return None

        def ttl(value: OllamaModel | None) -> float:
            return self.ctx.negative_ttl if value is None else self.ctx.metadata_ttl

        model: OllamaModel | None = await self.ctx.metadata.get(
            ("ollama", namespace, name, tag), ttl, lambda: self._fetch(namespace, name, tag)
        )
        return model

    def _fetch(self, namespace: str, name: str, tag: str) -> OllamaModel | None:
        """(metadata thread) Ask the upstream registries, in order, through ``fetch_ollama_manifest``."""
        assert self.models is not None
        for mirror in self.upstream.ollama:
            try:
                ref = OllamaName(DEFAULT_HOST, namespace, name, tag)
                raw, blobs, _ = fetch_ollama_manifest([mirror], ref, timeout=self.ctx.timeout)
                paths: dict[str, Path | bytes] = {f"sha256:{b.sha256}": self.models / b.path for b in blobs}
                model = OllamaModel(ref.host, namespace, name, tag, raw, paths)
            except NoSourceError as exc:
                logger.info("upstream: %s", exc.message)
                continue
            except (UsageError, ValueError) as exc:
                logger.warning(
                    "upstream %s: unusable manifest for %s/%s:%s: %s", mirror.name, namespace, name, tag, exc
                )
                continue
            manifest_path = self.models / ref.manifest_path
            with self._lock:
                self._pending[manifest_path] = _Pending(model, manifest_path)
            return model
        return None

    def blob(self, namespace: str, name: str, digest: str) -> tuple[Path, int] | None:
        """Where a blob of a manifest fetched through us goes, and its size (None: never seen)."""
        with self._lock:
            pending = list(self._pending.values())
        for p in pending:
            if (p.model.namespace, p.model.name) == (namespace, name) and (
                size := p.model.blob_size(digest)
            ) is not None:
                blob = p.model.blobs[digest]
                assert isinstance(blob, Path)
                return blob, size
        return None

    def job(self, namespace: str, name: str, digest: str, path: Path, size: int) -> PullJob:
        """Pull the blob ``digest`` to ``path`` (or join the pull already doing it)."""
        hexdigest = digest.removeprefix("sha256:")
        manifest = one_file_manifest(
            f"{namespace}/{name}@{digest}", f"blobs/{path.name}", size, hexdigest, self.ctx.piece_size
        )

        def url_for(m: Mirror) -> Callable[[FileEntry], str]:
            url = f"{m.url.rstrip('/')}/v2/{namespace}/{name}/blobs/{digest}"
            return lambda _file: url

        def work(job: PullJob) -> None:
            if already_there(path, size, hexdigest):
                return
            sources: list[Source] = [
                HttpSource(source_info(m, PullOptions()), url_for(m)) for m in self.upstream.ollama
            ]
            run_engine(job, manifest, path.parent.parent, sources, self.ctx.engine)

        return self.ctx.board.job(
            path,
            size,
            work,
            label=f"{namespace}/{name}@{digest}",
            manifest=manifest,
            then=("ollama-manifests", self._write_complete_manifests),
        )

    def _write_complete_manifests(self) -> None:
        """Write the manifest of every model fetched through us whose blobs are now all in place."""
        with self._lock:
            pending = list(self._pending.values())
        for p in pending:
            complete = all(
                isinstance(blob, Path) and blob.is_file() and blob.stat().st_size == layer.size
                for layer in p.model.layers
                for blob in [p.model.blobs[layer.digest]]
            )
            if complete:
                atomic_write_bytes(p.manifest_path, p.model.manifest)
                with self._lock:
                    self._pending.pop(p.manifest_path, None)
