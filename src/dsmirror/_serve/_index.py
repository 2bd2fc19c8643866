"""What the server serves: an immutable index of model files on local disk.

The index is built once, before the server starts; handlers only look things up in it and
never build a filesystem path from a URL. Everything that reads or hashes files lives here,
so no request handler ever blocks on hashing.

Four ways to fill it:

* ``HfRepo.from_folder`` — a plain folder published as one Hugging Face repo at one commit.
  Files of at least ``lfs_min_size`` bytes are LFS files (etag = SHA-256 of the content);
  smaller ones are plain git blobs (etag = git blob SHA-1, ``sha1(b"blob %d\\0" + data)``).
* ``index_hf_cache`` — the cache ``huggingface_hub`` writes, read without hashing the big
  files (their names are their etags)::

      <cache>/models--<org>--<name>/
          refs/<revision>                  40-hex commit, no newline ("refs/pr/1" nests)
          snapshots/<commit>/<path>        relative symlink -> ../../blobs/<etag>
          blobs/<etag>                     etag: 64 hex = LFS sha256, 40 hex = git blob sha1
          trees/<commit>.json, .no_exist/  ignored

* ``index_ollama_store`` — an ``$OLLAMA_MODELS`` folder::

      <models>/manifests/<host>/<namespace>/<name>/<tag>   manifest bytes as received
      <models>/blobs/sha256-<hex>                          one file per layer / config

* ``index_manifest_folder`` — a plain folder described by a dsmirror manifest (``--folder``).
  A file is served only once it is known to match the manifest: by the install record dsmirror
  wrote when it put the file there (``.dsmirror/installed/<manifest sha256>.json``: size, mtime,
  inode), or else by hashing it once. Missing or mismatching files are not served.

Hashing is remembered across rescans by ``DigestCache`` (keyed by path, size, mtime and inode),
so a rescan of an unchanged store hashes nothing.

Symlinks are followed only when their target stays inside the store being indexed
(for the HF cache: inside the repo's own ``blobs/``); anything else is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dsmirror._core.errors import InputError
from dsmirror._formats.manifest import Manifest
from dsmirror._formats.paths import check_repo_path
from dsmirror._formats.private import PrivateArea

__all__ = [
    "LFS_MIN_SIZE",
    "DigestCache",
    "HfRepo",
    "ManifestFolder",
    "ModelIndex",
    "OllamaLayer",
    "OllamaModel",
    "ServedFile",
    "check_repo_path",
    "index_hf_cache",
    "index_manifest_folder",
    "index_ollama_store",
    "lfs_pointer",
    "parse_ollama_manifest",
]

logger = logging.getLogger(__name__)

LFS_MIN_SIZE = 1024 * 1024
_CHUNK = 8 * 1024 * 1024

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
OLLAMA_HOST = "registry.ollama.ai"

_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# Ollama names are [a-zA-Z0-9] plus "._-" inside; tags allow the same. Hosts may carry a port.
_OLLAMA_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_OLLAMA_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?")
_HF_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file git stores instead of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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
            return _git_blob_sha1(lfs_pointer(self.sha256, self.size))
        assert self.git_sha1 is not None
        return self.git_sha1

    @property
    def pointer_size(self) -> int:
        assert self.sha256 is not None
        return len(lfs_pointer(self.sha256, self.size))


def _hash_file(path: Path, *, git: bool) -> tuple[int, str, str | None]:
    """Return (size, sha256, git blob sha1 or None) of a file, read once in chunks."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size) if git else None
    seen = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            seen += len(chunk)
            sha256.update(chunk)
            if sha1 is not None:
                sha1.update(chunk)
    if seen != size:
        raise InputError(f"{path} changed size while it was being indexed")
    return size, sha256.hexdigest(), sha1.hexdigest() if sha1 is not None else None


_StatKey = tuple[str, int, int, int]


