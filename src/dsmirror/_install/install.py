"""Install targets, and what ``dsmirror ls`` lists and ``dsmirror rm`` removes.

Hugging Face cache (``--format hf``), as huggingface_hub writes and reads it under ``HF_HUB_CACHE``::

    models--<org>--<name>/
      blobs/<etag>                 the content; etag = SHA-256 for LFS files, git blob SHA-1 otherwise.
                                   Put there by the store: a verified file renamed into place.
      snapshots/<commit>/<path>    relative symlink ../../blobs/<etag> (one more ../ per folder of <path>)
      refs/<revision>              the 40-hex commit, no newline; only when the revision is not the commit
      trees/<commit>.json          huggingface_hub's tree cache (format_version 1): every file of the repo
                                   at that commit, so that an offline snapshot_download tells a complete
                                   snapshot from one narrowed by --include (IncompleteSnapshotError)
      .dsmirror/                   dsmirror's store: partial area while pulling, installed records

Ollama store (``--format ollama``), under ``OLLAMA_MODELS``::

    blobs/sha256-<hex>                          every blob, the config included; put there by the store
    manifests/<host>/<namespace>/<name>/<tag>   the manifest bytes as the registry sent them, written
                                                last and atomically: Ollama never sees a half model
    .dsmirror/                                  dsmirror's store (never any partial file in blobs/)

Plain folders (``--format dir``): ``DEST/<path>``, and a record so that ``dsmirror ls`` finds them,
``$XDG_STATE_HOME/dsmirror/installs/<key>.json``, ``<key>`` = SHA-256 of ``dest + "\\0" + name``::

    {"version": 1, "format": "dir", "ref": "deepseek-r1:7b", "name": "deepseek-r1:7b",
     "dest": "/abs/dest", "manifest_sha256": "<hex>", "files": [["config.json", 519, "<sha256>"], ...]}

A model's status in ``dsmirror ls`` is the worst of its files':

    verified    dsmirror verified the file when it installed it and it has not changed since (size,
                mtime and inode as the store recorded them), or it was hashed just now: with
                ``--check``, or because it is small (up to ``CHEAP_CHECK``)
    unverified  present, big, and installed by another tool (huggingface_hub does not hash what it
                fetches) or changed since dsmirror installed it
    corrupt     ``--check`` found content that does not match the file's name or recorded digest
    incomplete  a file, a blob or a link target is missing

``find_store_model`` reads an installed model back as the files it consists of and where their bytes
are (for ``dsmirror seed``, which shares them without copying): an Ollama model is its manifest file
and its blobs, with the store's own relative paths (so a copy of them is an Ollama store again); a
Hugging Face snapshot is its repo paths, each read from the blob its snapshot link points at.

``dsmirror rm`` never follows a symlink: links are removed as links, and a folder that is itself a
link is refused. It removes a snapshot with the refs that point at it and the blobs no other
snapshot uses, or an Ollama manifest with the blobs no other manifest uses, or the files a plain
folder install recorded. It refuses while a pull holds the store's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsmirror._core.errors import AlreadyInProgress, StorageError, UsageError
from dsmirror._core.fsutil import atomic_write_bytes, fsync_dir, storage_errors
from dsmirror._core.settings import Settings
from dsmirror._formats.manifest import Manifest
from dsmirror._formats.paths import validate_relpath
from dsmirror._formats.private import PrivateArea
from dsmirror._journal.store import Store

__all__ = [
    "InstalledModel",
    "Removal",
    "StoreFile",
    "StoreModel",
    "find_store_model",
    "hf_after_install",
    "hf_cache_repo_dirs",
    "hf_repo_folder",
    "install_hf_snapshot",
    "list_installed",
    "ollama_after_install",
    "record_after_install",
    "remove_installed",
]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OLLAMA_BLOB = re.compile(r"^sha256[-:]([0-9a-f]{64})$")
TREE_FORMAT_VERSION = 1
RECORD_VERSION = 1
#: Files up to this size that no record vouches for are hashed by ``dsmirror ls`` even without --check.
CHEAP_CHECK = 1 << 20
_RANK = {"verified": 0, "unverified": 1, "corrupt": 2, "incomplete": 3}


# -- layout helpers ---------------------------------------------------------------------------------
def hf_repo_folder(cache: Path, repo_id: str) -> Path:
    """``models--org--name`` under a Hugging Face cache."""
    return cache / ("models--" + repo_id.replace("/", "--"))


def hf_cache_repo_dirs(hf_cache: Path) -> list[Path]:
    """The model folders of a Hugging Face cache (``models--*``), real folders only."""
    try:
        entries = sorted(hf_cache.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.startswith("models--") and p.is_dir() and not p.is_symlink()]


def _check_parents(root: Path, rel: str) -> Path:
    """``root / rel`` after refusing a symlink among the folders on the way (the last part may be one)."""
    cur = root
    parts = rel.split("/")
    for part in parts[:-1]:
        cur = cur / part
        if cur.is_symlink():
            raise StorageError(f"{cur} is a symlink; refusing to write through it", path=str(cur))
    return cur / parts[-1]


def _replace_symlink(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target``, atomically (a temp link renamed over it)."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            return
    if link.is_dir() and not link.is_symlink():
        raise StorageError(f"{link} is a folder where a file link belongs", path=str(link))
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.dsmirror-link"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


# -- installing -------------------------------------------------------------------------------------
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
    present; a commit's tree never changes). Every blob must already be in place.
    """
    if not _HEX40.match(commit):
        raise StorageError(f"not a commit id: {commit!r}")
    snap = repo_dir / "snapshots" / commit
    with storage_errors(repo_dir):
        folders: set[Path] = set()
        for path, etag in files:
            validate_relpath(path)
            blob = repo_dir / "blobs" / etag
            if not (_HEX40.match(etag) or _HEX64.match(etag)) or not blob.is_file() or blob.is_symlink():
                raise StorageError(f"{blob} is not an installed blob", path=str(blob))
            link = _check_parents(snap, path)
            _replace_symlink(link, "../" * (path.count("/") + 2) + f"blobs/{etag}")
            folders.add(link.parent)
        for folder in folders:
            fsync_dir(folder)
        if revision != commit:
            validate_relpath(revision, where="revision")
            atomic_write_bytes(_check_parents(repo_dir / "refs", revision), commit.encode())
        trees = repo_dir / "trees" / f"{commit}.json"
        if tree is not None and not trees.exists():
            doc = {"format_version": TREE_FORMAT_VERSION, "files": {p: dict(tree[p]) for p in sorted(tree)}}
            atomic_write_bytes(trees, json.dumps(doc, indent=1).encode())


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


