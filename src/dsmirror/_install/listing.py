"""What ``dsmirror ls`` lists: the models in the HF cache, the Ollama store and recorded folders.

A model's status is the worst of its files'::

    verified    dsmirror verified the file when it installed it and it has not changed since (size,
                mtime and inode as the store recorded them), or it was hashed just now: with
                ``--check``, or because it is small (up to ``CHEAP_CHECK``)
    unverified  present, big, and installed by another tool (huggingface_hub does not hash what it
                fetches) or changed since dsmirror installed it
    corrupt     ``--check`` found content that does not match the file's name or recorded digest
    incomplete  a file, a blob or a link target is missing
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dsmirror._core.settings import Settings
from dsmirror._formats import hfcache
from dsmirror._formats.installs import read_records
from dsmirror._formats.ollama import parse_ollama_manifest, parse_ollama_name, store_blob, store_manifests
from dsmirror._install.records import store_records, vouched

__all__ = ["CHEAP_CHECK", "InstalledModel", "list_installed"]

#: Files up to this size that no record vouches for are hashed by ``dsmirror ls`` even without --check.
CHEAP_CHECK = 1 << 20
_RANK = {"verified": 0, "unverified": 1, "corrupt": 2, "incomplete": 3}


@dataclass(frozen=True)
class InstalledModel:
    kind: str  # hf | ollama | dir
    ref: str  # what `dsmirror rm` accepts
    name: str  # short display name
    where: Path  # snapshot folder, manifest file, or folder
    size: int  # bytes of its distinct files
    files: int
    status: str  # verified | unverified | corrupt | incomplete
    detail: str = ""


@dataclass
class _Tally:
    size: int = 0
    files: int = 0
    status: str = "verified"
    problems: list[str] = field(default_factory=list)

    def worse(self, status: str, problem: str | None = None) -> None:
        if _RANK[status] > _RANK[self.status]:
            self.status = status
        if problem and len(self.problems) < 3:
            self.problems.append(problem)

    @property
    def detail(self) -> str:
        return "; ".join(self.problems)


def _content_ok(path: Path, digest: str) -> bool:
    """Whether ``path`` holds content with this SHA-256 (64 hex) or git blob SHA-1 (40 hex)."""
    from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE
    from dsmirror._verify.digest import hash_local_file

    try:
        d = hash_local_file(path, DEFAULT_PIECE_SIZE)
    except OSError:
        return False
    return digest in (d.sha256, d.git_sha1)


def _tally_file(
    t: _Tally, root: Path, rel: str, digest: str | None, records: Mapping[str, list[int]], check: bool
) -> None:
    p = root / rel
    try:
        st = p.lstat()
    except OSError:
        t.worse("incomplete", f"{rel} missing")
        return
    if not stat.S_ISREG(st.st_mode):
        t.worse("incomplete", f"{rel} is not a regular file")
        return
    t.size += st.st_size
    t.files += 1
    if vouched(records, rel, st) and not check:
        return
    # Not vouched for by a record (or --check): hash it if asked to, or if it is cheap to.
    if digest and (check or st.st_size <= CHEAP_CHECK):
        if not _content_ok(p, digest):
            t.worse("corrupt", f"{rel} does not match {digest[:12]}")
        return
    t.worse("unverified")


def _tally_snapshot(repo_dir: Path, snap: Path, records: Mapping[str, list[int]], check: bool) -> _Tally:
    t = _Tally()
    seen: set[str] = set()
    for rel, blob in hfcache.snapshot_links(repo_dir, snap):
        if blob is None:
            _tally_file(t, snap, rel, None, {}, check)
        elif not blob:
            t.worse("incomplete", f"{rel} links outside blobs/")
        elif blob not in seen:
            seen.add(blob)
            _tally_file(t, repo_dir, blob, blob.removeprefix("blobs/"), records, check)
    return t


def _list_hf(settings: Settings, check: bool) -> list[InstalledModel]:
    out: list[InstalledModel] = []
    for repo_dir in hfcache.repo_folders(settings.hf_cache):
        repo_id = hfcache.repo_id_of(repo_dir)
        records = store_records(repo_dir)
        refs = hfcache.read_refs(repo_dir)
        with contextlib.suppress(OSError):
            for snap in hfcache.snapshots(repo_dir):
                t = _tally_snapshot(repo_dir, snap, records, check)
                revs = [rev for rev, commit in refs.items() if commit == snap.name]
                rev = "main" if "main" in revs else (sorted(revs)[0] if revs else snap.name)
                out.append(
                    InstalledModel(
                        "hf", f"hf://{repo_id}@{rev}", repo_id, snap, t.size, t.files, t.status, t.detail
                    )
                )
    return out


def _list_ollama(settings: Settings, check: bool) -> list[InstalledModel]:
    out: list[InstalledModel] = []
    models = settings.ollama_models
    records = store_records(models)
    for ref, path in store_manifests(models):
        t = _Tally()
        try:
            blobs = parse_ollama_manifest(path.read_bytes())
        except (OSError, ValueError) as exc:
            t.worse("incomplete", f"unreadable manifest: {exc}")
            blobs = ()
        for b in blobs:
            rel = store_blob(models, b.sha256)
            before = t.size
            _tally_file(t, models, rel, b.sha256, records, check)
            if t.size - before not in (0, b.size):
                t.worse("corrupt", f"{rel} is not {b.size} bytes")
        name = parse_ollama_name(ref)
        out.append(
            InstalledModel("ollama", f"ollama://{ref}", name.short, path, t.size, t.files, t.status, t.detail)
        )
    return out


def _list_dirs(settings: Settings, check: bool) -> list[InstalledModel]:
    out: list[InstalledModel] = []
    for _, doc in read_records(settings.state_dir):
        dest = Path(str(doc.get("dest")))
        records = store_records(dest)
        t = _Tally()
        for rel, _size, sha in doc.get("files", []):
            _tally_file(t, dest, str(rel), str(sha), records, check)
        out.append(
            InstalledModel("dir", str(dest), str(doc.get("name")), dest, t.size, t.files, t.status, t.detail)
        )
    return out


def list_installed(settings: Settings, *, check: bool = False) -> list[InstalledModel]:
    """Models in the HF cache, the Ollama store and the folders dsmirror installed into.

    ``check`` hashes every file (slow for big models) instead of trusting the store's records.
    """
    return [*_list_hf(settings, check), *_list_ollama(settings, check), *_list_dirs(settings, check)]