class DigestCache:
    """Digests of files already hashed, valid while (path, size, mtime_ns, inode) are unchanged.

    Thread-safe. ``prime`` records a digest computed elsewhere (a pull that just verified the file),
    so the next rescan does not hash it again.
    """

    def __init__(self) -> None:
        self._known: dict[_StatKey, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path: Path, st: os.stat_result) -> _StatKey:
        return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)

    def digests(self, path: Path, *, git: bool) -> tuple[int, str, str | None]:
        """(size, sha256, git blob sha1 if ``git``) of ``path``, hashing only if not known."""
        st = path.stat()
        key = self._key(path, st)
        with self._lock:
            known = self._known.get(key)
        if known is not None and (known[1] is not None or not git):
            return st.st_size, known[0], known[1]
        size, sha256, sha1 = _hash_file(path, git=git)
        with self._lock:
            self._known[key] = (sha256, sha1)
        return size, sha256, sha1

    def prime(self, path: Path, sha256: str, git_sha1: str | None = None) -> None:
        st = path.stat()
        with self._lock:
            self._known[self._key(path, st)] = (sha256, git_sha1)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_HF_ID_PART.fullmatch(p) for p in parts):
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
        _check_repo_id(self.repo_id)
        if not _HEX40.fullmatch(self.commit):
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
            size, sha256, git_sha1 = _hash_file(disk, git=not lfs)
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
            if not _inside(disk, root) or not disk.is_file():
                logger.warning("skipping %s: not a regular file inside %s", entry, root)
                continue
            yield rel, disk


_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")
#: Served folders appear on the Hugging Face routes as ``dsmirror/<manifest name>``.
FOLDER_HF_ORG = "dsmirror"


@dataclass(frozen=True)
class ManifestFolder:
    """A folder described by a dsmirror manifest; ``files`` are those present and verified."""

    manifest: Manifest
    root: Path
    files: dict[str, ServedFile]

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def repo_id(self) -> str:
        slug = _SLUG_BAD.sub("-", self.manifest.name).strip("-._") or self.sha256[:12]
        return f"{FOLDER_HF_ORG}/{slug}"

    def as_hf_repo(self) -> HfRepo:
        """The folder as a Hugging Face repo at a commit derived from the manifest's identity."""
        commit = self.sha256[:40]
        return HfRepo(repo_id=self.repo_id, commit=commit, refs={"main": commit}, files=dict(self.files))


def index_manifest_folder(
    manifest: Manifest, folder: Path, *, digests: DigestCache | None = None
) -> ManifestFolder:
    """The files of ``folder`` that match ``manifest`` (see the module docstring for how)."""
    root = Path(folder).resolve()
    digests = digests or DigestCache()
    record: dict[str, Any] = {}
    installed = PrivateArea(root).install_record(manifest.sha256)
    try:
        loaded = json.loads(installed.read_bytes())
        if isinstance(loaded, dict):
            record = loaded
    except (OSError, ValueError):
        pass
    files: dict[str, ServedFile] = {}
    for entry in manifest.files:
        disk = root / entry.path
        try:
            st = disk.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or disk.resolve() != disk or st.st_size != entry.size:
            if stat.S_ISREG(st.st_mode) or disk.is_symlink():
                logger.warning("not serving %s: not a regular file of %d bytes", disk, entry.size)
            continue
        if record.get(entry.path) != [st.st_size, st.st_mtime_ns, st.st_ino]:
            try:
                _, sha256, _ = digests.digests(disk, git=False)
            except (OSError, InputError) as exc:
                logger.warning("not serving %s: %s", disk, exc)
                continue
            if sha256 != entry.sha256:
                logger.warning("not serving %s: its SHA-256 does not match the manifest", disk)
                continue
        files[entry.path] = ServedFile(entry.path, disk, entry.size, entry.sha256, None, lfs=True)
    return ManifestFolder(manifest, root, files)


@dataclass(frozen=True)
class OllamaLayer:
    """A blob the manifest refers to (the config or one layer)."""

    media_type: str
    digest: str
    size: int


