"""Hugging Face repositories, ``hf://org/repo[@revision]``, on every HF-compatible endpoint at once.

Resolving uses the catalog's mirrors of kind ``hf`` (huggingface.co, hf-mirror.com, a LAN dsmirror
server, ...) in catalog order; for each step the first endpoint that answers wins:

1. Pin the revision to its 40-hex commit and list the files at that commit (``hub.list_hf_repo``:
   huggingface_hub, every request bounded in time). Every byte is then fetched from
   ``{endpoint}/{repo}/resolve/{commit}/{path}``: a resume can never mix two revisions, and a mirror
   that lacks the commit answers 404 and is not asked again. An LFS file's SHA-256 from the listing
   becomes its digest in the manifest.
2. Keep the files the ``include``/``exclude`` globs select. The globs are anchored: each is matched
   against the whole repo path with ``fnmatch`` (``*`` also crosses ``/``), never as a substring.
3. Learn the SHA-256 of the small files (below), build the manifest (8 MiB pieces, or those of a
   piece manifest the catalog publishes for the alias, after checking that it agrees with the
   registry's digests), and make one source per endpoint.

Small files: why they are fetched while resolving
    For a file kept in git rather than LFS the Hub publishes only its git blob id, the SHA-1 of
    ``b"blob <size>\\0" + content``. The manifest speaks SHA-256 and the store verifies every file by
    it. Rather than give the manifest a second kind of digest and the store a second kind of check,
    these files (config.json, tokenizer.json; the Hub keeps files over 10 MB in LFS) are fetched now,
    checked against their blob id, and enter the manifest with their SHA-256 and full piece hashes.
    Their bytes reach the engine from memory (``MemorySource``), so they cross the network once. A
    copy already on disk (``blobs/<blob id>`` in the Hugging Face cache, the destination's own copy,
    the partial area of an interrupted pull into the same destination) is hashed instead of fetched.
    The blob ids stay in the manifest's ``meta`` as provenance.

    A dry run fetches nothing: a small file with no copy on disk enters the manifest with the
    placeholder digest ``UNKNOWN_SHA256`` (all zeros), so the dry run lists it as to fetch, whole,
    and a note says how many there are and that the manifest id shown is provisional.

The token (``HF_TOKEN`` or huggingface_hub's stored token) is sent only to mirrors marked
``official`` in the catalog (huggingface.co), for metadata and downloads alike, never to a
third-party mirror, and never to a redirect target on another host (``HttpSource``); it is never
logged and never written anywhere.

"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dsmirror._core.errors import IntegrityError, NoSourceError, SourceError, UsageError
from dsmirror._core.settings import Settings
from dsmirror._core.units import format_bytes
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.local import MemorySource, local_source_info
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import Catalog, Mirror
from dsmirror._formats.hf import HfFile, HfListing, select_files
from dsmirror._formats.hfcache import blob_rel, repo_folder, repo_folders
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE, FileEntry, Manifest, NoPieceHashes, parse_manifest
from dsmirror._formats.private import PrivateArea
from dsmirror._install.hf import hf_after_install
from dsmirror._install.records import record_after_install
from dsmirror._journal.store import Store
from dsmirror._resolve.plan import PullOptions, PullPlan, select_mirrors, source_info
from dsmirror._resolve.registries.client import RepoURLs, describe
from dsmirror._resolve.registries.hub import list_hf_repo
from dsmirror._resolve.registries.modelscope import modelscope_sources, restrict_to_listing
from dsmirror._resolve.registries.proof import BoxProof, FileFacts, Proofs, fetch_proofs, hf_proof_path
from dsmirror._verify.digest import ContentHasher, Digests, git_blob_sha1, hash_local_file

__all__ = ["HfFile", "HfListing", "plan_hf", "select_files"]

#: Small files are kept in memory up to these bounds (each, all together); beyond, they are
#: hashed as they stream past and fetched again by the engine.
KEEP_FILE_LIMIT = 64 << 20
KEEP_TOTAL_LIMIT = 512 << 20
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#: The digest of a small file a dry run did not fetch (see the module docstring); never pulled.
UNKNOWN_SHA256 = "0" * 64


# -- the plan ---------------------------------------------------------------------------------------
@dataclass
class _Entry:
    """One manifest file of the pull and the repo file it comes from."""

    manifest_path: str
    file: HfFile
    sha256: str = ""
    pieces: tuple[str, ...] | None = None


@dataclass
class _Kept:
    """Small files' bytes kept for the engine, within the memory bounds."""

    data: dict[str, bytes] = field(default_factory=dict)
    total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def room_for(self, size: int) -> bool:
        with self.lock:
            if size > KEEP_FILE_LIMIT or self.total + size > KEEP_TOTAL_LIMIT:
                return False
            self.total += size
            return True


