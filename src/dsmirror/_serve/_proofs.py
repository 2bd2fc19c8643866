"""What the box proves: a piece manifest of every model it serves, derived from files it verified.

The registries publish whole-file digests only, so a client pulling a registry model checks each
file at its end. The box has the files; it hashes each one once, in pieces, and publishes the
result as a dsmirror piece manifest per model, so its LAN clients check every piece as it lands,
from whatever source (the box, other mirrors, LAN peers). The client checks the manifest against
the registry's digests before it uses it (``dsmirror._resolve.registries.proof``, which also
spells the routes); the registry stays the authority.

Proving a file (``ProofBook``, one worker thread, in the background)
    The file is read once: its SHA-256 and the SHA-256 of each ``piece_size`` piece. Its proof is
    kept only when the whole-file digest is the one the index serves it by — an HF LFS blob's
    name, a small file's hashed SHA-256, an Ollama blob's digest, a manifest folder's entry — so a
    blob whose bytes rotted or were replaced under its name gets no proof (a warning says so), and
    the proof describes bytes that are what their name says. A manifest folder whose manifest has
    piece hashes is proven by them (its files were checked against it when indexed): nothing is
    hashed. What is proven is kept, per file, in the state folder (``state_dir``, when given) and
    believed again after a restart while the file's size, mtime and inode are unchanged::

        <state_dir>/proofs/<sha256 of the absolute path>.json
            {"version": 1, "path": "/abs/blobs/<etag>", "size": n, "mtime_ns": n, "ino": n,
             "sha256": "<hex>", "piece_size": 8388608, "pieces": ["<hex>", ...]}

    Every index the server swaps in (a rescan, a pull-through that finished) is looked over
    (``watch``): what is new or changed is queued, so a file pulled through is proven right after.

What is published (``hf_manifest``, ``ollama_manifest``)
    The proven files of one model — an HF repo at a commit (repo paths), an Ollama model by its
    manifest digest (``blobs/sha256-<hex>``) — as a dsmirror manifest: every file with its size,
    whole-file SHA-256 and piece hashes, ``meta`` naming the model. Files not proven yet are left
    out (the client checks those by the registry's digest alone); a model with none has no proof.
    Files proven at another piece size than most of the model's bytes are left out too (one
    manifest has one piece size).

Documented in docs/formats.md#the-boxs-proof.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest
from dsmirror._serve._hf_index import HfRepo
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_index import OllamaModel
from dsmirror._verify.digest import hash_file_pieces

__all__ = ["PROOF_RECORD_VERSION", "FileProof", "ProofBook"]

logger = logging.getLogger(__name__)

PROOF_RECORD_VERSION = 1
#: A proof record larger than this is not read (a 1 TB file in 1 MiB pieces is about 70 MB).
_MAX_RECORD = 256 << 20
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class FileProof:
    """One file's digests: its SHA-256 and the SHA-256 of each piece."""

    sha256: str
    piece_size: int
    pieces: tuple[str, ...]


_StatKey = tuple[int, int, int]  # size, mtime_ns, inode


def _stat_key(path: Path) -> _StatKey | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _pieces_of(data: bytes, piece_size: int) -> tuple[str, ...]:
    return tuple(
        hashlib.sha256(data[o : o + piece_size]).hexdigest() for o in range(0, len(data), piece_size)
    )


