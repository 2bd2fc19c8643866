"""What the box is doing, as one JSON document: ``Status`` (``GET /dsmirror/status``).

The status page (``/``), ``/metrics`` and scripts all read this one document; every figure in it
is a real counter of the running server, none is estimated. Fields (documented in
docs/formats.md#the-status-document-and-metrics)::

    status              "ok"
    version             dsmirror's version
    time, uptime        the server's clock (seconds since the epoch), seconds since it started
    hf_repos, hf_snapshots, ollama_models, files      what the index serves (counts)
    folders             [{name, manifest_sha256, files, of_files, hf_repo}] the --folder folders
    requests_in_flight  requests being answered now
    bytes_served        bytes of files sent to clients (= served.bytes)
    pull_through        null without --upstream, else {upstream: {hf, ollama, http: [url]},
                        pulls: [pull, ...every pull since start]}
    models              [{name, format, revision, size, files, verified_files, verified, complete}]
                        every model held: format "hf" (a snapshot in the HF cache; revision: its
                        branches, or its commit), "ollama" (name:tag), "dir" (a --folder); size in
                        bytes of the files present; verified: dsmirror checked every file's content
                        against its digest, as `dsmirror ls` tells (an install record still matches
                        the file, or it was hashed: by the pull-through, by the index, or now if it
                        is small), else some files are trusted by their names (what `hf download`
                        leaves, for instance); complete: every file the model names is present
    served              {bytes, by_kind: {hf, modelscope, ollama, folder, status, other: bytes},
                        responses: {kind: {status code: count}}}  sent to the LAN, by protocol
    upstream            {bytes, by_source: {mirror name: bytes}}  fetched by the pull-through
                        (verified bytes each upstream source delivered, from the engine's events)
    saved_bytes         bytes served that did not have to come from upstream: served - upstream
    pulls               {active, done, failed, recent: [pull]}  pull-through jobs: running or queued
                        now, ended since start, and the running ones and the last finished ones
                        (newest first, at most 20); a pull is {file, state (queued, running, done,
                        failed), size, verified_bytes, received_bytes, rate, sources: [{name, kind,
                        rate, delivered, connections, status}], started_at, error, hint}; rates are
                        over the last 3 s, from the bytes each source delivered
    seeding             null without --seed (or before it started), else {port, torrents: [{name,
                        info_hash, state, upload_rate, uploaded, peers: [{address, client,
                        upload_rate, uploaded, progress}]}], peers, upload_rate, uploaded}
    errors              {by_kind: {kind: count}, recent: [{time, kind, level, message, hint,
                        repeated}]}  warnings and errors since start by kind; the last 50
                        distinct ones, newest first, each with how often it was logged (``_errors``)
    history             {interval, samples: [[time, served bytes, upstream bytes], ...]}  one
                        sample every ``interval`` seconds, the last hour

Rates are bytes per second, sizes bytes, times seconds since the epoch. ``Status.tick`` (run every
``interval`` seconds by the app) takes the history's samples and logs one line per running pull,
so a log read by a machine (CI, journald) shows progress every few seconds without a flood.
"""

from __future__ import annotations

import collections
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsmirror._core.errors import InputError
from dsmirror._core.events import Event
from dsmirror._core.units import format_bytes, format_rate
from dsmirror._fetch.swarm.config import SeedingStarted, SeedStatus
from dsmirror._install.listing import CHEAP_CHECK
from dsmirror._install.records import store_records, vouched
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._errors import RecentErrors
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._proofs import ProofBook
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._send import ROUTE_KINDS, ServeStats

__all__ = ["History", "Seeding", "Status", "models_held"]

logger = logging.getLogger(__name__)

_RECENT_PULLS = 20