def parse_ollama_manifest(raw: bytes) -> tuple[str, tuple[OllamaLayer, ...]]:
    """Return (manifest mediaType, [config, *layers]) of a schemaVersion 2 manifest."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError("manifest is not JSON") from exc
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ValueError("not a schemaVersion 2 manifest")
    media_type = doc.get("mediaType")
    layers: list[OllamaLayer] = []
    for entry in [doc.get("config"), *(doc.get("layers") or [])]:
        if not isinstance(entry, dict):
            raise ValueError("malformed manifest entry")
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ValueError(f"bad digest {digest!r}")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"bad size {size!r} for {digest}")
        layers.append(OllamaLayer(str(entry.get("mediaType", "")), digest, size))
    return (media_type if isinstance(media_type, str) else MANIFEST_V2), tuple(layers)


@dataclass(frozen=True)
class OllamaModel:
    """One tagged Ollama model: its manifest bytes (served as stored) and its blobs.

    ``blobs`` maps "sha256:<hex>" to the file holding the blob, or to the bytes themselves
    for small blobs built in memory (a config passed as ``bytes`` to ``from_files``).
    """

    host: str
    namespace: str
    name: str
    tag: str
    manifest: bytes
    blobs: dict[str, Path | bytes]

    def __post_init__(self) -> None:
        if not _OLLAMA_HOST.fullmatch(self.host):
            raise ValueError(f"bad registry host {self.host!r}")
        for part in (self.namespace, self.name, self.tag):
            if not _OLLAMA_PART.fullmatch(part):
                raise ValueError(f"bad Ollama name component {part!r}")
        for layer in self.layers:
            blob = self.blobs.get(layer.digest)
            if blob is None:
                raise ValueError(f"{self.reference}: no blob for {layer.digest}")
            if isinstance(blob, bytes) and len(blob) != layer.size:
                raise ValueError(f"{self.reference}: blob {layer.digest} is not {layer.size} bytes")

    @property
    def reference(self) -> str:
        return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"

    @cached_property
    def _parsed(self) -> tuple[str, tuple[OllamaLayer, ...]]:
        try:
            return parse_ollama_manifest(self.manifest)
        except ValueError as exc:
            raise ValueError(f"{self.reference}: {exc}") from exc

    @property
    def media_type(self) -> str:
        return self._parsed[0]

    @property
    def layers(self) -> tuple[OllamaLayer, ...]:
        """The config blob first, then the layers, as the manifest lists them."""
        return self._parsed[1]

    @cached_property
    def digest(self) -> str:
        """The manifest's own digest (``Docker-Content-Digest``)."""
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def blob_size(self, digest: str) -> int | None:
        for layer in self.layers:
            if layer.digest == digest:
                return layer.size
        return None

    @classmethod
    def from_files(
        cls,
        namespace: str,
        name: str,
        tag: str,
        layers: list[tuple[str, Path]],
        config: Path | bytes,
        *,
        host: str = OLLAMA_HOST,
    ) -> OllamaModel:
        """Build a schemaVersion 2 manifest over the given files (hashing each once)."""
        blobs: dict[str, Path | bytes] = {}

        def describe(media_type: str, source: Path | bytes) -> dict[str, Any]:
            if isinstance(source, bytes):
                size, digest = len(source), hashlib.sha256(source).hexdigest()
                blobs["sha256:" + digest] = source
            else:
                disk = Path(source).resolve()
                size, digest, _ = _hash_file(disk, git=False)
                blobs["sha256:" + digest] = disk
            return {"mediaType": media_type, "digest": "sha256:" + digest, "size": size}

        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": describe(CONFIG_V1, config),
            "layers": [describe(media_type, path) for media_type, path in layers],
        }
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        return cls(host=host, namespace=namespace, name=name, tag=tag, manifest=raw, blobs=blobs)