def _record_key(dest: Path, name: str) -> str:
    return hashlib.sha256(f"{dest}\0{name}".encode()).hexdigest()


def record_dir_install(
    settings: Settings,
    ref: str,
    fmt: str,
    manifest: Manifest,
    dest: Path,
    extra: Sequence[tuple[str, int, str]] = (),
) -> Path:
    """Write the install record of a plain-folder install (see the module docstring).

    ``extra``: files written besides the manifest's, as (path, size, sha256).
    """
    dest = dest.absolute()
    doc = {
        "version": RECORD_VERSION,
        "format": fmt,
        "ref": ref,
        "name": manifest.name,
        "dest": str(dest),
        "manifest_sha256": manifest.sha256,
        "files": [[f.path, f.size, f.sha256] for f in manifest.files] + [list(x) for x in extra],
    }
    path = settings.state_dir / "installs" / f"{_record_key(dest, manifest.name)}.json"
    atomic_write_bytes(path, json.dumps(doc, sort_keys=True).encode())
    return path


def record_after_install(
    settings: Settings, ref: str, fmt: str, manifest: Manifest
) -> Callable[[Store], None]:
    def after(store: Store) -> None:
        record_dir_install(settings, ref, fmt, manifest, store.dest)

    return after


def ollama_after_install(
    settings: Settings,
    dest: Path,
    manifest_rel: str,
    raw: bytes,
    ref: str,
    manifest: Manifest,
    *,
    fmt: str,
) -> Callable[[Store], None]:
    """Write the Ollama manifest (the registry's bytes) last, once every blob is in place."""

    def after(store: Store) -> None:
        for f in manifest.files:
            blob = dest / f.path
            if not blob.is_file() or blob.is_symlink() or blob.stat().st_size != f.size:
                raise StorageError(
                    f"{blob} is missing after the pull; not writing the manifest", path=str(blob)
                )
        validate_relpath(manifest_rel)
        atomic_write_bytes(_check_parents(dest, manifest_rel), raw)
        if fmt == "dir":
            extra = [(manifest_rel, len(raw), hashlib.sha256(raw).hexdigest())]
            record_dir_install(settings, ref, fmt, manifest, dest, extra)

    return after