@dataclass(frozen=True)
class _Small:
    digests: Digests
    liars: tuple[str, ...]  # sources that sent other bytes


def _fetch_small(
    entry: _Entry,
    sources: Sequence[Source],
    local: Sequence[Path],
    piece_size: int,
    kept: _Kept,
) -> _Small | None:
    """The digests of a small file checked against its git blob id: from disk if a copy is there.

    With no ``sources`` (a dry run) and no copy on disk, None.
    """
    f = entry.file
    keep = kept.room_for(f.size)
    for path in local:
        try:
            if path.stat().st_size != f.size:
                continue
            d = hash_local_file(path, piece_size, keep=keep)
        except OSError:
            continue
        if d.size == f.size and d.git_sha1 == f.blob_id:
            # Kept, so the engine copies it from memory (the reuse search knows SHA-256 names only).
            if d.data is not None:
                with kept.lock:
                    kept.data[entry.manifest_path] = d.data
            return _Small(d, ())
    if not sources:
        return None
    problems: list[str] = []
    liars: list[str] = []
    probe = FileEntry(entry.manifest_path, f.size, "", ())
    for src in sources:
        h = ContentHasher(f.size, piece_size, keep=keep)
        try:
            with src.open_range(probe, 0, f.size - 1) as chunks:
                for chunk in chunks:
                    h.update(chunk)
                    if h.received > f.size:
                        break
        except SourceError as exc:
            problems.append(f"{src.name}: {describe(exc)}")
            continue
        d = h.finish()
        if d.size == f.size and d.git_sha1 == f.blob_id:
            if d.data is not None:
                with kept.lock:
                    kept.data[entry.manifest_path] = d.data
            return _Small(d, tuple(liars))
        liars.append(src.name)
        problems.append(f"{src.name}: sent {d.size} bytes with git blob id {d.git_sha1}, not {f.blob_id}")
    if liars:
        raise IntegrityError(f"no source sent {f.path} as the registry lists it: " + "; ".join(problems))
    raise NoSourceError(f"cannot fetch {f.path}: " + "; ".join(problems or ["no source"]))


def _check_published(entries: Sequence[_Entry], published: Manifest, where: str) -> None:
    """Take the piece hashes of a published manifest, after checking it agrees with the registry."""
    by_path = {pf.path: pf for pf in published.files}
    for e in entries:
        pf = by_path.get(e.file.path)
        if pf is None or e.sha256 == UNKNOWN_SHA256:  # a dry run's unfetched file: checked by the pull
            continue
        # No whole-file digest (a signed shard manifest): its piece hashes join the registry's digest.
        if pf.size != e.file.size or (pf.sha256 and pf.sha256 != e.sha256):
            raise IntegrityError(
                f"{where}: the published piece manifest says {pf.path} is {pf.size} bytes with SHA-256 "
                f"{pf.sha256[:16]}…, the registry says {e.file.size} bytes with {e.sha256[:16]}…",
                hint="the piece manifest is for another revision: pin the revision it was made from",
            )
        if pf.pieces and pf.pieces[0]:
            if e.pieces is not None and tuple(pf.pieces) != e.pieces:
                raise IntegrityError(f"{where}: piece hashes of {pf.path} disagree with its content")
            e.pieces = tuple(pf.pieces)


def _ask_boxes(
    mirrors: Sequence[Mirror], listing: HfListing, options: PullOptions
) -> tuple[list[BoxProof], list[str]]:
    """The proofs of the ``dsmirror serve`` boxes among ``mirrors`` (``proof``): those asked before
    the endpoint that listed the repo failed just now, and are not asked again."""
    names = [m.name for m in mirrors]
    before = names[: names.index(listing.endpoint)] if listing.endpoint in names else []
    path = hf_proof_path(listing.repo_id, listing.commit)
    return fetch_proofs(mirrors, path, timeout=options.metadata_timeout, skip=before)


