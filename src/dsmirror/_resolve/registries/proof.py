"""A ``dsmirror serve`` box's proof: piece hashes for registry models, checked against the registry.

The registries publish whole-file digests only (the Hub a SHA-256 per LFS file, an Ollama
registry one per blob), so a pull from them alone can check a file only at its end. A
``dsmirror serve`` box holds files it verified, and publishes, for each model it serves, a
dsmirror piece manifest derived from those files (``dsmirror._serve._proofs``), at a path made
from what the registry pins::

    GET {mirror}/dsmirror/proof/hf/{org}/{name}/{commit}.json     a Hugging Face repo at a commit
    GET {mirror}/dsmirror/proof/ollama/sha256:{hex}.json          an Ollama model by manifest digest

(and advertises it in an ``X-Dsmirror-Manifest`` header of its model info, tree, resolve and
registry-manifest answers, for other tools and for people). A pull asks that path of every
mirror of the registry's kind in the catalog that is not ``official`` (the registries
themselves publish none), all at once, each exchange bounded like any metadata read
(``MetadataSession``: ``PROOF_LIMIT`` bytes) and in time by ``PROOF_TIMEOUT`` (or
``--metadata-timeout`` if shorter): a box on the LAN answers in milliseconds, and a third-party
mirror that does not answer (a black hole) must not hold every pull for long. A 404 is a mirror
that has no proof (or is no box), and costs nothing more.

The registry stays the authority: ``Proofs.adopt`` takes a box's piece hashes only when the
box's manifest agrees with the registry on every file it lists — a file of the listing, the same
size, the same whole-file SHA-256 (the listing's for LFS files and blobs, the one learned from a
small file's bytes), and for a small file whose bytes the pull already holds, the same piece
hashes. A box that contradicts the registry on anything is refused as a whole, with a note
naming the file and both digests, and is not asked for the files it contradicts (its copy of
them is, by its own account, other bytes); the pull goes on with the registry's whole-file
checks. A refused box never stops a pull: the registry's digests still protect every file, and
one bad box on a LAN must not break every client's pull. The piece hashes of several boxes that
agree with the registry (and with each other) add up; a published piece manifest or a signature's
shards come first, and a box's proof of another piece size is left out.

Documented in docs/formats.md#the-boxs-proof.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

from dsmirror._core.errors import DsmirrorError, SourceError
from dsmirror._fetch.metadata import METADATA_LIMIT, MetadataSession
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.manifest import Manifest, parse_manifest

__all__ = [
    "PROOF_HEADER",
    "PROOF_LIMIT",
    "PROOF_TIMEOUT",
    "BoxProof",
    "FileFacts",
    "Proofs",
    "fetch_proofs",
    "hf_proof_path",
    "ollama_proof_path",
]

#: The header a box sends with the answers of a model it holds a proof of: the proof's URL.
PROOF_HEADER = "X-Dsmirror-Manifest"
#: A proof lists a SHA-256 per piece: 700 GB in 8 MiB pieces is about 6 MB.
PROOF_LIMIT = METADATA_LIMIT
#: The longest all the proof requests of a pull take together (they run at once).
PROOF_TIMEOUT = 5.0


def hf_proof_path(repo_id: str, commit: str) -> str:
    """Where a box publishes the proof of ``repo_id`` at ``commit`` (40 hex)."""
    return f"/dsmirror/proof/hf/{quote(repo_id)}/{commit}.json"


def ollama_proof_path(manifest_sha256: str) -> str:
    """Where a box publishes the proof of the Ollama model whose manifest has this SHA-256."""
    return f"/dsmirror/proof/ollama/sha256:{manifest_sha256}.json"


@dataclass(frozen=True)
class BoxProof:
    """What one box sent: its piece manifest (paths as the pull's files are named)."""

    mirror: str
    url: str
    manifest: Manifest


def _fetch_one(mirror: Mirror, path: str, timeout: float) -> tuple[BoxProof | None, str | None]:
    url = mirror.url.rstrip("/") + path
    try:
        with MetadataSession(source=mirror.name, timeout=timeout) as session:
            doc = session.get(url, limit=PROOF_LIMIT)
    except SourceError as exc:
        return None, f"{mirror.name}: no piece manifest ({exc.message})"
    if doc.status != 200:  # 404: no proof of this model here, or no box at all
        return None, None
    try:
        manifest = parse_manifest(doc.body, origin=url)
    except DsmirrorError as exc:
        return None, f"{mirror.name}: its piece manifest is unusable: {exc.message}"
    if not manifest.has_piece_hashes:
        return None, f"{mirror.name}: its piece manifest has no piece hashes"
    return BoxProof(mirror.name, url, manifest), None


def fetch_proofs(
    mirrors: Sequence[Mirror], path: str, *, timeout: float, skip: Sequence[str] = ()
) -> tuple[list[BoxProof], list[str]]:
    """(proofs of the non-official ``mirrors`` that have one, in catalog order; notes on failures).

    ``skip``: names of mirrors not to ask (those that just failed to list the model).
    """
    asked = [m for m in mirrors if not m.official and m.name not in skip]
    if not asked:
        return [], []
    with ThreadPoolExecutor(max_workers=min(8, len(asked)), thread_name_prefix="dsmirror-proof") as pool:
        answers = list(pool.map(lambda m: _fetch_one(m, path, min(timeout, PROOF_TIMEOUT)), asked))
    return [p for p, _ in answers if p is not None], [n for _, n in answers if n is not None]


@dataclass(frozen=True)
class FileFacts:
    """What the registry (and the pull so far) says of one file, by its path in the proofs."""

    size: int
    #: The registry's whole-file SHA-256, or one learned from the file's bytes; None: not known yet
    #: (a dry run's small file), so nothing can be checked against it.
    sha256: str | None
    #: The file's piece hashes if the pull already has them (a small file's, a signature's).
    pieces: tuple[str, ...] | None = None


@dataclass
class Proofs:
    """The piece hashes the boxes add to a pull, and what was refused (see the module docstring)."""

    piece_size: int
    #: path -> piece hashes adopted from a box
    pieces: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: box -> the paths it must not be asked for (it contradicted the registry on them)
    contradicted: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: box -> how many files it added piece hashes to
    used: dict[str, int] = field(default_factory=dict)

    def _problems(self, proof: BoxProof, facts: Mapping[str, FileFacts]) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        for pf in proof.manifest.files:
            known = facts.get(pf.path)
            if known is None:
                problems.append((pf.path, f"it lists {pf.path}, which the registry does not"))
                continue
            if pf.size != known.size or (known.sha256 is not None and pf.sha256 != known.sha256):
                problems.append(
                    (
                        pf.path,
                        f"it says {pf.path} is {pf.size} bytes with SHA-256 {pf.sha256[:16]}…, "
                        f"the registry says {known.size} bytes with {(known.sha256 or '?')[:16]}…",
                    )
                )
                continue
            have = known.pieces if known.pieces is not None else self.pieces.get(pf.path)
            if have is not None and proof.manifest.piece_size == self.piece_size and tuple(pf.pieces) != have:
                problems.append((pf.path, f"its piece hashes of {pf.path} disagree with the file's bytes"))
        return problems

    def adopt(self, proof: BoxProof, facts: Mapping[str, FileFacts]) -> None:
        """Take ``proof``'s piece hashes for the files that have none yet, if it agrees with ``facts``."""
        problems = self._problems(proof, facts)
        if problems:
            self.contradicted[proof.mirror] = {path for path, _ in problems}
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            self.notes.append(
                f"{proof.mirror}: its piece manifest is refused, {problems[0][1]}{more}; it is not asked "
                "for what it contradicts, and those files are checked by the registry's digests"
            )
            return
        if proof.manifest.piece_size != self.piece_size:
            self.notes.append(
                f"{proof.mirror}: its piece manifest (pieces of {proof.manifest.piece_size} bytes) is not "
                f"used: this pull's pieces are {self.piece_size} bytes"
            )
            return
        added = 0
        for pf in proof.manifest.files:
            known = facts[pf.path]
            if known.pieces is None and pf.path not in self.pieces and pf.pieces:
                self.pieces[pf.path] = tuple(pf.pieces)
                added += 1
        if added:
            self.used[proof.mirror] = added
            self.notes.append(
                f"{proof.mirror}: piece hashes for {added} file(s) from its verified copy, checked against "
                "the registry's digests: every piece from any source is checked as it lands"
            )
