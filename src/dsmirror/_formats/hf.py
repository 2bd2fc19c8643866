"""Hugging Face repositories as files: a repo's listing at a commit, as the tree API and the HF
cache (``trees/<commit>.json``) describe it. The one owner of that shape; the resolvers, the
install step and ``dsmirror serve`` call it.

No Xet fields: the tree API of the Xet-era Hub lists a ``xetHash`` per Xet-backed file, and
huggingface_hub, finding one in ``trees/<commit>.json``, skips its HEAD request and asks the
endpoint for a Xet token (``/api/models/<repo>/xet-read-token/<commit>``), which a mirror without
Xet answers 404. dsmirror fetches over plain HTTP, so it keeps none (see ``hfcache.XET_FIELDS``).

Documented in docs/formats.md#the-hugging-face-cache.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["HfFile", "HfListing", "select_files"]


@dataclass(frozen=True)
class HfFile:
    """One file of a repo at a commit, as the tree API lists it."""

    path: str
    size: int
    blob_id: str  # git object id (for an LFS file: of its pointer)
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        """The name huggingface_hub gives the file's blob in its cache."""
        return self.lfs_sha256 or self.blob_id

    def tree_entry(self) -> dict[str, Any]:
        """The file in huggingface_hub's tree cache format (``trees/<commit>.json``): what the client
        needs over plain HTTP, no Xet hash (see the module docstring)."""
        info: dict[str, Any] = {"size": self.size, "blob_id": self.blob_id}
        if self.lfs_sha256 is not None:
            info["lfs_sha256"] = self.lfs_sha256
            info["lfs_size"] = self.size
        return info


@dataclass(frozen=True)
class HfListing:
    repo_id: str
    revision: str
    commit: str
    files: tuple[HfFile, ...]
    endpoint: str  # name of the mirror that answered
    skipped: tuple[str, ...] = ()  # "<mirror>: <why>" for each endpoint asked before it


def select_files(files: Sequence[HfFile], include: Sequence[str], exclude: Sequence[str]) -> list[HfFile]:
    """Files whose whole path matches an ``include`` glob (all, if none) and no ``exclude`` glob."""

    def matches(path: str, globs: Sequence[str]) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in globs)

    return [f for f in files if (not include or matches(f.path, include)) and not matches(f.path, exclude)]