# -- listing ----------------------------------------------------------------------------------------
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


def _store_records(root: Path) -> dict[str, list[int]]:
    """Union of the store's installed records under ``root`` (path -> [size, mtime_ns, inode])."""
    out: dict[str, list[int]] = {}
    folder = PrivateArea(root).installed_dir
    with contextlib.suppress(OSError):
        for p in sorted(folder.glob("*.json")):
            if not _HEX64.match(p.name.removesuffix(".json")):  # <mid>.pieces.json etc. are not records
                continue
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(p.read_bytes())
                if isinstance(doc, dict):
                    out.update({k: v for k, v in doc.items() if isinstance(v, list) and len(v) == 3})
    return out


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
    if records.get(rel) == [st.st_size, st.st_mtime_ns, st.st_ino] and not check:
        return
    # Not vouched for by a record (or --check): hash it if asked to, or if it is cheap to.
    if digest and (check or st.st_size <= CHEAP_CHECK):
        if not _content_ok(p, digest):
            t.worse("corrupt", f"{rel} does not match {digest[:12]}")
        return
    t.worse("unverified")


def _read_refs(repo_dir: Path) -> dict[str, list[str]]:
    """commit -> revisions pointing at it."""
    out: dict[str, list[str]] = {}
    refs = repo_dir / "refs"
    for dirpath, _, names in os.walk(refs):
        for n in names:
            p = Path(dirpath) / n
            if p.is_symlink():
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                commit = p.read_text().strip()
                if _HEX40.match(commit):
                    out.setdefault(commit, []).append(p.relative_to(refs).as_posix())
    return out


def _snapshot_links(repo_dir: Path, snap: Path) -> Iterator[tuple[str, str | None]]:
    """(repo path, blob path relative to repo_dir or None if not a link into blobs/) per snapshot file."""
    blobs = os.path.normpath(repo_dir / "blobs")
    for dirpath, dirnames, names in os.walk(snap, followlinks=False):
        dirnames.sort()
        for n in sorted(names) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            p = Path(dirpath) / n
            rel = p.relative_to(snap).as_posix()
            if not p.is_symlink():
                yield rel, None
                continue
            target = os.path.normpath(os.path.join(dirpath, os.readlink(p)))
            if os.path.dirname(target) != blobs:
                yield rel, ""
                continue
            yield rel, "blobs/" + os.path.basename(target)


