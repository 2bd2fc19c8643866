"""``dsmirror rm``: removing an installed model, and nothing it shares with another.

It never follows a symlink: links are removed as links, and a folder that is itself a link is
refused. It removes a snapshot with the refs that point at it and the blobs no other snapshot uses,
or an Ollama manifest with the blobs no other manifest uses, or the files a plain folder install
recorded. It refuses while a pull holds the store's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dsmirror._core.errors import AlreadyInProgress, StorageError, UsageError
from dsmirror._core.fsutil import storage_errors
from dsmirror._core.settings import Settings
from dsmirror._formats import hfcache
from dsmirror._formats.installs import read_records
from dsmirror._formats.ollama import parse_ollama_manifest, parse_ollama_name, store_manifests
from dsmirror._formats.paths import validate_relpath
from dsmirror._formats.private import PrivateArea
from dsmirror._install.links import check_parents, real_dir

__all__ = ["Removal", "remove_installed"]


@dataclass
class Removal:
    target: str
    removed: list[Path] = field(default_factory=list)
    freed: int = 0
    kept_shared: list[Path] = field(default_factory=list)  # blobs another model still uses


def _refuse_if_pulling(root: Path) -> None:
    """AlreadyInProgress if a pull holds a store lock under ``root``."""
    for lock in PrivateArea(root).partial_dir.glob("*/lock"):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyInProgress(path=str(root)) from None
        finally:
            os.close(fd)


class _Remover:
    def __init__(self, target: str, dry_run: bool) -> None:
        self.r = Removal(target)
        self.dry_run = dry_run

    def unlink(self, path: Path) -> None:
        """Remove a file or a link (never what a link points to)."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"{path} is a folder where a file was expected", path=str(path))
        if not self.dry_run:
            with storage_errors(path):
                path.unlink()
        self.r.removed.append(path)
        if stat.S_ISREG(st.st_mode):
            self.r.freed += st.st_size

    def tree(self, root: Path) -> None:
        """Remove a folder and everything in it, links as links."""
        if not root.exists() and not root.is_symlink():
            return
        real_dir(root)
        for dirpath, dirnames, names in os.walk(root, topdown=False, followlinks=False):
            for n in names + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                self.unlink(Path(dirpath) / n)
            for d in dirnames:
                p = Path(dirpath) / d
                if not p.is_symlink():
                    self.rmdir(p)
        self.rmdir(root)

    def rmdir(self, path: Path) -> None:
        if self.dry_run:
            return
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise StorageError(f"cannot remove {path}: {exc.strerror}", path=str(path)) from exc

    def prune_empty(self, start: Path, stop: Path) -> None:
        """Remove empty folders from ``start`` up to (not including) ``stop``."""
        cur = start
        while cur != stop and stop in cur.parents:
            if self.dry_run or any(cur.iterdir()):
                return
            self.rmdir(cur)
            cur = cur.parent


def _blobs_of_snapshots(repo_dir: Path, snaps: list[Path]) -> set[str]:
    return {b for snap in snaps for _, b in hfcache.snapshot_links(repo_dir, snap) if b}


def _remove_hf(settings: Settings, repo_id: str, revision: str | None, rm: _Remover) -> None:
    repo_dir = hfcache.repo_folder(settings.hf_cache, repo_id)
    if not repo_dir.exists() and not repo_dir.is_symlink():
        raise UsageError(f"{repo_id} is not in the Hugging Face cache ({settings.hf_cache})")
    real_dir(repo_dir)
    _refuse_if_pulling(repo_dir)
    if revision is None:
        rm.tree(repo_dir)
        return
    refs = hfcache.read_refs(repo_dir)
    commit = hfcache.resolve_revision(repo_dir, revision, refs)
    snap = hfcache.snapshot_dir(repo_dir, commit or "")
    if commit is None or not snap.is_dir():
        raise UsageError(f"{repo_id} has no snapshot for {revision!r} in the cache")
    real_dir(snap)
    mine = _blobs_of_snapshots(repo_dir, [snap])
    others = _blobs_of_snapshots(repo_dir, [s for s in hfcache.snapshots(repo_dir) if s.name != commit])
    rm.tree(snap)
    for rev in [r for r, c in refs.items() if c == commit]:
        ref = hfcache.refs_dir(repo_dir) / rev
        rm.unlink(ref)
        rm.prune_empty(ref.parent, hfcache.refs_dir(repo_dir))
    rm.unlink(hfcache.tree_file(repo_dir, commit))
    for blob in sorted(mine):
        if blob in others:
            rm.r.kept_shared.append(repo_dir / blob)
        else:
            rm.unlink(repo_dir / blob)
    if not rm.dry_run and not any(p.name != commit for p in hfcache.snapshots_dir(repo_dir).iterdir()):
        rm.tree(repo_dir)