class ModelIndex:
    """Everything served, with the lookups the handlers need. Immutable after construction.

    A repo id may be present at several commits (an HF cache with several snapshots);
    a branch name resolves through the ``refs`` of the snapshot it points at.
    """

    def __init__(
        self,
        hf_repos: Iterable[HfRepo] = (),
        ollama_models: Iterable[OllamaModel] = (),
        folders: Iterable[ManifestFolder] = (),
    ) -> None:
        self._hf: dict[str, dict[str, HfRepo]] = {}
        self._hf_refs: dict[str, dict[str, str]] = {}
        self._folders: dict[str, ManifestFolder] = {}
        hf_repos = list(hf_repos)
        for folder in folders:
            if folder.sha256 in self._folders or folder.name in self._folders:
                logger.warning("%s: a folder of the same manifest or name is already served", folder.root)
                continue
            self._folders[folder.sha256] = self._folders[folder.name] = folder
            if folder.files and not any(r.repo_id == folder.repo_id for r in hf_repos):
                hf_repos.append(folder.as_hf_repo())
        for repo in hf_repos:
            commits = self._hf.setdefault(repo.repo_id, {})
            if repo.commit in commits:
                raise InputError(f"{repo.repo_id} at {repo.commit} is indexed twice")
            commits[repo.commit] = repo
            refs = self._hf_refs.setdefault(repo.repo_id, {})
            for ref in repo.refs:
                if ref in refs:
                    raise InputError(f"{repo.repo_id}: two snapshots claim ref {ref!r}")
                refs[ref] = repo.commit
        self._ollama: dict[tuple[str, str, str], OllamaModel] = {}
        for model in ollama_models:
            key = (model.namespace, model.name, model.tag)
            if key in self._ollama:
                logger.warning("%s shadowed by %s", model.reference, self._ollama[key].reference)
                continue
            self._ollama[key] = model
        self._served_paths = frozenset(self._disk_paths())

    def _disk_paths(self) -> Iterator[Path]:
        for commits in self._hf.values():
            for repo in commits.values():
                for f in repo.files.values():
                    yield f.disk_path
        for model in self._ollama.values():
            for blob in model.blobs.values():
                if isinstance(blob, Path):
                    yield blob
        for folder in self._folders.values():
            for f in folder.files.values():
                yield f.disk_path

    # --- Hugging Face ------------------------------------------------------------------

    @property
    def hf_repos(self) -> list[HfRepo]:
        return [repo for commits in self._hf.values() for repo in commits.values()]

    def has_hf_repo(self, repo_id: str) -> bool:
        return repo_id in self._hf

    def find_hf(self, repo_id: str, revision: str) -> HfRepo | None:
        """The repo at ``revision`` (a branch name or a full commit id), if served."""
        commits = self._hf.get(repo_id)
        if commits is None:
            return None
        commit = self._hf_refs[repo_id].get(revision, revision)
        return commits.get(commit)

    def default_hf(self, repo_id: str) -> HfRepo | None:
        """The snapshot a client gets without naming a revision: main, else master, else the only one."""
        for ref in ("main", "master"):
            if (repo := self.find_hf(repo_id, ref)) is not None:
                return repo
        commits = self._hf.get(repo_id, {})
        return next(iter(commits.values())) if len(commits) == 1 else None

    # --- Ollama ------------------------------------------------------------------------

    @property
    def ollama_models(self) -> list[OllamaModel]:
        return list(self._ollama.values())

    def find_ollama(self, namespace: str, name: str, reference: str) -> OllamaModel | None:
        """The model by tag, or by manifest digest ("sha256:<hex>")."""
        if _DIGEST.fullmatch(reference):
            for (ns, nm, _), model in self._ollama.items():
                if (ns, nm) == (namespace, name) and model.digest == reference:
                    return model
            return None
        return self._ollama.get((namespace, name, reference))

    def find_ollama_blob(self, namespace: str, name: str, digest: str) -> tuple[Path | bytes, int] | None:
        """A blob of any tag of ``namespace/name`` (registries scope blobs by repository)."""
        for (ns, nm, _), model in self._ollama.items():
            if (ns, nm) == (namespace, name) and (size := model.blob_size(digest)) is not None:
                return model.blobs[digest], size
        return None

    # --- dsmirror manifest folders -------------------------------------------------------

    @property
    def folders(self) -> list[ManifestFolder]:
        return list({id(f): f for f in self._folders.values()}.values())

    def find_folder(self, key: str) -> ManifestFolder | None:
        """A served folder by its manifest's name or SHA-256."""
        return self._folders.get(key)

    def find_manifest(self, sha256: str) -> Manifest | None:
        folder = self._folders.get(sha256)
        return folder.manifest if folder is not None and folder.sha256 == sha256 else None

    # --- safety ------------------------------------------------------------------------

    def serves_path(self, disk_path: Path) -> bool:
        """Whether ``disk_path`` is one of the indexed files (the only files ever opened)."""
        return disk_path in self._served_paths

    def counts(self) -> dict[str, int]:
        return {
            "hf_repos": len(self._hf),
            "hf_snapshots": sum(len(c) for c in self._hf.values()),
            "ollama_models": len(self._ollama),
            "files": len(self._served_paths),
        }