def _piece_size(published: Manifest | None, boxes: Sequence[BoxProof]) -> int:
    """A published manifest's (or signature's) piece size, else the first box's, else the default."""
    if published is not None:
        return published.piece_size
    return boxes[0].manifest.piece_size if boxes else DEFAULT_PIECE_SIZE


def _adopt_proofs(
    boxes: Sequence[BoxProof],
    entries: Sequence[_Entry],
    listing: HfListing,
    sources: Sequence[Source],
    piece_size: int,
) -> Proofs:
    """The boxes' piece hashes for the entries that have none, once each box agrees with the registry.

    A box is not asked for the files its proof contradicts (``dsmirror._resolve.registries.proof``).
    """
    proofs = Proofs(piece_size)
    if not boxes:
        return proofs
    pulled = {e.file.etag: e for e in entries}
    facts: dict[str, FileFacts] = {}
    for f in listing.files:  # a pulled file: what the pull learned of it, by every path naming it
        e = pulled.get(f.etag)
        sha = f.lfs_sha256 if e is None or e.sha256 in ("", UNKNOWN_SHA256) else e.sha256
        facts[f.path] = FileFacts(f.size, sha, None if e is None else e.pieces)
    for box in boxes:
        proofs.adopt(box, facts)
    for e in entries:
        if e.pieces is None and e.file.path in proofs.pieces:
            e.pieces = proofs.pieces[e.file.path]
    repo_path = {e.manifest_path: e.file.path for e in entries}
    for src in sources:
        bad = proofs.contradicted.get(src.name)
        if bad and isinstance(src, HttpSource):
            have = dict.fromkeys(repo_path, True) if src.files is None else dict(src.files)
            src.files = {p: v for p, v in have.items() if repo_path.get(p, p) not in bad}
    return proofs