def _list_hf(settings: Settings, check: bool) -> list[InstalledModel]:
    out: list[InstalledModel] = []
    for repo_dir in hf_cache_repo_dirs(settings.hf_cache):
        repo_id = "/".join(repo_dir.name.split("--")[1:])
        records = _store_records(repo_dir)
        refs = _read_refs(repo_dir)
        snaps = repo_dir / "snapshots"
        with contextlib.suppress(OSError):
            for snap in sorted(snaps.iterdir()):
                if snap.is_symlink() or not snap.is_dir():
                    continue
                t = _Tally()
                seen: set[str] = set()
                for rel, blob in _snapshot_links(repo_dir, snap):
                    if blob is None:
                        _tally_file(t, snap, rel, None, {}, check)
                    elif not blob:
                        t.worse("incomplete", f"{rel} links outside blobs/")
                    elif blob not in seen:
                        seen.add(blob)
                        _tally_file(t, repo_dir, blob, blob.removeprefix("blobs/"), records, check)
                revs = refs.get(snap.name, [])
                rev = "main" if "main" in revs else (sorted(revs)[0] if revs else snap.name)
                out.append(
                    InstalledModel(
                        "hf", f"hf://{repo_id}@{rev}", repo_id, snap, t.size, t.files, t.status, t.detail
                    )
                )
    return out


def _ollama_manifests(models: Path) -> Iterator[tuple[str, Path]]:
    """(host/ns/name:tag, manifest file) of an Ollama store."""
    root = models / "manifests"
    for path in sorted(root.glob("*/*/*/*")):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            host, ns, name, tag = path.relative_to(root).parts
            yield f"{host}/{ns}/{name}:{tag}", path


def _ollama_blobs(raw: bytes) -> list[tuple[str, int]]:
    from dsmirror._formats.ollama import parse_ollama_manifest

    return [(b.sha256, b.size) for b in parse_ollama_manifest(raw)]


def _list_ollama(settings: Settings, check: bool) -> list[InstalledModel]:
    from dsmirror._formats.ollama import parse_ollama_name

    out: list[InstalledModel] = []
    models = settings.ollama_models
    records = _store_records(models)
    for ref, path in _ollama_manifests(models):
        t = _Tally()
        try:
            blobs = _ollama_blobs(path.read_bytes())
        except (OSError, ValueError) as exc:
            t.worse("incomplete", f"unreadable manifest: {exc}")
            blobs = []
        for sha, size in blobs:
            rel = f"blobs/sha256-{sha}"
            if not (models / rel).exists() and (models / f"blobs/sha256:{sha}").exists():
                rel = f"blobs/sha256:{sha}"
            before = t.size
            _tally_file(t, models, rel, sha, records, check)
            if t.size - before not in (0, size):
                t.worse("corrupt", f"{rel} is not {size} bytes")
        name = parse_ollama_name(ref)
        out.append(
            InstalledModel("ollama", f"ollama://{ref}", name.short, path, t.size, t.files, t.status, t.detail)
        )
    return out


