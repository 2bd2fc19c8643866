"""What the server serves: an immutable index of model files on local disk, ``ModelIndex``.

The index is built once, before the server starts (and again on each rescan, by ``_library``);
handlers only look things up in it and never build a filesystem path from a URL. Everything that
reads or hashes files lives in the modules that fill it, so no request handler ever blocks on
hashing. Four ways to fill it:

* ``HfRepo.from_folder`` — a plain folder published as one Hugging Face repo (``_hf_index``);
* ``index_hf_cache`` — the cache ``huggingface_hub`` writes (``_hf_index``);
* ``index_ollama_store`` — an ``$OLLAMA_MODELS`` folder (``_ollama_index``);
* ``index_manifest_folder`` — a plain folder described by a dsmirror manifest (``_folder_index``).

Hashing is remembered across rescans by ``DigestCache`` (``_digests``), so a rescan of an unchanged
store hashes nothing. The index knows every disk path it serves (``serves_path``): the only files
the server ever opens.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from dsmirror._core.errors import InputError
from dsmirror._formats.manifest import Manifest
from dsmirror._serve._folder_index import ManifestFolder
from dsmirror._serve._hf_index import HfRepo
from dsmirror._serve._ollama_index import OllamaModel

__all__ = ["ModelIndex"]

logger = logging.getLogger(__name__)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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
