"""Installing a snapshot into the Hugging Face cache (``--format hf``).

The layout is ``dsmirror._formats.hfcache``'s. By the time this runs, the store has renamed every
verified file into ``blobs/<etag>``; this makes the snapshot visible, in an order that never shows
a reader a snapshot whose blobs are missing:

1. ``snapshots/<commit>/<path>`` -> ``../../blobs/<etag>`` for every file (atomic link replacement);
2. ``refs/<revision>`` (unless the revision is the commit), written atomically;
3. ``trees/<commit>.json`` unless present (a commit's tree never changes), so that an offline
   ``snapshot_download`` knows which files a complete snapshot has. Never with Xet hashes, and a
   present one that has them (huggingface_hub writes them from the Hub's listing) is rewritten
   without: with one, a later online client skips its HEAD and asks the endpoint for a Xet token,
   which a mirror without Xet does not have (``hfcache``'s docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dsmirror._core.errors import StorageError
from dsmirror._core.fsutil import atomic_write_bytes, fsync_dir, storage_errors
from dsmirror._formats import hfcache
from dsmirror._formats.paths import validate_relpath
from dsmirror._install.links import check_parents, replace_symlink
from dsmirror._journal.store import Store

__all__ = ["hf_after_install", "install_hf_snapshot"]


def install_hf_snapshot(
    repo_dir: Path,
    *,
    commit: str,
    revision: str,
    files: Sequence[tuple[str, str]],
    tree: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Link ``snapshots/<commit>/<path>`` to ``blobs/<etag>`` for ``files`` ((path, etag) pairs).

    Then ``refs/<revision>`` (unless the revision is the commit) and ``trees/<commit>.json`` (unless
    present, a commit's tree never changes; but a present one loses its Xet hashes). Every blob
    must already be in place.
    """
    if not hfcache.is_commit(commit):
        raise StorageError(f"not a commit id: {commit!r}")
    snap = hfcache.snapshot_dir(repo_dir, commit)
    with storage_errors(repo_dir):
        folders: set[Path] = set()
        for path, etag in files:
            validate_relpath(path)
            blob = repo_dir / hfcache.blob_rel(etag)
            if not hfcache.is_etag(etag) or not blob.is_file() or blob.is_symlink():
                raise StorageError(f"{blob} is not an installed blob", path=str(blob))
            link = check_parents(snap, path)
            replace_symlink(link, hfcache.link_target(path, etag))
            folders.add(link.parent)
        for folder in folders:
            fsync_dir(folder)
        if revision != commit:
            validate_relpath(revision, where="revision")
            atomic_write_bytes(check_parents(hfcache.refs_dir(repo_dir), revision), commit.encode())
        if tree is not None:
            _install_tree(hfcache.tree_file(repo_dir, commit), tree)


def _install_tree(trees: Path, tree: Mapping[str, Mapping[str, Any]]) -> None:
    """``tree`` at ``trees`` unless a tree is there; a present one only loses its Xet hashes."""
    try:
        present = trees.read_bytes()
    except FileNotFoundError:
        atomic_write_bytes(trees, hfcache.tree_json(tree))
        return
    cleaned = hfcache.tree_without_xet(present)
    if cleaned is not None:
        atomic_write_bytes(trees, cleaned)


def hf_after_install(
    repo_dir: Path,
    *,
    commit: str,
    revision: str,
    files: Sequence[tuple[str, str]],
    tree: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Store], None]:
    def after(store: Store) -> None:
        install_hf_snapshot(repo_dir, commit=commit, revision=revision, files=files, tree=tree)

    return after