def _dir_records(settings: Settings) -> Iterator[tuple[Path, dict[str, Any]]]:
    folder = settings.state_dir / "installs"
    with contextlib.suppress(OSError):
        for p in sorted(folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(p.read_bytes())
                if isinstance(doc, dict) and doc.get("version") == RECORD_VERSION:
                    yield p, doc


def _list_dirs(settings: Settings, check: bool) -> list[InstalledModel]:
    out: list[InstalledModel] = []
    for _, doc in _dir_records(settings):
        dest = Path(str(doc.get("dest")))
        records = _store_records(dest)
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


# -- reading a model back, for seeding --------------------------------------------------------------
@dataclass(frozen=True)
class StoreFile:
    """One file of an installed model: ``path`` as the model names it, its bytes at ``root/<disk>``."""

    path: str
    disk: str  # relative to StoreModel.root
    size: int
    #: The content digest the store's name for it gives: SHA-256 (64 hex), git blob SHA-1 (40 hex),
    #: or "" when the store names none (a real file in a snapshot folder).
    digest: str
    #: dsmirror verified it when it installed it, and its size, mtime and inode have not changed since.
    vouched: bool


@dataclass(frozen=True)
class StoreModel:
    kind: str  # hf | ollama
    ref: str  # canonical: hf://org/name@<commit>, ollama://host/ns/name:tag
    name: str  # what the model is called (the torrent's name)
    root: Path
    files: tuple[StoreFile, ...]


def _vouched(records: Mapping[str, list[int]], rel: str, st: os.stat_result) -> bool:
    return records.get(rel) == [st.st_size, st.st_mtime_ns, st.st_ino]


def _store_file(root: Path, path: str, disk: str, digest: str, records: Mapping[str, list[int]]) -> StoreFile:
    p = root / disk
    try:
        st = p.stat()  # follows a snapshot link to its blob
    except OSError:
        raise UsageError(
            f"{p} is missing: the model is incomplete", hint="pull it again, or see `dsmirror ls`"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{p} is not a regular file")
    return StoreFile(path, disk, st.st_size, digest, _vouched(records, disk, st))


def _hf_store_model(settings: Settings, target: str) -> StoreModel:
    repo, _, rev = target.removeprefix("hf://").partition("@")
    if repo.count("/") != 1:
        raise UsageError(f"not a repo: {target!r}", hint="write it like hf://org/name[@revision]")
    rev = rev or "main"
    repo_dir = hf_repo_folder(settings.hf_cache, repo)
    if not repo_dir.is_dir():
        raise UsageError(f"{repo} is not in the Hugging Face cache ({settings.hf_cache})")
    _real_dir(repo_dir)
    refs = _read_refs(repo_dir)
    commit = rev if _HEX40.match(rev) else next((c for c, rs in refs.items() if rev in rs), None)
    snap = repo_dir / "snapshots" / (commit or "")
    if commit is None or not snap.is_dir() or snap.is_symlink():
        raise UsageError(f"{repo} has no snapshot for {rev!r} in the cache", hint="see `dsmirror ls`")
    records = _store_records(repo_dir)
    files = []
    for rel, blob in _snapshot_links(repo_dir, snap):
        if blob == "":
            raise UsageError(f"{snap / rel} links outside the repo's blobs/; not seeding it")
        validate_relpath(rel)
        if blob is None:  # a real file in the snapshot (a copied cache): its bytes are where it is
            files.append(_store_file(repo_dir, rel, f"snapshots/{commit}/{rel}", "", {}))
        else:
            name = blob.removeprefix("blobs/")
            digest = name if _HEX40.match(name) or _HEX64.match(name) else ""
            files.append(_store_file(repo_dir, rel, blob, digest, records))
    if not files:
        raise UsageError(f"the snapshot {snap} holds no file")
    return StoreModel("hf", f"hf://{repo}@{commit}", repo, repo_dir, tuple(files))


def _ollama_store_model(settings: Settings, target: str) -> StoreModel:
    from dsmirror._formats.ollama import parse_ollama_name

    name = parse_ollama_name(target)
    models = settings.ollama_models
    manifest = models / name.manifest_path
    if not manifest.is_file() or manifest.is_symlink():
        raise UsageError(f"{name.short} is not in the Ollama store ({models})", hint="see `dsmirror ls`")
    raw = manifest.read_bytes()
    try:
        blobs = _ollama_blobs(raw)
    except ValueError as exc:
        raise UsageError(f"{manifest}: not an Ollama manifest ({exc})") from exc
    records = _store_records(models)
    # The manifest's bytes were just read and are hashed here: as good as vouched for.
    digest = hashlib.sha256(raw).hexdigest()
    files = [StoreFile(name.manifest_path, name.manifest_path, len(raw), digest, vouched=True)]
    for sha, size in blobs:
        disk = f"blobs/sha256-{sha}"
        if not (models / disk).exists() and (models / f"blobs/sha256:{sha}").exists():
            disk = f"blobs/sha256:{sha}"
        f = _store_file(models, f"blobs/sha256-{sha}", disk, sha, records)
        if f.size != size:
            raise UsageError(f"{models / disk} is {f.size} bytes, the manifest says {size}: not seeding it")
        files.append(f)
    ref = f"ollama://{name.host}/{name.namespace}/{name.name}:{name.tag}"
    return StoreModel("ollama", ref, name.short, models, tuple(files))


def find_store_model(settings: Settings, target: str) -> StoreModel:
    """The installed model ``target`` names, read back as files (see the module docstring).

    ``hf://org/name[@revision]`` (default ``main``) is a snapshot of the Hugging Face cache;
    ``ollama://[host/][namespace/]name[:tag]`` or a bare ``name:tag`` an Ollama model.
    Raises UsageError when the model is not installed (or not complete).
    """
    if target.startswith("hf://"):
        return _hf_store_model(settings, target)
    return _ollama_store_model(settings, target)


# -- removing ---------------------------------------------------------------------------------------
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


def _real_dir(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        raise StorageError(f"{path} is not a real folder (a symlink?); not touching it", path=str(path))


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
        _real_dir(root)
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


def _remove_hf(settings: Settings, repo_id: str, revision: str | None, rm: _Remover) -> None:
    repo_dir = hf_repo_folder(settings.hf_cache, repo_id)
    if not repo_dir.exists() and not repo_dir.is_symlink():
        raise UsageError(f"{repo_id} is not in the Hugging Face cache ({settings.hf_cache})")
    _real_dir(repo_dir)
    _refuse_if_pulling(repo_dir)
    if revision is None:
        rm.tree(repo_dir)
        return
    refs = _read_refs(repo_dir)
    commit = (
        revision if _HEX40.match(revision) else next((c for c, rs in refs.items() if revision in rs), None)
    )
    snap = repo_dir / "snapshots" / (commit or "")
    if commit is None or not snap.is_dir():
        raise UsageError(f"{repo_id} has no snapshot for {revision!r} in the cache")
    _real_dir(snap)
    mine = {b for _, b in _snapshot_links(repo_dir, snap) if b}
    others: set[str] = set()
    for other in (repo_dir / "snapshots").iterdir():
        if other.name != commit and other.is_dir() and not other.is_symlink():
            others |= {b for _, b in _snapshot_links(repo_dir, other) if b}
    rm.tree(snap)
    for rev in refs.get(commit, []):
        rm.unlink(repo_dir / "refs" / rev)
        rm.prune_empty((repo_dir / "refs" / rev).parent, repo_dir / "refs")
    rm.unlink(repo_dir / "trees" / f"{commit}.json")
    for blob in sorted(mine):
        if blob in others:
            rm.r.kept_shared.append(repo_dir / blob)
        else:
            rm.unlink(repo_dir / blob)
    remaining = [p for p in (repo_dir / "snapshots").iterdir() if p.name != commit] if not rm.dry_run else []
    if not rm.dry_run and not remaining:
        rm.tree(repo_dir)


def _remove_ollama(settings: Settings, ref: str, rm: _Remover) -> None:
    from dsmirror._formats.ollama import parse_ollama_name

    name = parse_ollama_name(ref)
    models = settings.ollama_models
    path = models / name.manifest_path
    if not path.is_file() or path.is_symlink():
        raise UsageError(f"{name.short} is not in the Ollama store ({models})")
    _refuse_if_pulling(models)
    mine = {sha for sha, _ in _ollama_blobs(path.read_bytes())}
    others: set[str] = set()
    for _, other in _ollama_manifests(models):
        if other != path:
            with contextlib.suppress(OSError, ValueError):
                others |= {sha for sha, _ in _ollama_blobs(other.read_bytes())}
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
    found = [(p, doc) for p, doc in _dir_records(settings) if Path(str(doc.get("dest"))) == dest]
    if not found:
        raise UsageError(f"{dest} is not a folder dsmirror installed into", hint="see `dsmirror ls`")
    _real_dir(dest)
    _refuse_if_pulling(dest)
    for record, doc in found:
        for rel, _, _ in doc.get("files", []):
            p = _check_parents(dest, validate_relpath(str(rel)))
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
