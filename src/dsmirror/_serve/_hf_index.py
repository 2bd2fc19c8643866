"""What the server serves as Hugging Face repos: ``ServedFile``, ``HfRepo`` and where they come from.

* ``HfRepo.from_folder`` — a plain folder published as one Hugging Face repo at one commit.
  Files of at least ``lfs_min_size`` bytes are LFS files (etag = SHA-256 of the content);
  smaller ones are plain git blobs (etag = git blob SHA-1, ``sha1(b"blob %d\\0" + data)``,
  ``dsmirror._verify.digest``).
* ``index_hf_cache`` — the cache ``huggingface_hub`` writes (layout: ``dsmirror._formats.hfcache``),
  read without hashing the big files: a blob's name is its etag (64 hex: LFS SHA-256, 40 hex: git
  blob SHA-1). ``refs/`` name the branches, each ``snapshots/<commit>/`` is one ``HfRepo``;
  ``trees/`` and ``.no_exist/`` are ignored.

Symlinks are followed only when their target stays inside the store being indexed (for the HF
cache: inside the repo's own ``blobs/``); anything else is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.errors import InputError
from dsmirror._formats import hfcache
from dsmirror._formats.paths import check_repo_path
from dsmirror._serve._digests import DigestCache, hash_file
from dsmirror._verify.digest import git_blob_sha1

__all__ = [
    "LFS_MIN_SIZE",
    "HfRepo",
    "ServedFile",
    "check_repo_id",
    "index_hf_cache",
    "inside",
    "is_repo_id",
    "lfs_pointer",
]

logger = logging.getLogger(__name__)

LFS_MIN_SIZE = 1024 * 1024

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HF_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file git stores instead of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class ServedFile:
    """One file of a Hugging Face repo and where its bytes are on disk.

    ``sha256`` is the SHA-256 of the content (always known for LFS files). ``git_sha1`` is
    the git blob SHA-1 of the content, known for non-LFS files. ``disk_path`` is absolute
    and fully resolved (no symlink in it).
    """

    path: str
    disk_path: Path
    size: int
    sha256: str | None
    git_sha1: str | None
    lfs: bool

    def __post_init__(self) -> None:
        check_repo_path(self.path)
        if self.size < 0:
            raise ValueError(f"{self.path}: negative size")
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ValueError(f"{self.path}: sha256 must be 64 lowercase hex digits")
        if self.git_sha1 is not None and not _HEX40.fullmatch(self.git_sha1):
            raise ValueError(f"{self.path}: git_sha1 must be 40 lowercase hex digits")
        if self.lfs and self.sha256 is None:
            raise ValueError(f"{self.path}: an LFS file needs its sha256")
        if not self.lfs and self.git_sha1 is None:
            raise ValueError(f"{self.path}: a non-LFS file needs its git blob sha1")

    @property
    def etag(self) -> str:
        """The Hub's etag: SHA-256 for LFS files, git blob SHA-1 otherwise (unquoted)."""
        digest = self.sha256 if self.lfs else self.git_sha1
        assert digest is not None
        return digest

    @property
    def blob_id(self) -> str:
        """The git object id: of the LFS pointer for LFS files, of the content otherwise."""
        if self.lfs:
            assert self.sha256 is not None
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        assert self.git_sha1 is not None
        return self.git_sha1

    @property
    def pointer_size(self) -> int:
        assert self.sha256 is not None
        return len(lfs_pointer(self.sha256, self.size))


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def is_repo_id(repo_id: str) -> bool:
    """Whether ``repo_id`` is ``org/name``, the only form served."""
    parts = repo_id.split("/")
    return len(parts) == 2 and all(_HF_ID_PART.fullmatch(p) for p in parts)


def check_repo_id(repo_id: str) -> None:
    """ValueError unless ``repo_id`` is ``org/name`` (``is_repo_id``)."""
    if not is_repo_id(repo_id):
        raise ValueError(f"not an 'org/name' repo id: {repo_id!r}")


def _default_commit(files: Mapping[str, ServedFile]) -> str:
    listing = hashlib.sha1()
    for path in sorted(files):
        f = files[path]
        listing.update(f"{path}\0{f.etag}\0{f.size}\n".encode())
    return listing.hexdigest()