def _version() -> str:
    try:
        return importlib.metadata.version("dsmirror")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Seeding:
    """What the seeder last said (``serve --seed``); fed from the seeding thread (``observe``, ``clear``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: SeedingStarted | None = None
        self._status: SeedStatus | None = None

    def observe(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, SeedingStarted):
                self._started, self._status = event, None
            elif isinstance(event, SeedStatus):
                self._status = event

    def clear(self) -> None:
        """Seeding stopped."""
        with self._lock:
            self._started = self._status = None

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            started, status = self._started, self._status
        if started is None:
            return None
        torrents: list[dict[str, Any]] = [
            {
                "name": t.name,
                "info_hash": t.info_hash,
                "state": t.state,
                "upload_rate": t.upload_rate,
                "uploaded": t.uploaded,
                "peers": [
                    {
                        "address": p.address,
                        "client": p.client,
                        "upload_rate": p.upload_rate,
                        "uploaded": p.uploaded,
                        "progress": p.progress,
                    }
                    for p in t.peers
                ],
            }
            for t in (status.torrents if status is not None else ())
        ]
        return {
            "port": started.listen_port,
            "torrents": torrents,
            "peers": sum(len(t.peers) for t in (status.torrents if status is not None else ())),
            "upload_rate": status.upload_rate if status is not None else 0.0,
            "uploaded": status.uploaded if status is not None else 0,
        }


class History:
    """Samples of (time, bytes served, bytes fetched upstream), one per ``interval``, the last hour."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=max(2, int(3600 / interval))
        )

    def sample(self, when: float, served: int, upstream: int) -> None:
        self._samples.append((round(when, 3), served, upstream))

    def samples(self) -> list[list[float]]:
        return [list(s) for s in self._samples]


# -- models held ---------------------------------------------------------------------------------


class _Checked:
    """Whether dsmirror checked a served file's content, as ``dsmirror ls`` tells: an install record
    still matches it, or its digest was computed (by a pull-through, or now: a small file is hashed,
    once, as ``ls`` does)."""

    def __init__(self, digests: DigestCache | None) -> None:
        self._digests = digests or DigestCache()
        self._records: dict[Path, dict[str, list[int]]] = {}

    def file(self, disk: Path, etag: str) -> bool:
        """``disk``: a blob named by its content digest ``etag`` (64 hex: SHA-256, 40: git blob SHA-1)."""
        try:
            st = disk.stat()
        except OSError:
            return False
        if disk.parent.name == "blobs":  # the HF cache and the Ollama store keep records one up
            root = disk.parent.parent
            records = self._records.get(root)
            if records is None:
                records = self._records[root] = store_records(root)
            if vouched(records, f"blobs/{disk.name}", st):
                return True
        git = len(etag) == 40
        known = self._digests.known(disk)
        if (known is None or (git and known[1] is None)) and st.st_size <= CHEAP_CHECK:
            try:
                _, sha256, sha1 = self._digests.digests(disk, git=git)
            except (OSError, InputError):
                return False
            known = (sha256, sha1)
        if known is None:
            return False
        return known[1] == etag if git else known[0] == etag


def models_held(index: ModelIndex, digests: DigestCache | None = None) -> list[dict[str, Any]]:
    """Every model ``index`` serves, with its size and whether dsmirror checked it (see the docstring).

    Blocking (it stats every file and reads install records): call it in an executor.
    """
    checked = _Checked(digests)
    models: list[dict[str, Any]] = []
    folder_repos = {f.repo_id for f in index.folders}
    for repo in index.hf_repos:
        if repo.repo_id in folder_repos:
            continue  # a --folder shown as an HF repo: listed below as the folder
        files = {f.disk_path: f for f in repo.files.values()}
        ok = sum(checked.file(disk, f.etag) for disk, f in files.items())
        models.append(
            {
                "name": repo.repo_id,
                "format": "hf",
                "revision": ", ".join(sorted(repo.refs)) or repo.commit,
                "size": sum(f.size for f in files.values()),
                "files": len(repo.files),
                "verified_files": ok,
                "verified": ok == len(files),
                "complete": True,
            }
        )
    for model in index.ollama_models:
        blobs = {layer.digest: layer.size for layer in model.layers}
        ok = 0
        for digest in blobs:
            blob = model.blobs[digest]
            ok += isinstance(blob, bytes) or checked.file(blob, digest.removeprefix("sha256:"))
        models.append(
            {
                "name": f"{model.namespace}/{model.name}:{model.tag}",
                "format": "ollama",
                "revision": model.digest,
                "size": sum(blobs.values()),
                "files": len(blobs),
                "verified_files": ok,
                "verified": ok == len(blobs),
                "complete": True,
            }
        )
    for folder in index.folders:
        present = len(folder.files)
        models.append(
            {
                "name": folder.name,
                "format": "dir",
                "revision": folder.sha256,
                "size": sum(f.size for f in folder.files.values()),
                "files": present,
                # A folder's files are served only once checked against the manifest (_folder_index).
                "verified_files": present,
                "verified": True,
                "complete": present == len(folder.manifest.files),
            }
        )
    return models