# --- reading existing stores -----------------------------------------------------------


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
    for repo_dir in sorted(root.glob("models--*")):
        if repo_dir.is_symlink() or not repo_dir.is_dir():
            continue
        parts = repo_dir.name[len("models--") :].split("--")
        repo_id = "/".join(parts)
        try:
            _check_repo_id(repo_id)
        except ValueError:
            logger.warning("skipping %s: only org/name repo ids are served", repo_dir)
            continue
        refs = _read_hf_refs(repo_dir / "refs")
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        for snap in sorted(snapshots.iterdir()):
            if not _HEX40.fullmatch(snap.name) or snap.is_symlink() or not snap.is_dir():
                continue
            files = dict(_hf_snapshot_files(snap, repo_dir / "blobs", digests or DigestCache()))
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


def _read_hf_refs(refs_dir: Path) -> dict[str, str]:
    refs: dict[str, str] = {}
    if not refs_dir.is_dir():
        return refs
    for dirpath, _, filenames in os.walk(refs_dir):
        for name in filenames:
            ref_file = Path(dirpath) / name
            if ref_file.is_symlink():
                continue
            commit = ref_file.read_text(encoding="ascii", errors="replace").strip()
            if _HEX40.fullmatch(commit):
                refs[ref_file.relative_to(refs_dir).as_posix()] = commit
    return refs


def _hf_snapshot_files(snap: Path, blobs_dir: Path, digests: DigestCache) -> Iterator[tuple[str, ServedFile]]:
    blobs = blobs_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(snap):
        dirnames.sort()
        for name in sorted(filenames):
            entry = Path(dirpath) / name
            rel = entry.relative_to(snap).as_posix()
            if not entry.is_symlink():
                logger.warning("skipping %s: not a symlink into blobs/ (copied cache?)", entry)
                continue
            disk = entry.resolve()
            if disk.parent != blobs:
                logger.warning("skipping %s: links outside %s", entry, blobs)
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
            if _HEX64.fullmatch(etag):
                yield rel, ServedFile(rel, disk, st.st_size, etag, None, lfs=True)
            elif _HEX40.fullmatch(etag):
                _, sha256, _ = digests.digests(disk, git=False)
                yield rel, ServedFile(rel, disk, st.st_size, sha256, etag, lfs=False)
            else:
                logger.warning("skipping %s: blob name %r is not an etag", entry, etag)


def index_ollama_store(models_dir: Path) -> list[OllamaModel]:
    """Index the models of an Ollama store; models with a missing or short blob are skipped."""
    root = Path(models_dir).resolve()
    manifests = root / "manifests"
    blobs_dir = (root / "blobs").resolve()
    if not manifests.is_dir():
        return []
    models: list[OllamaModel] = []
    for manifest_file in sorted(manifests.glob("*/*/*/*")):
        host, namespace, name, tag = manifest_file.relative_to(manifests).parts
        real = manifest_file.resolve()
        if not _inside(real, root) or not real.is_file():
            logger.warning("skipping %s: not a regular file inside %s", manifest_file, root)
            continue
        try:
            raw = real.read_bytes()
            _, layers = parse_ollama_manifest(raw)
            blobs: dict[str, Path | bytes] = {
                layer.digest: _ollama_blob(blobs_dir, layer) for layer in layers
            }
            models.append(OllamaModel(host, namespace, name, tag, raw, blobs))
        except (OSError, ValueError) as exc:
            logger.warning("skipping %s: %s", manifest_file, exc)
    return models


def _ollama_blob(blobs_dir: Path, layer: OllamaLayer) -> Path:
    hexdigest = layer.digest.removeprefix("sha256:")
    for name in (f"sha256-{hexdigest}", f"sha256:{hexdigest}"):
        candidate = blobs_dir / name
        if not candidate.exists():
            continue
        disk = candidate.resolve()
        if disk.parent != blobs_dir or not disk.is_file():
            raise ValueError(f"blob {layer.digest} is not a regular file in {blobs_dir}")
        if disk.stat().st_size != layer.size:
            raise ValueError(f"blob {layer.digest} is not {layer.size} bytes")
        return disk
    raise ValueError(f"blob {layer.digest} is missing")
