"""What the server serves of a plain folder described by a dsmirror manifest (``--folder``).

A file is served only once it is known to match the manifest: by the install record dsmirror
wrote when it put the file there (``.dsmirror/installed/<manifest sha256>.json``, path ->
``[size, mtime_ns, inode]``; ``dsmirror._formats.private``), or else by hashing it once.
Missing or mismatching files are not served. A served folder also appears on the Hugging Face
routes, as the repo ``dsmirror/<manifest name>``; a ``model.sig`` kept next to its files (``dsmirror
pull model.sig`` writes one there) appears in that repo as a file too, so a client that knows the
publisher checks it as the repo's own signature.
"""

from __future__ import annotations

import json
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmirror._core.errors import InputError
from dsmirror._formats.manifest import Manifest
from dsmirror._formats.private import PrivateArea
from dsmirror._formats.signature import MAX_SIGNATURE_SIZE, SIGNATURE_NAME
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._hf_index import HfRepo, ServedFile

__all__ = ["FOLDER_HF_ORG", "ManifestFolder", "index_manifest_folder"]

logger = logging.getLogger(__name__)

_SLUG_BAD = re.compile(r"[^A-Za-z0-9._-]+")
#: Served folders appear on the Hugging Face routes as ``dsmirror/<manifest name>``.
FOLDER_HF_ORG = "dsmirror"


@dataclass(frozen=True)
class ManifestFolder:
    """A folder described by a dsmirror manifest; ``files`` are those present and verified."""

    manifest: Manifest
    root: Path
    files: dict[str, ServedFile]
    #: The ``model.sig`` beside the files, when there is one and the manifest does not list it.
    signature: ServedFile | None = None

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
        files = dict(self.files)
        if self.signature is not None:
            files[self.signature.path] = self.signature
        return HfRepo(repo_id=self.repo_id, commit=commit, refs={"main": commit}, files=files)


def _install_record(root: Path, manifest: Manifest) -> dict[str, Any]:
    """The store's record of what it installed for ``manifest`` into ``root`` ({} if none)."""
    try:
        loaded = json.loads(PrivateArea(root).install_record(manifest.sha256).read_bytes())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def index_manifest_folder(
    manifest: Manifest, folder: Path, *, digests: DigestCache | None = None
) -> ManifestFolder:
    """The files of ``folder`` that match ``manifest`` (see the module docstring for how)."""
    root = Path(folder).resolve()
    digests = digests or DigestCache()
    record = _install_record(root, manifest)
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
    return ManifestFolder(manifest, root, files, _signature_beside(manifest, root, digests))


def _signature_beside(manifest: Manifest, root: Path, digests: DigestCache) -> ServedFile | None:
    if any(f.path == SIGNATURE_NAME for f in manifest.files):
        return None  # a file of the model: served as one
    disk = root / SIGNATURE_NAME
    try:
        st = disk.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIGNATURE_SIZE:
            return None
        size, sha256, git_sha1 = digests.digests(disk, git=True)
    except (OSError, InputError):
        return None
    return ServedFile(SIGNATURE_NAME, disk, size, sha256, git_sha1, lfs=False)