# -- the document --------------------------------------------------------------------------------


class Status:
    """The status document of one app (see the module docstring), and its periodic ``tick``."""

    def __init__(
        self,
        stats: ServeStats,
        *,
        pullthrough: PullThrough | None,
        digests: DigestCache | None,
        in_flight: Callable[[], int],
        interval: float = 5.0,
        proofs: ProofBook | None = None,
    ) -> None:
        self.stats = stats
        self.proofs = proofs
        self.pt = pullthrough
        self.digests = digests
        self.in_flight = in_flight
        self.seeding = Seeding()
        self.errors = RecentErrors()
        self.history = History(interval)
        self.started = time.time()
        self.version = _version()
        self._models: tuple[ModelIndex, list[dict[str, Any]]] | None = None
        self._models_lock = threading.Lock()

    def models(self, index: ModelIndex) -> list[dict[str, Any]]:
        """``models_held`` of ``index``, computed once per index (blocking: call it in an executor)."""
        with self._models_lock:
            cached = self._models
            if cached is not None and cached[0] is index:
                return cached[1]
            models = models_held(index, self.digests)
            self._models = (index, models)
            return models

    def upstream_bytes(self) -> dict[str, int]:
        return self.pt.fetched() if self.pt is not None else {}

    def document(self, index: ModelIndex, models: list[dict[str, Any]]) -> dict[str, Any]:
        """The whole status document (``models`` from ``models(index)``)."""
        now = time.time()
        served = self.stats.bytes_total
        fetched = self.upstream_bytes()
        upstream = sum(fetched.values())
        responses: dict[str, dict[str, int]] = {}
        for (kind, code), n in sorted(self.stats.responses.items()):
            responses.setdefault(kind, {})[str(code)] = n
        return {
            "status": "ok",
            "version": self.version,
            "time": round(now, 3),
            "uptime": round(now - self.started, 1),
            **index.counts(),
            "folders": [
                {
                    "name": f.name,
                    "manifest_sha256": f.sha256,
                    "files": len(f.files),
                    "of_files": len(f.manifest.files),
                    "hf_repo": f.repo_id,
                }
                for f in index.folders
            ],
            "requests_in_flight": self.in_flight(),
            "bytes_served": served,
            "pull_through": self.pt.status() if self.pt is not None else None,
            "proofs": self.proofs.summary() if self.proofs is not None else None,
            "models": models,
            "served": {
                "bytes": served,
                "by_kind": {kind: self.stats.bytes_by_kind.get(kind, 0) for kind in ROUTE_KINDS},
                "responses": responses,
            },
            "upstream": {"bytes": upstream, "by_source": fetched},
            "saved_bytes": max(0, served - upstream),
            "pulls": self._pulls(),
            "seeding": self.seeding.snapshot(),
            "errors": {
                "by_kind": self.errors.counts(),
                "recent": [
                    {
                        "time": round(e.time, 3),
                        "kind": e.kind,
                        "level": e.level,
                        "message": e.message,
                        "hint": e.hint,
                        "repeated": e.repeated,
                    }
                    for e in self.errors.recent()
                ],
            },
            "history": {"interval": self.history.interval, "samples": self.history.samples()},
        }

    def _pulls(self) -> dict[str, Any]:
        jobs = self.pt.jobs() if self.pt is not None else []
        finished = self.pt.finished() if self.pt is not None else {"done": 0, "failed": 0}
        active = [j for j in jobs if not j.finished]
        ended = sorted((j for j in jobs if j.finished), key=lambda j: -j.started_at)
        recent = [j.status() for j in (active + ended)[: max(_RECENT_PULLS, len(active))]]
        return {"active": len(active), **finished, "recent": recent}

    def tick(self) -> None:
        """Take a history sample; log one line for each pull running (at most one per interval)."""
        now = time.time()
        self.history.sample(now, self.stats.bytes_total, sum(self.upstream_bytes().values()))
        if self.pt is None:
            return
        for job in self.pt.jobs():
            p = job.progress
            if job.state != "running" or p is None:
                continue
            rates = job.source_rates()
            by = ", ".join(f"{name} {format_rate(rate)}" for name, rate in rates.items())
            logger.info(
                "pulling %s: %s / %s verified, %s%s",
                job.label,
                format_bytes(job.verified_bytes() or p.verified_bytes),
                format_bytes(job.size),
                format_rate(sum(rates.values())),
                f" ({by})" if by else "",
            )