def _remove_ollama(settings: Settings, ref: str, rm: _Remover) -> None:
    name = parse_ollama_name(ref)
    models = settings.ollama_models
    path = models / name.manifest_path
    if not path.is_file() or path.is_symlink():
        raise UsageError(f"{name.short} is not in the Ollama store ({models})")
    _refuse_if_pulling(models)
    mine = {b.sha256 for b in parse_ollama_manifest(path.read_bytes())}
    others: set[str] = set()
    for _, other in store_manifests(models):
        if other != path:
            with contextlib.suppress(OSError, ValueError):
                others |= {b.sha256 for b in parse_ollama_manifest(other.read_bytes())}
    rm.unlink(path)
    rm.prune_empty(path.parent, models / "manifests")
    for sha in sorted(mine):
        for rel in (f"blobs/sha256-{sha}", f"blobs/sha256:{sha}"):
            blob = models / rel
            if not blob.exists() and not blob.is_symlink():
                continue
            if sha in others:
                rm.r.kept_shared.append(blob)
            else:
                rm.unlink(blob)


def _remove_dir(settings: Settings, dest: Path, rm: _Remover) -> None:
    found = [(p, doc) for p, doc in read_records(settings.state_dir) if Path(str(doc.get("dest"))) == dest]
    if not found:
        raise UsageError(f"{dest} is not a folder dsmirror installed into", hint="see `dsmirror ls`")
    real_dir(dest)
    _refuse_if_pulling(dest)
    for record, doc in found:
        for rel, _, _ in doc.get("files", []):
            p = check_parents(dest, validate_relpath(str(rel)))
            rm.unlink(p)
            rm.prune_empty(p.parent, dest)
        rm.unlink(record)
    rm.tree(PrivateArea(dest).root)
    if not rm.dry_run and not any(dest.iterdir()):
        rm.rmdir(dest)


def remove_installed(settings: Settings, target: str, *, dry_run: bool = False) -> Removal:
    """Remove one installed model; ``target`` is a ``ref`` of ``list_installed`` or a short name.

    ``hf://org/name`` removes the whole repo from the cache, ``hf://org/name@rev`` one snapshot;
    ``ollama://host/ns/name:tag`` (or ``name:tag``, ``ns/name:tag``) one Ollama tag; a folder path,
    a plain-folder install.
    """
    rm = _Remover(target, dry_run)
    if target.startswith("hf://"):
        repo, _, rev = target.removeprefix("hf://").partition("@")
        if repo.count("/") != 1:
            raise UsageError(f"not a repo: {target!r}", hint="write it like hf://org/name[@revision]")
        _remove_hf(settings, repo, rev or None, rm)
    elif target.startswith("ollama://"):
        _remove_ollama(settings, target, rm)
    elif Path(target).is_dir():
        _remove_dir(settings, Path(target).absolute(), rm)
    elif ":" in target:
        _remove_ollama(settings, target, rm)
    elif target.count("/") == 1:
        _remove_hf(settings, target, None, rm)
    else:
        raise UsageError(f"nothing installed is called {target!r}", hint="see `dsmirror ls`")
    return rm.r