@dataclass(frozen=True)
class HfRepo:
    """One Hugging Face model repo at one commit; ``refs`` are the branch names pointing at it."""

    repo_id: str
    commit: str
    refs: dict[str, str]
    files: dict[str, ServedFile]

    def __post_init__(self) -> None:
        check_repo_id(self.repo_id)
        if not hfcache.is_commit(self.commit):
            raise ValueError(f"{self.repo_id}: commit must be 40 lowercase hex digits")
        for name, commit in self.refs.items():
            if commit != self.commit:
                raise ValueError(f"{self.repo_id}: ref {name!r} points at {commit}, not at {self.commit}")
        for path, f in self.files.items():
            if f.path != path:
                raise ValueError(f"{self.repo_id}: file keyed {path!r} says it is {f.path!r}")

    @classmethod
    def from_folder(
        cls,
        repo_id: str,
        folder: Path,
        *,
        commit: str | None = None,
        revision: str = "main",
        lfs_min_size: int = LFS_MIN_SIZE,
    ) -> HfRepo:
        """Publish every regular file under ``folder`` (hashing each once).

        ``.git/`` is skipped, as are symlinks leading outside ``folder``. Without ``commit``
        the commit id is a SHA-1 of the file list (paths, etags, sizes), so it is stable
        for the same content.
        """
        root = Path(folder).resolve()
        if not root.is_dir():
            raise InputError(f"{folder} is not a folder")
        files: dict[str, ServedFile] = {}
        for rel, disk in _walk_files(root):
            size = disk.stat().st_size
            lfs = size >= lfs_min_size
            size, sha256, git_sha1 = hash_file(disk, git=not lfs)
            files[rel] = ServedFile(rel, disk, size, sha256, git_sha1, lfs)
        commit = commit or _default_commit(files)
        return cls(repo_id=repo_id, commit=commit, refs={revision: commit}, files=files)


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield (repo path, resolved disk path) for the regular files under ``root``."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d != ".git"]
        dirnames.sort()
        for name in sorted(filenames):
            entry = here / name
            rel = entry.relative_to(root).as_posix()
            disk = entry.resolve()
            try:
                check_repo_path(rel)
            except ValueError:
                logger.warning("skipping %s: not a portable repo path", entry)
                continue
            if not inside(disk, root) or not disk.is_file():
                logger.warning("skipping %s: not a regular file inside %s", entry, root)
                continue
            yield rel, disk


def index_hf_cache(cache_dir: Path, *, digests: DigestCache | None = None) -> list[HfRepo]:
    """Index the model snapshots of a ``huggingface_hub`` cache (``HF_HUB_CACHE``).

    Only LFS blobs are trusted by name; the small non-LFS files are hashed (SHA-256) so
    that every served file has a content digest. Files missing from a partial snapshot
    are simply not served. Entries that are not symlinks into the repo's ``blobs/`` are
    skipped with a warning.
    """
    root = Path(cache_dir).resolve()
    repos: list[HfRepo] = []
    if not root.is_dir():
        raise InputError(f"{cache_dir} is not a folder")
    for repo_dir in hfcache.repo_folders(root):
        repo_id = hfcache.repo_id_of(repo_dir)
        try:
            check_repo_id(repo_id)
        except ValueError:
            logger.warning("skipping %s: only org/name repo ids are served", repo_dir)
            continue
        refs = hfcache.read_refs(repo_dir)
        for snap in hfcache.snapshots(repo_dir):
            if not hfcache.is_commit(snap.name):
                continue
            files = dict(_snapshot_files(repo_dir, snap, digests or DigestCache()))
            if not files:
                continue
            repos.append(
                HfRepo(
                    repo_id=repo_id,
                    commit=snap.name,
                    refs={ref: c for ref, c in refs.items() if c == snap.name},
                    files=files,
                )
            )
    return repos


def _snapshot_files(repo_dir: Path, snap: Path, digests: DigestCache) -> Iterator[tuple[str, ServedFile]]:
    for rel, where in hfcache.snapshot_links(repo_dir, snap):
        entry = snap / rel
        if where is None:
            logger.warning("skipping %s: not a symlink into blobs/ (copied cache?)", entry)
            continue
        # ``where`` names a blob of this repo; it must also resolve to a file right in blobs/.
        linked = repo_dir / where if where else None
        disk = linked.resolve() if linked is not None else None
        if linked is None or disk is None or disk.parent != linked.parent.resolve():
            logger.warning("skipping %s: links outside the repo's blobs/", entry)
            continue
        try:
            st = disk.stat()
            check_repo_path(rel)
        except (OSError, ValueError) as exc:
            logger.warning("skipping %s: %s", entry, exc)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        etag = disk.name
        if not hfcache.is_etag(etag):
            logger.warning("skipping %s: blob name %r is not an etag", entry, etag)
        elif len(etag) == 64:  # an LFS file's SHA-256
            yield rel, ServedFile(rel, disk, st.st_size, etag, None, lfs=True)
        else:  # a git blob SHA-1
            _, sha256, _ = digests.digests(disk, git=False)
            yield rel, ServedFile(rel, disk, st.st_size, sha256, etag, lfs=False)
