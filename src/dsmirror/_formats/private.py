"""dsmirror's private area in a destination folder: the one place that spells its layout.

Every folder dsmirror pulls into (a ``--dest``, an HF cache repo, an Ollama store) holds a
``.dsmirror/`` folder that no model file may be in (``dsmirror._formats.paths``)::

    DEST/.dsmirror/
      partial/<mid>/                  the store of a running or interrupted pull of manifest <mid>
                                      (its own layout: ``dsmirror._journal.store``)
      partial/bt-<info-hash>/         a pull from peers alone (``dsmirror._fetch.swarm.only``)
      installed/<mid>.json            install record: path -> [size, mtime_ns, inode] of each file
      installed/<mid>.manifest.json   the manifest of what is installed (canonical bytes)
      torrents/<mid>.torrent          the model's torrent, for ``dsmirror seed DEST``

``<mid>`` is a manifest's identity, the SHA-256 of its canonical bytes.

Documented in docs/formats.md#the-private-area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PRIVATE_DIR", "PrivateArea"]

PRIVATE_DIR = ".dsmirror"


@dataclass(frozen=True)
class PrivateArea:
    """The ``.dsmirror/`` folder of ``dest``; paths only, nothing is created."""

    dest: Path

    @property
    def root(self) -> Path:
        return self.dest / PRIVATE_DIR

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial"

    def partial(self, manifest_sha256: str) -> Path:
        return self.partial_dir / manifest_sha256

    def swarm_partial(self, info_hash: str) -> Path:
        return self.partial_dir / f"bt-{info_hash}"

    @property
    def installed_dir(self) -> Path:
        return self.root / "installed"

    def install_record(self, manifest_sha256: str) -> Path:
        return self.installed_dir / f"{manifest_sha256}.json"

    def installed_manifest(self, manifest_sha256: str) -> Path:
        return self.installed_dir / f"{manifest_sha256}.manifest.json"

    @property
    def torrents_dir(self) -> Path:
        return self.root / "torrents"

    def torrent(self, manifest_sha256: str) -> Path:
        return self.torrents_dir / f"{manifest_sha256}.torrent"
