"""What the box proves: a piece manifest of every model it serves, derived from files it verified.

The registries publish whole-file digests only, so a client pulling a registry model checks each
file at its end. The box has the files; it hashes each one once, in pieces, and publishes the
result as a dsmirror piece manifest per model, so its LAN clients check every piece as it lands,
from whatever source (the box, other mirrors, LAN peers). The client checks the manifest against
the registry's digests before it uses it (``dsmirror._resolve.registries.proof``, which also
spells the routes); the registry stays the authority.

Proving a file (``ProofBook``, one worker thread, in the background)
    The file is read once: its SHA-256 and the SHA-256 of each ``piece_size`` piece. Its proof is
    kept only when the file's digest is the one the index serves it by — an HF LFS blob's name
    (SHA-256), a small HF file's git blob id, an Ollama blob's digest, a manifest folder's entry — so a
    blob whose bytes rotted or were replaced under its name gets no proof (a warning says so), and
    the proof describes bytes that are what their name says. A manifest folder whose manifest has
    piece hashes is proven by them (its files were checked against it when indexed): nothing is
    hashed. What is proven is kept, per file, in the state folder (``state_dir``, when given) and
    believed again after a restart while the file's size, mtime and inode are unchanged::

        <state_dir>/proofs/<sha256 of the absolute path>.json
            {"version": 1, "path": "/abs/blobs/<etag>", "size": n, "mtime_ns": n, "ino": n,
             "sha256": "<hex>", "git_sha1": "<hex>" or null, "piece_size": 8388608,
             "pieces": ["<hex>", ...]}

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest
from dsmirror._serve._hf_index import HfRepo, ServedFile
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._ollama_index import OllamaModel
from dsmirror._verify.digest import hash_file_pieces, hash_local_file

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
    #: The git blob id, for a file served by it (a small file of an HF repo); else None.
    git_sha1: str | None = None

    def proves(self, expect: Expect) -> bool:
        kind, digest = expect
        return (self.git_sha1 if kind == "git" else self.sha256) == digest


_StatKey = tuple[int, int, int]  # size, mtime_ns, inode
#: What a file is served as: ("sha256", hex) or, for an HF repo's small file, ("git", blob id).
Expect = tuple[str, str]


def _stat_key(path: Path) -> _StatKey | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _expect(f: ServedFile) -> Expect:
    """What an HF repo's file is served as: an LFS file by its SHA-256, another by its git blob id."""
    if f.lfs:
        assert f.sha256 is not None
        return ("sha256", f.sha256)
    assert f.git_sha1 is not None
    return ("git", f.git_sha1)


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
        self._queue: collections.OrderedDict[Path, Expect] = collections.OrderedDict()
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
                path, expect = self._queue.popitem(last=False)
                self._busy = True
            try:
                self._prove(path, expect)
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
        wanted: list[tuple[Path, Expect]] = []
        for repo in index.hf_repos:
            wanted += [(f.disk_path, _expect(f)) for f in repo.files.values()]
        for model in index.ollama_models:
            for layer in model.layers:
                blob, sha256 = model.blobs[layer.digest], layer.digest.removeprefix("sha256:")
                if isinstance(blob, bytes):
                    self._vouch(
                        sha256, None, FileProof(sha256, self.piece_size, _pieces_of(blob, self.piece_size))
                    )
                else:
                    wanted.append((blob, ("sha256", sha256)))
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
                    wanted.append((f.disk_path, ("sha256", entry.sha256)))
        self.want(wanted)

    def want(self, files: Iterable[tuple[Path, Expect]]) -> None:
        """Queue each (file, the digest it is served by) whose proof is missing or stale."""
        with self._cond:
            for path, expect in files:
                key = _stat_key(path)
                known = self._proofs.get(path)
                if key is None or (known is not None and known[0] == key and known[1].proves(expect)):
                    continue
                if self._refused.get(path) == key:
                    continue
                self._queue[path] = expect
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

    def _load(self, path: Path, key: _StatKey, expect: Expect) -> FileProof | None:
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
                and isinstance(doc["sha256"], str)
                and len(doc["sha256"]) == 64
                and doc.get("git_sha1") in (None, expect[1])
                and doc["piece_size"] == self.piece_size
                and len(doc["pieces"]) == -(-key[0] // self.piece_size)
                and all(isinstance(p, str) and len(p) == 64 for p in doc["pieces"])
            )
        except (KeyError, TypeError):
            return None
        if not ok:
            return None
        proof = FileProof(doc["sha256"], self.piece_size, tuple(doc["pieces"]), doc.get("git_sha1"))
        return proof if proof.proves(expect) else None

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
            "git_sha1": proof.git_sha1,
            "piece_size": proof.piece_size,
            "pieces": list(proof.pieces),
        }
        try:
            atomic_write_bytes(record, json.dumps(doc, separators=(",", ":")).encode())
        except Exception as exc:  # a read-only state folder: the proof is kept in memory only
            logger.warning("cannot keep the proof of %s: %s", path, exc)

    def _hash(self, path: Path, size: int, expect: Expect) -> tuple[int, FileProof]:
        """(bytes read, the file's digests); a small file served by its git blob id gets that too."""
        if expect[0] == "git":
            d = hash_local_file(path, self.piece_size)
            return d.size, FileProof(d.sha256, self.piece_size, d.pieces, d.git_sha1)
        if size == 0:
            return 0, FileProof(_EMPTY_SHA256, self.piece_size, ())
        read, whole, pieces = hash_file_pieces(path, self.piece_size)
        return read, FileProof(whole, self.piece_size, tuple(pieces))

    def _prove(self, path: Path, expect: Expect) -> None:
        key = _stat_key(path)
        if key is None:
            return
        proof = self._load(path, key, expect)
        if proof is None:
            size, proof = self._hash(path, key[0], expect)
            self.bytes_hashed += size
            if _stat_key(path) != key or size != key[0]:
                logger.info("not proving %s yet: it changed while it was read", path)
                return
            if not proof.proves(expect):
                logger.warning(
                    "%s: its bytes are not the %s %s it is served as: no piece manifest for it",
                    path,
                    "git blob" if expect[0] == "git" else "SHA-256",
                    expect[1],
                )
                with self._cond:
                    self._refused[path] = key
                return
            self._save(path, key, proof)
        self._vouch(path, key, proof)

    def summary(self) -> dict[str, int]:
        """For the status document: files proven, queued, refused (bytes not what they are served
        as), and the bytes read to prove files since the server started."""
        with self._cond:
            return {
                "files": len(self._proofs),
                "queued": len(self._queue) + (1 if self._busy else 0),
                "refused": len(self._refused),
                "hashed_bytes": self.bytes_hashed,
            }

    # -- what is published -------------------------------------------------------------------------
    def proof(self, key: Path | str) -> FileProof | None:
        with self._cond:
            known = self._proofs.get(key)
        return known[1] if known is not None else None

    def _build(
        self,
        cache_key: tuple[str, ...],
        name: str,
        collect: Callable[[], list[tuple[str, int, FileProof]]],
        meta: dict[str, Any],
    ) -> bytes | None:
        """The manifest of what ``collect`` finds proven, made again only after ``version`` moved
        (the routes ask on every answer of the model: a look-up, not a walk over its files)."""
        with self._cond:
            version = self.version
            built = self._built.get(cache_key)
        if built is not None and built[0] == version:
            return built[1]
        body = None
        files = collect()
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

        def collect() -> list[tuple[str, int, FileProof]]:
            files = []
            for path in sorted(repo.files):
                f = repo.files[path]
                p = self.proof(f.disk_path)
                if p is not None and p.proves(_expect(f)) and len(p.pieces) == -(-f.size // p.piece_size):
                    files.append((path, f.size, p))
            return files

        meta = {"source": "dsmirror serve", "repo": repo.repo_id, "commit": repo.commit}
        return self._build(("hf", repo.repo_id, repo.commit), repo.repo_id, collect, meta)

    def ollama_manifest(self, model: OllamaModel) -> bytes | None:
        """The proof of ``model`` (paths ``blobs/sha256-<hex>``); None: nothing proven."""

        def collect() -> list[tuple[str, int, FileProof]]:
            files = []
            for layer in model.layers:
                blob, sha256 = model.blobs[layer.digest], layer.digest.removeprefix("sha256:")
                p = self.proof(sha256 if isinstance(blob, bytes) else blob)
                if p is not None and p.sha256 == sha256 and len(p.pieces) == -(-layer.size // p.piece_size):
                    files.append((f"blobs/sha256-{sha256}", layer.size, p))
            return files

        meta = {
            "source": "dsmirror serve",
            "model": model.reference,
            "manifest_sha256": model.digest.removeprefix("sha256:"),
        }
        return self._build(("ollama", model.reference, model.digest), model.reference, collect, meta)
