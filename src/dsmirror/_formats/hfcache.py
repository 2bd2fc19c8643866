"""The Hugging Face cache (``HF_HUB_CACHE``): the one module that spells its layout.

As huggingface_hub writes and reads it, and dsmirror with it (``pull --format hf``, ``import``,
``serve``'s pull-through cache)::

    <cache>/models--<org>--<name>/     repo folder: "models--" + the repo id with "/" -> "--"
      blobs/<etag>                     the content; etag = SHA-256 (64 hex) for LFS files, git blob
                                       SHA-1 (40 hex) otherwise. dsmirror's store renames a verified
                                       file into place here.
      snapshots/<commit>/<path>        relative symlink ../../blobs/<etag> (one more ../ per folder of
                                       <path>); a copied cache may hold real files instead
      refs/<revision>                  the 40-hex commit, no newline; only when the revision is not the
                                       commit ("refs/pr/1" nests)
      trees/<commit>.json              huggingface_hub's tree cache (format_version 1): every file of the
                                       repo at that commit, so that an offline snapshot_download tells a
                                       complete snapshot from one narrowed by --include
                                       (IncompleteSnapshotError)
      .dsmirror/                       dsmirror's private area (``dsmirror._formats.private``)

``trees/<commit>.json``::

    {"format_version": 1, "files": {"<path>": {"size": n, "blob_id": "<git oid>",
                                               "lfs_sha256": "<hex>", "lfs_size": n}, ...}}

Never a ``xet_hash`` (``XET_FIELDS``), although huggingface_hub writes one from the Xet-era Hub's
listing: online, with hf_xet installed, the client trusts a cached entry that has one, skips its
HEAD request and asks the endpoint for a Xet token (``/api/models/<repo>/xet-read-token/<commit>``).
A mirror without Xet (``dsmirror serve``, most HF mirrors) answers 404 there and the download fails.
Without it the client HEADs the resolve URL and takes whatever the endpoint offers: plain HTTP
from a mirror, Xet from the Hub (its HEAD names the Xet hash). A tree that names Xet hashes is
rewritten without them when dsmirror installs into its repo (``tree_without_xet``).

Everything here reads or names; nothing writes (``dsmirror._install.hf`` does, with these names).

Documented in docs/formats.md#the-hugging-face-cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "REPO_PREFIXES",
    "TREE_FORMAT_VERSION",
    "XET_FIELDS",
    "blob_rel",
    "is_commit",
    "is_etag",
    "link_target",
    "read_ref",
    "read_refs",
    "refs_dir",
    "repo_folder",
    "repo_folders",
    "repo_id_of",
    "resolve_revision",
    "snapshot_dir",
    "snapshot_links",
    "snapshots",
    "snapshots_dir",
    "tree_file",
    "tree_json",
    "tree_without_xet",
]

#: Repo folder prefixes: model repos (what dsmirror pulls and lists) and dataset repos (which can
#: hold the same blobs, so reuse looks into them too).
REPO_PREFIXES = ("models--", "datasets--")
TREE_FORMAT_VERSION = 1
#: Tree cache fields that send huggingface_hub to Xet storage without asking the endpoint first.
XET_FIELDS = frozenset({"xet_hash"})
_MODELS = REPO_PREFIXES[0]
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_commit(text: str) -> bool:
    """A 40-hex commit id (what ``refs/`` files hold and ``snapshots/`` folders are named)."""
    return bool(_HEX40.fullmatch(text))


def is_etag(name: str) -> bool:
    """A blob name of the cache: SHA-256 (64 hex) or git blob SHA-1 (40 hex)."""
    return bool(_HEX40.fullmatch(name) or _HEX64.fullmatch(name))


def repo_folder(cache: Path, repo_id: str) -> Path:
    """``<cache>/models--org--name``."""
    return cache / (_MODELS + repo_id.replace("/", "--"))


def repo_id_of(folder: Path) -> str:
    """``org/name`` of a ``models--org--name`` folder."""
    return "/".join(folder.name.split("--")[1:])


def repo_folders(cache: Path) -> list[Path]:
    """The model repo folders of a cache (``models--*``), real folders only, sorted."""
    try:
        entries = sorted(cache.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.startswith(_MODELS) and p.is_dir() and not p.is_symlink()]


def blob_rel(etag: str) -> str:
    """A blob's path relative to the repo folder."""
    return f"blobs/{etag}"