def _manifest(name: str, piece_size: int, entries: Sequence[_Entry], meta: dict[str, Any]) -> Manifest:
    files = []
    for e in entries:
        n = -(-e.file.size // piece_size)
        pieces = e.pieces if e.pieces is not None else NoPieceHashes(n)
        files.append(FileEntry(e.manifest_path, e.file.size, e.sha256, pieces))
    m = Manifest(name[:200], piece_size, tuple(files), None, meta)
    return parse_manifest(m.canonical_bytes, origin=f"the listing of {name}")  # validates every path


def _partial_areas(dest: Path) -> list[Path]:
    """The partial areas of earlier, interrupted pulls into ``dest`` (see ``dsmirror._journal.store``)."""
    try:
        return sorted(p for p in PrivateArea(dest).partial_dir.iterdir() if p.is_dir())
    except OSError:
        return []


def _hf_template(base: str, repo_id: str, commit: str) -> Callable[[str], str]:
    root = f"{base.rstrip('/')}/{repo_id}/resolve/{commit}/"

    def url(repo_path: str) -> str:
        return root + quote(repo_path)

    return url


def _hf_mirrors(catalog: Catalog, options: PullOptions, ref_text: str) -> list[Mirror]:
    if options.format == "ollama":
        raise UsageError(
            f"{ref_text} is a Hugging Face repo, not an Ollama model", hint="use --format hf or --format dir"
        )
    mirrors = select_mirrors(catalog, ("hf",), options)
    if not mirrors:
        raise NoSourceError(
            "the catalog has no usable mirror of kind hf",
            hint="add one with --mirrors FILE, or check --only/--exclude",
        )
    return mirrors


def _entries(
    repo_id: str, chosen: Sequence[HfFile], settings: Settings, options: PullOptions
) -> tuple[Path, list[_Entry]]:
    """Where the pull goes, and its files: the cache's ``blobs/<etag>`` (each once) or the repo paths."""
    if options.format == "hf":
        by_etag: dict[str, _Entry] = {}
        for f in chosen:
            by_etag.setdefault(f.etag, _Entry(blob_rel(f.etag), f))
        return repo_folder(options.dest or settings.hf_cache, repo_id), list(by_etag.values())
    return options.dest or Path.cwd() / repo_id.split("/")[-1], [_Entry(f.path, f) for f in chosen]


def _hf_sources(
    mirrors: Sequence[Mirror],
    repo_id: str,
    commit: str,
    repo_paths: dict[str, str],
    settings: Settings,
    options: PullOptions,
) -> list[Source]:
    """One source per endpoint, every byte from ``resolve/<commit>``; the token to official ones only."""
    token_headers = {"Authorization": f"Bearer {settings.hf_token}"} if settings.hf_token else {}
    return [
        HttpSource(
            source_info(m, options),
            RepoURLs(m.name, _hf_template(m.url, repo_id, commit), repo_paths),
            headers=token_headers if m.official else {},
            stall_timeout=options.stall_timeout,
        )
        for m in mirrors
    ]


def _listed_digests(entries: Sequence[_Entry]) -> tuple[list[_Entry], dict[str, str]]:
    """Digests the listing gives: an LFS file's SHA-256, an empty file's. (files to learn, git blob ids)."""
    todo: list[_Entry] = []
    git_ids: dict[str, str] = {}
    for e in entries:
        if e.file.lfs_sha256 is not None:
            e.sha256 = e.file.lfs_sha256
            continue
        git_ids[e.file.path] = e.file.blob_id
        if e.file.size > 0:
            todo.append(e)
            continue
        if e.file.blob_id != git_blob_sha1(b""):
            raise IntegrityError(f"{e.file.path}: the listing says it is empty but not its git blob id")
        e.sha256, e.pieces = EMPTY_SHA256, ()
    return todo, git_ids


@dataclass
class _Learned:
    """What learning the small files' SHA-256 found (see "Small files" in the module docstring)."""

    kept: _Kept
    liars: dict[str, str]  # source -> the first file it sent with the wrong git blob id
    unknown: list[_Entry]  # a dry run's files with no copy on disk (UNKNOWN_SHA256)


def _learn_small_files(
    todo: Sequence[_Entry],
    sources: Sequence[Source],
    dest: Path,
    settings: Settings,
    *,
    first: str,
    dry_run: bool,
    piece_size: int,
) -> _Learned:
    """Each small file's SHA-256 and pieces, from a copy on disk or fetched (``first`` asked first)."""
    kept = _Kept()
    partial_areas = _partial_areas(dest)

    def on_disk(e: _Entry) -> list[Path]:
        cands = [dest / e.manifest_path]
        cands += [area / "data" / e.manifest_path for area in partial_areas]
        cands += [repo / blob_rel(e.file.blob_id) for repo in repo_folders(settings.hf_cache)]
        return cands

    # The endpoint that just answered the listing is known to be up: ask it first.
    order = [] if dry_run else sorted(sources, key=lambda s: s.name != first)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="dsmirror-hf-small") as pool:
        results = list(pool.map(lambda e: _fetch_small(e, order, on_disk(e), piece_size, kept), todo))
    learned = _Learned(kept, {}, [])
    for e, small_file in zip(todo, results, strict=True):
        if small_file is None:
            e.sha256 = UNKNOWN_SHA256
            learned.unknown.append(e)
            continue
        e.sha256, e.pieces = small_file.digests.sha256, small_file.digests.pieces
        for liar in small_file.liars:
            learned.liars.setdefault(liar, e.file.path)
    return learned


def _notes(repo_id: str, revision: str, listing: HfListing, learned: _Learned) -> list[str]:
    notes = [f"hf://{repo_id}@{revision} is commit {listing.commit} (listed by {listing.endpoint})"]
    notes += [f"{why} (did not list the repo)" for why in listing.skipped]
    notes += [
        f"{liar}: dropped, it sent {path} with the wrong git blob id" for liar, path in learned.liars.items()
    ]
    if learned.unknown:
        size = format_bytes(sum(e.file.size for e in learned.unknown))
        notes.append(
            f"dry run: {len(learned.unknown)} small file(s) ({size}) not fetched to learn their SHA-256 "
            "(the Hub lists only their git blob id); they count as to fetch, and the manifest id "
            "shown is provisional"
        )
    return notes


def _wanted(entries: Sequence[_Entry]) -> dict[str, tuple[str, int, str | None]]:
    """manifest path -> (repo path, size, SHA-256 or None if not known yet), for ModelScope's check."""
    return {
        e.manifest_path: (e.file.path, e.file.size, None if e.sha256 == UNKNOWN_SHA256 else e.sha256)
        for e in entries
    }


