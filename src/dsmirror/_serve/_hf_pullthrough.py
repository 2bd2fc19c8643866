"""The Hugging Face side of the pull-through: repos as the upstream lists them, files into the HF cache.

A repo at a revision is listed through ``list_hf_repo``, the client ``dsmirror pull`` uses
(huggingface_hub's routes, bounded in time, the token only to official endpoints): the first
upstream mirror that answers pins the revision to a commit and lists its files. A branch's commit
is believed for ``metadata_ttl`` seconds, a commit's listing for the life of the process.

A file is pulled into the cache's layout (``dsmirror._formats.hfcache``), so ``hf`` tools see it
too: the engine's store is opened on the repo folder with the manifest path ``blobs/<etag>``, so
the verified file is renamed straight into ``blobs/``; then the snapshot link and the refs of the
branches that named the commit are made (``dsmirror._install.hf``). An LFS file is pulled by the
engine from every upstream mirror at once and checked against its SHA-256; a small non-LFS file,
known only by its git blob SHA-1, is fetched whole and checked against that.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import httpx

from dsmirror._core.errors import IntegrityError, NoSourceError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._fetch.http import USER_AGENT, HttpSource
from dsmirror._fetch.source import Source
from dsmirror._formats import hfcache
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.hf import HfListing
from dsmirror._formats.manifest import FileEntry, Manifest
from dsmirror._install.hf import install_hf_snapshot
from dsmirror._resolve.plan import PullOptions, source_info
from dsmirror._resolve.registries.hub import list_hf_repo
from dsmirror._schedule.info import SourceInfo
from dsmirror._serve._hf_index import HfRepo, ServedFile
from dsmirror._serve._pulljob import PullContext, PullJob, already_there, one_file_manifest, run_engine
from dsmirror._serve._upstream import Upstream
from dsmirror._verify.digest import git_blob_sha1

__all__ = ["HfPullThrough"]

logger = logging.getLogger(__name__)

#: A non-LFS file is fetched whole, in memory; the Hub keeps anything over 10 MB in LFS.
_MAX_SMALL_FILE = 64 << 20
#: How long the listing of a commit is kept (it never changes).
_COMMIT_TTL = 365 * 86400.0


def _resolve_url(m: Mirror, repo: HfRepo, f: ServedFile) -> str:
    return f"{m.url.rstrip('/')}/{repo.repo_id}/resolve/{repo.commit}/{quote(f.path)}"


class HfPullThrough:
    """Metadata and pulls of Hugging Face repos (nothing, without hf mirrors or an HF cache)."""

    def __init__(self, ctx: PullContext, upstream: Upstream, hf_cache: Path | None) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.hf_cache = hf_cache
        #: Branches the upstream said point at a commit: written as refs/ with its files.
        self._branches: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    async def repo(self, repo_id: str, revision: str) -> HfRepo | None:
        """The repo at ``revision`` as the upstream lists it, or None if no upstream knows it."""
        if not self.upstream.hf or self.hf_cache is None:
            return None
        pinned = hfcache.is_commit(revision)

        def ttl(value: HfRepo | None) -> float:
            if value is None:
                return self.ctx.negative_ttl
            return _COMMIT_TTL if pinned else self.ctx.metadata_ttl

        repo: HfRepo | None = await self.ctx.metadata.get(
            ("hf", repo_id, revision), ttl, lambda: self._list(repo_id, revision)
        )
        return repo

    def _list(self, repo_id: str, revision: str) -> HfRepo | None:
        """(metadata thread) Ask the upstream mirrors, in order, through ``list_hf_repo``."""
        try:
            listing = list_hf_repo(
                self.upstream.hf, repo_id, revision, token=self.upstream.hf_token, timeout=self.ctx.timeout
            )
        except NoSourceError as exc:
            logger.info("upstream: %s", exc.message)
            return None
        try:
            return self._repo_of(listing)
        except ValueError as exc:
            logger.warning("upstream %s: unusable listing of %s: %s", listing.endpoint, repo_id, exc)
            return None

    def _repo_of(self, listing: HfListing) -> HfRepo:
        assert self.hf_cache is not None
        repo_dir = hfcache.repo_folder(self.hf_cache, listing.repo_id)
        files: dict[str, ServedFile] = {}
        for f in listing.files:
            disk = repo_dir / hfcache.blob_rel(f.etag)
            try:
                if f.lfs_sha256 is not None:
                    files[f.path] = ServedFile(f.path, disk, f.size, f.lfs_sha256, None, lfs=True)
                else:
                    files[f.path] = ServedFile(f.path, disk, f.size, None, f.blob_id, lfs=False)
            except ValueError as exc:
                logger.warning("skipping %s of %s: %s", f.path, listing.repo_id, exc)
        commit, revision = listing.commit, listing.revision
        refs = {} if revision == commit else {revision: commit}
        if refs:
            with self._lock:
                self._branches.setdefault((listing.repo_id, commit), set()).add(revision)
        return HfRepo(repo_id=listing.repo_id, commit=commit, refs=refs, files=files)

    def job(self, repo: HfRepo, f: ServedFile) -> PullJob:
        """Pull ``f`` of ``repo`` into the HF cache (or join the pull already doing it)."""
        assert self.hf_cache is not None
        repo_dir = hfcache.repo_folder(self.hf_cache, repo.repo_id)
        manifest: Manifest | None = None
        if f.lfs:
            assert f.sha256 is not None
            name = f"{repo.repo_id}@{repo.commit}/{f.path}"
            lfs = manifest = one_file_manifest(
                name, hfcache.blob_rel(f.etag), f.size, f.sha256, self.ctx.piece_size
            )

            def work(job: PullJob) -> None:
                if already_there(f.disk_path, f.size, f.etag):
                    return
                sources: list[Source] = [
                    HttpSource(
                        _source_info(m),
                        _fixed_url(_resolve_url(m, repo, f)),
                        headers=self.upstream.hf_headers(m),
                    )
                    for m in self.upstream.hf
                ]
                run_engine(job, lfs, repo_dir, sources, self.ctx.engine)

        else:

            def work(job: PullJob) -> None:
                self._pull_git_blob(repo, f)

        return self.ctx.board.job(
            f.disk_path,
            f.size,
            work,
            label=f"{repo.repo_id}/{f.path}",
            manifest=manifest,
            then=(f"{repo.repo_id}@{repo.commit}/{f.path}", lambda: self._install_link(repo_dir, repo, f)),
        )

    def _install_link(self, repo_dir: Path, repo: HfRepo, f: ServedFile) -> None:
        """(job thread) ``f``'s snapshot link, and the refs of the branches that named its commit."""
        # Clients download by commit; the branch they asked for came with the revision call.
        with self._lock:
            branches = set(repo.refs) | self._branches.get((repo.repo_id, repo.commit), set())
        for revision in sorted(branches) or [repo.commit]:
            install_hf_snapshot(repo_dir, commit=repo.commit, revision=revision, files=[(f.path, f.etag)])

    def _pull_git_blob(self, repo: HfRepo, f: ServedFile) -> None:
        """A small non-LFS file: fetched whole, checked against its git blob id, then put in place."""
        if f.size > _MAX_SMALL_FILE:
            raise IntegrityError(f"{f.path}: a {f.size}-byte non-LFS file is too large to pull through")
        errors: list[str] = []
        for m in self.upstream.hf:
            try:
                with httpx.Client(
                    timeout=self.ctx.timeout,
                    follow_redirects=True,
                    headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                ) as client:
                    r = client.get(_resolve_url(m, repo, f), headers=self.upstream.hf_headers(m))
            except httpx.HTTPError as exc:
                errors.append(f"{m.name}: {exc}")
                continue
            if r.status_code != 200:
                errors.append(f"{m.name}: HTTP {r.status_code}")
                continue
            data = r.content
            self.ctx.board.count_fetched(m.name, len(data))
            git = git_blob_sha1(data)
            if len(data) != f.size or git != f.git_sha1:
                errors.append(f"{m.name}: sent bytes that do not match the git blob id {f.git_sha1}")
                continue
            atomic_write_bytes(f.disk_path, data)
            self.ctx.digests.prime(f.disk_path, hashlib.sha256(data).hexdigest(), git)
            return
        raise NoSourceError(f"no upstream could deliver {repo.repo_id}/{f.path}: {'; '.join(errors)}")


def _source_info(m: Mirror) -> SourceInfo:
    return source_info(m, PullOptions())


def _fixed_url(url: str) -> Callable[[FileEntry], str]:
    return lambda _file: url