def snapshots_dir(repo_dir: Path) -> Path:
    return repo_dir / "snapshots"


def snapshot_dir(repo_dir: Path, commit: str) -> Path:
    return snapshots_dir(repo_dir) / commit


def refs_dir(repo_dir: Path) -> Path:
    """``refs/``: ``refs_dir(repo) / revision`` holds the revision's commit."""
    return repo_dir / "refs"


def tree_file(repo_dir: Path, commit: str) -> Path:
    return repo_dir / "trees" / f"{commit}.json"


def link_target(path: str, etag: str) -> str:
    """What ``snapshots/<commit>/<path>`` links to: ``../../blobs/<etag>``, one ``../`` more per folder."""
    return "../" * (path.count("/") + 2) + blob_rel(etag)


def tree_json(tree: Mapping[str, Mapping[str, Any]]) -> bytes:
    """The bytes of ``trees/<commit>.json`` for ``tree`` (path -> entry, see the module docstring),
    without ``XET_FIELDS``."""
    files = {p: {k: v for k, v in tree[p].items() if k not in XET_FIELDS} for p in sorted(tree)}
    return json.dumps({"format_version": TREE_FORMAT_VERSION, "files": files}, indent=1).encode()


def tree_without_xet(data: bytes) -> bytes | None:
    """The bytes of a tree cache file with its ``XET_FIELDS`` dropped, or None if it names none.

    None too for a file that is not a format-1 tree: huggingface_hub ignores such a file (and
    re-lists online), so it is left as it is.
    """
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format_version") != TREE_FORMAT_VERSION:
        return None
    files = doc.get("files")
    if not isinstance(files, dict):
        return None
    entries = [e for e in files.values() if isinstance(e, dict)]
    if len(entries) != len(files) or not any(XET_FIELDS & e.keys() for e in entries):
        return None
    return tree_json(files)


def _read_commit(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        commit = path.read_bytes().decode("ascii", errors="replace").strip()
        if _HEX40.fullmatch(commit):
            return commit
    return None


def read_refs(repo_dir: Path) -> dict[str, str]:
    """revision -> commit, for every ``refs/`` file that holds a commit (symlinks are not followed)."""
    out: dict[str, str] = {}
    refs = refs_dir(repo_dir)
    for dirpath, _, names in os.walk(refs):
        for n in sorted(names):
            p = Path(dirpath) / n
            if p.is_symlink():
                continue
            commit = _read_commit(p)
            if commit is not None:
                out[p.relative_to(refs).as_posix()] = commit
    return out


def read_ref(repo_dir: Path, revision: str) -> str | None:
    """The commit ``refs/<revision>`` holds, or None."""
    p = refs_dir(repo_dir) / revision
    return None if p.is_symlink() else _read_commit(p)


def resolve_revision(repo_dir: Path, revision: str, refs: Mapping[str, str] | None = None) -> str | None:
    """The commit a revision names: itself if it is one, else what its ref holds (None if none)."""
    if is_commit(revision):
        return revision
    return (read_refs(repo_dir) if refs is None else refs).get(revision)


def snapshots(repo_dir: Path) -> list[Path]:
    """The snapshot folders of a repo folder, real folders only, sorted."""
    try:
        entries = sorted(snapshots_dir(repo_dir).iterdir())
    except OSError:
        return []
    return [p for p in entries if p.is_dir() and not p.is_symlink()]


def snapshot_links(repo_dir: Path, snap: Path) -> Iterator[tuple[str, str | None]]:
    """(repo path, where its bytes are) per file of a snapshot, without following any link.

    Where: ``"blobs/<name>"`` (relative to ``repo_dir``) for a link into the repo's ``blobs/``,
    ``""`` for a link anywhere else, ``None`` for a real file. A link to a folder is listed as a file.
    """
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
            yield rel, blob_rel(os.path.basename(target))