def _serve_kept_from_memory(
    sources: list[Source], kept: dict[str, bytes], repo_paths: dict[str, str]
) -> None:
    """Those bytes are here already: no mirror is asked for them again (the engine would otherwise
    spread a pull's first pieces over every idle source, these included)."""
    for src in sources:
        if isinstance(src, HttpSource):
            have = dict.fromkeys(repo_paths, True) if src.files is None else src.files
            src.files = {p: v for p, v in have.items() if p not in kept}
    sources.append(MemorySource(local_source_info("prefetched"), dict(kept)))


def _after_install(
    options: PullOptions,
    dest: Path,
    revision: str,
    listing: HfListing,
    chosen: Sequence[HfFile],
    settings: Settings,
    ref_text: str,
    manifest: Manifest,
) -> Callable[[Store], None]:
    if options.format == "hf":
        return hf_after_install(
            dest,
            commit=listing.commit,
            revision=revision,
            files=[(f.path, f.etag) for f in chosen],
            tree={f.path: f.tree_entry() for f in listing.files},
        )
    return record_after_install(settings, ref_text, "dir", manifest)


def plan_hf(
    repo_id: str,
    revision: str,
    *,
    catalog: Catalog,
    settings: Settings,
    options: PullOptions,
    ref_text: str,
    name: str | None = None,
    modelscope: str | None = None,
    published: Manifest | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> PullPlan:
    """The pull of a Hugging Face repo (and its ModelScope copy, if given) in ``options.format``.

    The steps of the module docstring: pin and list, select, learn the small files' digests, build
    the manifest (taking a published one's piece hashes once it agrees), one source per endpoint.
    """
    hf_mirrors = _hf_mirrors(catalog, options, ref_text)
    listing = list_hf_repo(
        hf_mirrors, repo_id, revision, token=settings.hf_token, timeout=options.metadata_timeout
    )
    chosen = select_files(listing.files, include, exclude)
    if not chosen:
        raise UsageError(f"no file of {repo_id} at {listing.commit[:12]} matches the include/exclude globs")
    dest, entries = _entries(repo_id, chosen, settings, options)
    repo_paths = {e.manifest_path: e.file.path for e in entries}

    sources: list[Source] = []
    try:
        sources += _hf_sources(hf_mirrors, repo_id, listing.commit, repo_paths, settings, options)
        signed = None
        if options.signature is not None:  # a model.sig vouches for the files (before any is fetched)
            from dsmirror._resolve.signature import check_repo_signature

            first = sorted(sources, key=lambda s: s.name != listing.endpoint)
            signed = check_repo_signature(
                listing, chosen, first, options, name=name or repo_id.split("/")[-1]
            )
            published = signed.manifest if signed and signed.manifest else published
        boxes, box_notes = _ask_boxes(hf_mirrors, listing, options)
        piece_size = _piece_size(published, boxes)
        ms = modelscope_sources(catalog, modelscope, repo_paths, options) if modelscope else []
        sources += [s for s, _ in ms]
        todo, git_ids = _listed_digests(entries)
        learned = _learn_small_files(
            todo,
            sources,
            dest,
            settings,
            first=listing.endpoint,
            dry_run=options.dry_run,
            piece_size=piece_size,
        )
        # A source that sent other bytes than the commit pins is not trusted with the big files.
        for src in [s for s in sources if s.name in learned.liars]:
            sources.remove(src)
            src.close()
        if published is not None:
            _check_published(entries, published, where=ref_text)
        proofs = _adopt_proofs(boxes, entries, listing, sources, piece_size)
        meta = {"source": "hf", "repo": repo_id, "commit": listing.commit, "git_blob_ids": git_ids}
        manifest = _manifest(name or repo_id.split("/")[-1], piece_size, entries, meta)
        notes = _notes(repo_id, revision, listing, learned) + ([signed.note] if signed else [])
        notes += box_notes + proofs.notes
        wanted = _wanted(entries)
        notes += [restrict_to_listing(s, ms_listing, wanted) for s, ms_listing in ms if s in sources]
        if learned.kept.data:
            _serve_kept_from_memory(sources, learned.kept.data, repo_paths)
    except BaseException:
        for s in sources:
            s.close()
        raise
    after = _after_install(options, dest, revision, listing, chosen, settings, ref_text, manifest)
    return PullPlan(manifest, sources, dest, after, notes, signed_by=signed.signed_by if signed else None)