class ProofBook:
    """The proofs of every served file (see the module docstring); thread-safe.

    ``start`` the worker before use and ``stop`` it when the server stops; ``watch`` each index.
    """

    def __init__(self, *, piece_size: int = DEFAULT_PIECE_SIZE, state_dir: Path | None = None) -> None:
        self.piece_size = piece_size
        self.state_dir = state_dir
        self._proofs: dict[Path | str, tuple[_StatKey | None, FileProof]] = {}
        self._refused: dict[Path, _StatKey] = {}  # files whose bytes are not what they are served as
        self._queue: collections.OrderedDict[Path, str] = collections.OrderedDict()  # path -> sha256
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._seen: ModelIndex | None = None
        #: Bumped whenever a proof is added or dropped: built manifests are kept until it changes.
        self.version = 0
        self._built: dict[tuple[str, ...], tuple[int, bytes | None]] = {}
        #: Bytes read to prove files since the server started.
        self.bytes_hashed = 0

    # -- the worker --------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="dsmirror-prove", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or being proven (tests, scripts); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if self._stopping:
                    return
                path, sha256 = self._queue.popitem(last=False)
                self._busy = True
            try:
                self._prove(path, sha256)
            except Exception:  # one file must never stop the worker
                logger.exception("proving %s failed", path)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # -- what to prove -----------------------------------------------------------------------------
    def watch(self, index: ModelIndex) -> None:
        """Queue what ``index`` serves that has no proof yet (cheap when ``index`` was seen already)."""
        if index is self._seen:
            return
        self._seen = index
        wanted: list[tuple[Path, str]] = []
        for repo in index.hf_repos:
            wanted += [(f.disk_path, f.sha256) for f in repo.files.values() if f.sha256]
        for model in index.ollama_models:
            for layer in model.layers:
                blob, sha256 = model.blobs[layer.digest], layer.digest.removeprefix("sha256:")
                if isinstance(blob, bytes):
                    self._vouch(
                        sha256, None, FileProof(sha256, self.piece_size, _pieces_of(blob, self.piece_size))
                    )
                else:
                    wanted.append((blob, sha256))
        for folder in index.folders:
            m = folder.manifest
            for path, f in folder.files.items():
                entry = m.file(path)
                if m.has_piece_hashes and entry.sha256:  # checked against these when indexed
                    self._vouch(
                        f.disk_path,
                        _stat_key(f.disk_path),
                        FileProof(entry.sha256, m.piece_size, tuple(entry.pieces)),
                    )
                elif entry.sha256:
                    wanted.append((f.disk_path, entry.sha256))
        self.want(wanted)

    def want(self, files: Iterable[tuple[Path, str]]) -> None:
        """Queue each (file, the SHA-256 it is served by) whose proof is missing or stale."""
        with self._cond:
            for path, sha256 in files:
                key = _stat_key(path)
                known = self._proofs.get(path)
                if key is None or (known is not None and known[0] == key and known[1].sha256 == sha256):
                    continue
                if self._refused.get(path) == key:
                    continue
                self._queue[path] = sha256
            self._cond.notify_all()

    def _vouch(self, key: Path | str, stat_key: _StatKey | None, proof: FileProof) -> None:
        with self._cond:
            if self._proofs.get(key) != (stat_key, proof):
                self._proofs[key] = (stat_key, proof)
                self.version += 1

    # -- proving -----------------------------------------------------------------------------------
    def _record_path(self, path: Path) -> Path | None:
        if self.state_dir is None:
            return None
        return self.state_dir / "proofs" / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"

    def _load(self, path: Path, key: _StatKey, sha256: str) -> FileProof | None:
        record = self._record_path(path)
        if record is None:
            return None
        try:
            with open(record, "rb") as fh:
                doc: Any = json.loads(fh.read(_MAX_RECORD + 1))
        except (OSError, ValueError):
            return None
        try:
            ok = (
                doc["version"] == PROOF_RECORD_VERSION
                and doc["path"] == str(path)
                and [doc["size"], doc["mtime_ns"], doc["ino"]] == list(key)
                and doc["sha256"] == sha256
                and doc["piece_size"] == self.piece_size
                and len(doc["pieces"]) == -(-key[0] // self.piece_size)
                and all(isinstance(p, str) and len(p) == 64 for p in doc["pieces"])
            )
        except (KeyError, TypeError):
            return None
        return FileProof(sha256, self.piece_size, tuple(doc["pieces"])) if ok else None

    def _save(self, path: Path, key: _StatKey, proof: FileProof) -> None:
        record = self._record_path(path)
        if record is None:
            return
        doc = {
            "version": PROOF_RECORD_VERSION,
            "path": str(path),
            "size": key[0],
            "mtime_ns": key[1],
            "ino": key[2],
            "sha256": proof.sha256,
            "piece_size": proof.piece_size,
            "pieces": list(proof.pieces),
        }
        try:
            atomic_write_bytes(record, json.dumps(doc, separators=(",", ":")).encode())
        except Exception as exc:  # a read-only state folder: the proof is kept in memory only
            logger.warning("cannot keep the proof of %s: %s", path, exc)

    def _prove(self, path: Path, sha256: str) -> None:
        key = _stat_key(path)
        if key is None:
            return
        proof = self._load(path, key, sha256)
        if proof is None:
            pieces: list[str] = []
            size, whole = 0, _EMPTY_SHA256
            if key[0]:
                size, whole, pieces = hash_file_pieces(path, self.piece_size)
            self.bytes_hashed += size
            if _stat_key(path) != key or size != key[0]:
                logger.info("not proving %s yet: it changed while it was read", path)
                return
            if whole != sha256:
                logger.warning(
                    "%s: its bytes have SHA-256 %s, not the %s it is served as: no piece manifest for it",
                    path,
                    whole,
                    sha256,
                )
                with self._cond:
                    self._refused[path] = key
                return
            proof = FileProof(whole, self.piece_size, tuple(pieces))
            self._save(path, key, proof)
        self._vouch(path, key, proof)

    # -- what is published -------------------------------------------------------------------------
    def proof(self, key: Path | str) -> FileProof | None:
        with self._cond:
            known = self._proofs.get(key)
        return known[1] if known is not None else None

    def _build(
        self,
        cache_key: tuple[str, ...],
        name: str,
        files: list[tuple[str, int, FileProof]],
        meta: dict[str, Any],
    ) -> bytes | None:
        with self._cond:
            version = self.version
            built = self._built.get(cache_key)
        if built is not None and built[0] == version:
            return built[1]
        body = None
        if files:
            by_size: dict[int, int] = collections.Counter()
            for _, size, p in files:
                by_size[p.piece_size] += size + 1
            piece_size = max(by_size, key=lambda ps: by_size[ps])
            entries = tuple(
                FileEntry(path, size, p.sha256, p.pieces)
                for path, size, p in files
                if p.piece_size == piece_size
            )
            body = Manifest(name[:200], piece_size, entries, None, meta).canonical_bytes
        with self._cond:
            if len(self._built) > 1024:
                self._built.clear()
            self._built[cache_key] = (version, body)
        return body

    def hf_manifest(self, repo: HfRepo) -> bytes | None:
        """The proof of ``repo`` at its commit (canonical manifest bytes); None: nothing proven."""
        files = []
        for path in sorted(repo.files):
            f = repo.files[path]
            p = self.proof(f.disk_path)
            if p is not None and p.sha256 == f.sha256 and len(p.pieces) == -(-f.size // p.piece_size):
                files.append((path, f.size, p))
        meta = {"source": "dsmirror serve", "repo": repo.repo_id, "commit": repo.commit}
        return self._build(("hf", repo.repo_id, repo.commit), repo.repo_id, files, meta)

    def ollama_manifest(self, model: OllamaModel) -> bytes | None:
        """The proof of ``model`` (paths ``blobs/sha256-<hex>``); None: nothing proven."""
        files = []
        for layer in model.layers:
            blob, sha256 = model.blobs[layer.digest], layer.digest.removeprefix("sha256:")
            p = self.proof(sha256 if isinstance(blob, bytes) else blob)
            if p is not None and p.sha256 == sha256 and len(p.pieces) == -(-layer.size // p.piece_size):
                files.append((f"blobs/sha256-{sha256}", layer.size, p))
        meta = {
            "source": "dsmirror serve",
            "model": model.reference,
            "manifest_sha256": model.digest.removeprefix("sha256:"),
        }
        return self._build(("ollama", model.reference, model.digest), model.reference, files, meta)
