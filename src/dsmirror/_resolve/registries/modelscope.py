"""ModelScope (modelscope.cn and compatible endpoints): the same repo, listed with SHA-256 for every file.

Routes, relative to the mirror's URL::

    GET /api/v1/models/{org}/{name}/repo/files?Revision={rev}&Recursive=True
        -> {"Code": 200, "Success": true,
            "Data": {"Files": [{"Path": "config.json", "Size": 519, "Sha256": "<hex>", "Type": "blob"}, ...]}}
    GET /api/v1/models/{org}/{name}/repo?Revision={rev}&FilePath={path}      the bytes; Range works

ModelScope pins no commit the way the Hub does, so a ModelScope source is trusted file by file: it
serves a file only if its listing gives the same path, size and SHA-256 as the digests the pull has
pinned (from the Hub, or from the listing itself for a ModelScope-only model). Every other file is
refused before any request is made (``RepoURLs.allowed``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from dsmirror._core.errors import BadResponse, NoSourceError, SourceError, UsageError
from dsmirror._core.settings import Settings
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import Catalog, Mirror
from dsmirror._formats.hf import HfFile, select_files
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest, NoPieceHashes, parse_manifest
from dsmirror._install.records import record_after_install
from dsmirror._resolve.plan import PullOptions, PullPlan, select_mirrors, source_info
from dsmirror._resolve.registries.client import RepoURLs, describe, get_metadata

__all__ = [
    "MsFile",
    "list_modelscope",
    "modelscope_sources",
    "parse_modelscope_id",
    "plan_modelscope",
    "restrict_to_listing",
]

_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_REVISION = "master"


@dataclass(frozen=True)
class MsFile:
    path: str
    size: int
    sha256: str | None


def parse_modelscope_id(text: str) -> tuple[str, str]:
    """``org/name[@revision]`` -> (model id, revision)."""
    m = _ID.match(text)
    if not m:
        raise UsageError(f"not a ModelScope model id: {text!r}", hint="write it like deepseek-ai/DeepSeek-R1")
    return m.group("id"), m.group("rev") or DEFAULT_REVISION


def _files_url(base: str, model_id: str, revision: str) -> str:
    q = urlencode({"Revision": revision, "Recursive": "True"})
    return f"{base.rstrip('/')}/api/v1/models/{model_id}/repo/files?{q}"


def _file_template(base: str, model_id: str, revision: str) -> Callable[[str], str]:
    root = f"{base.rstrip('/')}/api/v1/models/{model_id}/repo?Revision={quote(revision, safe='')}&FilePath="

    def url(repo_path: str) -> str:
        return root + quote(repo_path, safe="/")

    return url


def list_modelscope(
    mirror: Mirror, model_id: str, revision: str, *, timeout: float = 30.0
) -> dict[str, MsFile]:
    """The files of a model, by path (raises SourceError)."""
    doc = get_metadata(_files_url(mirror.url, model_id, revision), source=mirror.name, timeout=timeout)
    try:
        obj = json.loads(doc.body)
        if obj.get("Code") not in (200, 0, None) or obj.get("Success") is False:
            raise ValueError(f"Code {obj.get('Code')!r}: {obj.get('Message')!r}")
        files: dict[str, MsFile] = {}
        for item in obj["Data"]["Files"]:
            if item.get("Type", "blob") != "blob":
                continue
            path, size, digest = item["Path"], item["Size"], item.get("Sha256")
            if not isinstance(path, str) or not isinstance(size, int) or size < 0:
                raise ValueError(f"malformed entry {item!r}")
            sha = digest.lower() if isinstance(digest, str) and _HEX64.match(digest.lower()) else None
            files[path] = MsFile(path, size, sha)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadResponse(f"unexpected file listing: {exc}", source=mirror.name, url=doc.url) from exc
    return files


def modelscope_sources(
    catalog: Catalog, text: str, repo_paths: Mapping[str, str], options: PullOptions
) -> list[tuple[HttpSource, dict[str, MsFile] | SourceError]]:
    """One source per ModelScope mirror, each with its listing (or why it could not be listed).

    The sources accept any file until ``restrict_to_listing`` is called: the resolver may first
    use them to fetch small files, which it checks by their git blob id.
    """
    model_id, revision = parse_modelscope_id(text)
    out: list[tuple[HttpSource, dict[str, MsFile] | SourceError]] = []
    for m in select_mirrors(catalog, ("modelscope",), options):
        listing: dict[str, MsFile] | SourceError
        try:
            listing = list_modelscope(m, model_id, revision, timeout=options.metadata_timeout)
        except SourceError as exc:
            listing = exc
        urls = RepoURLs(m.name, _file_template(m.url, model_id, revision), repo_paths)
        out.append((HttpSource(source_info(m, options), urls, stall_timeout=options.stall_timeout), listing))
    return out


def restrict_to_listing(
    source: HttpSource,
    listing: dict[str, MsFile] | SourceError,
    wanted: Mapping[str, tuple[str, int, str | None]],
) -> str:
    """Let ``source`` serve only the files its listing gives with the pinned size and SHA-256.

    ``wanted``: manifest path -> (repo path, size, sha256). A SHA-256 of None (a dry run did not
    learn it) is matched by size alone. Returns a one-line note.
    """
    allowed: set[str] = set()
    if not isinstance(listing, SourceError):
        for mpath, (rpath, size, sha256) in wanted.items():
            f = listing.get(rpath)
            if f is not None and f.size == size and (sha256 is None or f.sha256 == sha256):
                allowed.add(mpath)
    urls = source.url_for
    assert isinstance(urls, RepoURLs)
    urls.allowed = frozenset(allowed)
    source.files = dict.fromkeys(allowed, True)
    if isinstance(listing, SourceError):
        return f"{source.name}: not used ({describe(listing)})"
    return f"{source.name}: serves {len(allowed)} of {len(wanted)} files with the pinned digests"


def plan_modelscope(
    text: str,
    *,
    catalog: Catalog,
    settings: Settings,
    options: PullOptions,
    ref_text: str,
    name: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> PullPlan:
    """A model that only ModelScope has (format dir): its listing's SHA-256 digests are the pins."""
    if options.format != "dir":
        raise UsageError(f"{ref_text} is only on ModelScope", hint="use --format dir")
    model_id, revision = parse_modelscope_id(text)
    mirrors = select_mirrors(catalog, ("modelscope",), options)
    problems: list[str] = []
    listing: dict[str, MsFile] | None = None
    for m in mirrors:
        try:
            listing = list_modelscope(m, model_id, revision, timeout=options.metadata_timeout)
            break
        except SourceError as exc:
            problems.append(f"{m.name}: {describe(exc)}")
    if listing is None:
        raise NoSourceError(
            f"cannot list ModelScope model {model_id}@{revision}: " + "; ".join(problems or ["no mirror"]),
            hint="check the model id and the modelscope mirrors (--mirrors, --only)",
        )
    as_hf = [HfFile(f.path, f.size, "", f.sha256) for f in listing.values()]
    chosen = [listing[f.path] for f in select_files(as_hf, include, exclude)]
    undigested = [f.path for f in chosen if f.sha256 is None]
    if undigested:
        raise NoSourceError(
            f"ModelScope lists no SHA-256 for {', '.join(undigested[:5])}: cannot verify them"
        )
    if not chosen:
        raise UsageError(f"no file of {model_id} matches the include/exclude globs")
    ps = DEFAULT_PIECE_SIZE
    files = tuple(FileEntry(f.path, f.size, f.sha256 or "", NoPieceHashes(-(-f.size // ps))) for f in chosen)
    meta = {"source": "modelscope", "repo": model_id, "revision": revision}
    manifest = parse_manifest(Manifest(name[:200], ps, files, None, meta).canonical_bytes, origin=model_id)
    dest = options.dest or Path.cwd() / model_id.split("/")[-1]
    sources: list[Source] = []
    for m in mirrors:
        urls = RepoURLs(m.name, _file_template(m.url, model_id, revision), {})
        sources.append(HttpSource(source_info(m, options), urls, stall_timeout=options.stall_timeout))
    after = record_after_install(settings, ref_text, "dir", manifest)
    notes = [
        f"{model_id}@{revision}: {len(files)} files",
        *(f"{p} (did not list the model)" for p in problems),
    ]
    return PullPlan(manifest, sources, dest, after, notes)
