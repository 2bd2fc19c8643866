"""Pulling by an OpenSSF model signature: ``dsmirror pull model.sig`` and a repo's own ``model.sig``.

``resolve_signature`` (REF kinds ``signature-file``, ``signature-url``; an alias's ``signature:``
without a registry) makes the signature the pull's manifest:

1. Read the ``model.sig`` (a file, or a URL) and verify it against the publisher
   (``--signature-key`` / ``--signature-cert-chain`` / ``--signature-identity``, or the alias's
   ``publisher:``) with ``dsmirror._verify.signature``: nothing is fetched before it verified.
2. Ask the catalog's plain mirrors for the size of every signed file (``HEAD``, the first mirror
   that answers each): the files method signs no sizes, and for shards a file the mirrors do not
   have, or have with another size, stops the pull now (``SignatureInvalid``, exit 3) rather than
   after a download.
3. The manifest is the signature's (``dsmirror._formats.signature.signed_manifest``): shards are
   pieces checked as they land, file digests whole-file checks. After the install the signature is
   written next to the files, so the folder keeps its proof.

``check_repo_signature`` does step 1 for a Hugging Face pull (``plan_hf``): the repo's own
``model.sig`` (or the alias's ``signature:``), fetched from the endpoints at the pinned commit and
checked against the listing's git blob id, then compared with the listing — every signed file there
with its signed size and, where the listing has one, its SHA-256; every file pulled signed, or left
out by the signer (``ignore_paths``). Its manifest is then the pull's *published* manifest: the
registry's digests, the signature's piece hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from dsmirror._core.errors import (
    NoSourceError,
    SignatureInvalid,
    SourceError,
    TooLarge,
    UsageError,
)
from dsmirror._core.fsutil import atomic_write_bytes, safe_join
from dsmirror._core.settings import Settings
from dsmirror._core.units import format_bytes
from dsmirror._fetch.http import USER_AGENT, shared_ssl_context
from dsmirror._fetch.metadata import MetadataSession
from dsmirror._fetch.source import Source
from dsmirror._formats.catalog import Catalog, Mirror, Publisher, plain_url_for
from dsmirror._formats.hf import HfFile, HfListing
from dsmirror._formats.manifest import FileEntry, Manifest
from dsmirror._formats.signature import (
    MAX_SIGNATURE_SIZE,
    SIGNATURE_NAME,
    SignedModel,
    check_offered,
    signed_manifest,
)
from dsmirror._journal.store import Store
from dsmirror._resolve.plan import PullOptions, PullPlan, SignaturePolicy, http_sources, select_mirrors
from dsmirror._resolve.ref import Ref
from dsmirror._verify.digest import git_blob_sha1

__all__ = ["RepoSignature", "check_repo_signature", "load_signature", "resolve_signature"]

_PUBLISHER_HINT = (
    "give --signature-key PEM, --signature-cert-chain PEM or --signature-identity with "
    "--signature-issuer, or name the publisher in the catalog (publishers:, and publisher: in the alias)"
)


def load_signature(location: str, *, timeout: float = 30.0) -> bytes:
    """The bytes of a ``model.sig`` at a path or an http(s) URL (bounded in size, and a URL in time)."""
    if not location.startswith(("http://", "https://")):
        try:
            with open(location, "rb") as fh:
                data = fh.read(MAX_SIGNATURE_SIZE + 1)
        except FileNotFoundError:
            raise SignatureInvalid("no such file", origin=location) from None
        except OSError as exc:
            raise SignatureInvalid(f"cannot read it: {exc.strerror}", origin=location) from exc
    else:
        # Bounded like every metadata read: decoded bytes and the whole exchange (``MetadataSession``).
        try:
            with MetadataSession(source=location, timeout=timeout) as session:
                doc = session.get(location, limit=MAX_SIGNATURE_SIZE)
        except TooLarge:
            raise SignatureInvalid("too large to be a model signature", origin=location) from None
        except SourceError as exc:
            raise SourceError(f"cannot fetch the signature {location}: {exc}", url=location) from exc
        if doc.status in (404, 410):
            raise SignatureInvalid(f"HTTP {doc.status}: there is no signature there", origin=location)
        if doc.status != 200:
            raise SourceError(f"cannot fetch the signature {location}: HTTP {doc.status}", url=location)
        data = doc.body
    if len(data) > MAX_SIGNATURE_SIZE:
        raise SignatureInvalid("too large to be a model signature", origin=location)
    return data


def _publisher(policy: SignaturePolicy | None, origin: str) -> Publisher:
    if policy is None or policy.publisher is None:
        raise UsageError(f"whose signature is {origin}? nothing to check it against", hint=_PUBLISHER_HINT)
    return policy.publisher


def _verify(data: bytes, publisher: Publisher, origin: str) -> tuple[SignedModel, str]:
    # model-signing (and sigstore, pyOpenSSL) are imported here, by the pulls that check a signature.
    from dsmirror._verify.signature import verify_signature

    verified = verify_signature(data, publisher, origin=origin)
    return verified.model, verified.signer


def _note(model: SignedModel, manifest: Manifest, signer: str) -> str:
    if manifest.has_piece_hashes and manifest.num_pieces:
        how = f"{manifest.num_pieces} pieces of {format_bytes(manifest.piece_size)} checked as they land"
    else:
        how = "each checked whole by its SHA-256"
    return f"{SIGNATURE_NAME} verified, signed by {signer}: {len(manifest.files)} files, {how}"


# -- model.sig with plain mirrors ---------------------------------------------------------------
def _head_size(client: httpx.Client, url: str) -> int | None:
    """The size a mirror gives for ``url``; None if it does not have the file. Raises SourceError."""
    try:
        r = client.head(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot connect: {exc}", url=url) from exc
    if r.status_code in (404, 410):
        return None
    length = r.headers.get("content-length", "")
    if r.status_code != 200 or not length.isdigit():
        raise SourceError(f"HTTP {r.status_code} without a size", url=url)
    return int(length)


def _offered_sizes(model: SignedModel, mirrors: Sequence[Mirror], timeout: float) -> dict[str, int]:
    """path -> size, from the first mirror that has each signed file (absent: every mirror said so).

    Raises NoSourceError for a file no mirror has while some did not answer (down, not "not found").
    """
    urls = [plain_url_for(m.url) for m in mirrors]

    def size_of(client: httpx.Client, path: str) -> tuple[str, int | None, str | None]:
        problem = None
        probe = FileEntry(path, 0, "", ())
        for url_for in urls:
            try:
                size = _head_size(client, url_for(probe))
            except SourceError as exc:
                problem = exc.message
                continue
            if size is not None:
                return path, size, None
        return path, None, problem  # absent only if every mirror answered that it has no such file

    with (
        httpx.Client(follow_redirects=True, timeout=timeout, verify=shared_ssl_context()) as client,
        ThreadPoolExecutor(max_workers=8, thread_name_prefix="dsmirror-sig-probe") as pool,
    ):
        answers = list(pool.map(lambda f: size_of(client, f.path), model.files))
    unreachable = [(path, why) for path, size, why in answers if size is None and why]
    if unreachable:
        path, why = unreachable[0]
        raise NoSourceError(f"no mirror answered for {path}: {why}", hint="check the mirrors (--mirrors)")
    return {path: size for path, size, _ in answers if size is not None}


def _keep_signature(dest: Path, data: bytes, model: SignedModel) -> Callable[[Store], None] | None:
    if model.file(SIGNATURE_NAME) is not None:
        return None  # signed as a file of the model: pulled as one

    def after(store: Store) -> None:
        atomic_write_bytes(safe_join(dest, SIGNATURE_NAME), data)

    return after


def resolve_signature(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    location = ref.text
    publisher = _publisher(options.signature, location)
    data = load_signature(location, timeout=options.metadata_timeout)
    model, signer = _verify(data, publisher, location)
    mirrors = select_mirrors(catalog, ("http",), options)
    if not mirrors:
        raise NoSourceError(
            "the catalog has no mirror of kind http for the signed files",
            hint="add one with --mirrors FILE (see mirrors.yaml for the format)",
        )
    offered = _offered_sizes(model, mirrors, options.metadata_timeout)
    check_offered(model, offered, pulled=None, origin=location)
    # Not who the user said signs it (that is how the pull was asked): the model's identity.
    meta = {"source": "model.sig", "signed_sha256": model.subject_sha256, "signed_as": model.method}
    manifest = signed_manifest(model, sizes=offered, meta=meta, origin=location)
    dest = options.dest or Path.cwd() / manifest.folder_name
    plan = PullPlan(manifest, http_sources(catalog, options), dest, _keep_signature(dest, data, model))
    plan.notes.append(_note(model, manifest, signer))
    plan.signed_by = signer
    return plan


# -- model.sig of a Hugging Face repo --------------------------------------------------------------
@dataclass(frozen=True)
class RepoSignature:
    """What a repo's signature vouches for: the published manifest of the pull, and by whom."""

    manifest: Manifest | None  # None: the signature was not checked (see ``note``)
    signed_by: str | None
    note: str


def _fetch_from_repo(entry: HfFile, sources: Sequence[Source], origin: str) -> bytes:
    """The repo's model.sig, as the listing pins it (git blob id or LFS SHA-256), from the first source."""
    probe = FileEntry(entry.path, entry.size, "", ())
    problems: list[str] = []
    for src in sources:
        buf = bytearray()
        try:
            with src.open_range(probe, 0, entry.size - 1) as chunks:
                for chunk in chunks:
                    buf += chunk
        except SourceError as exc:
            problems.append(f"{src.name}: {exc.message}")
            continue
        data = bytes(buf)
        same = (
            hashlib.sha256(data).hexdigest() == entry.lfs_sha256
            if entry.lfs_sha256
            else git_blob_sha1(data) == entry.blob_id
        )
        if same:
            return data
        problems.append(f"{src.name}: sent other bytes than the commit pins")
    raise NoSourceError(f"cannot fetch {origin}: " + "; ".join(problems or ["no source"]))


def check_repo_signature(
    listing: HfListing,
    pulled: Sequence[HfFile],
    sources: Sequence[Source],
    options: PullOptions,
    *,
    name: str,
) -> RepoSignature | None:
    """The signature of a Hugging Face pull (the repo's model.sig, or the alias's), checked.

    None when there is none to check (``resolve`` refuses the pull if one was required).
    """
    policy = options.signature
    in_repo = next((f for f in listing.files if f.path == SIGNATURE_NAME), None)
    if policy is None or (policy.location is None and in_repo is None):
        return None
    origin = policy.location or f"hf://{listing.repo_id}@{listing.commit[:12]}/{SIGNATURE_NAME}"
    if policy.publisher is None:
        note = f"{origin} not checked: no publisher is known to check it against ({_PUBLISHER_HINT})"
        return RepoSignature(None, None, note)
    if policy.location is not None:
        data = load_signature(policy.location, timeout=options.metadata_timeout)
    else:
        assert in_repo is not None
        data = _fetch_from_repo(in_repo, sources, origin)
    model, signer = _verify(data, policy.publisher, origin)
    listed = {f.path: f for f in listing.files}
    check_offered(
        model, {p: f.size for p, f in listed.items()}, pulled=[f.path for f in pulled], origin=origin
    )
    for signed in model.files:
        lfs = listed[signed.path].lfs_sha256
        if signed.sha256 and lfs and signed.sha256 != lfs:
            raise SignatureInvalid(
                f"{signed.path} has SHA-256 {lfs[:16]}… in the repo, the signature says "
                f"{signed.sha256[:16]}…",
                origin=origin,
            )
    paths = [f.path for f in pulled if model.file(f.path) is not None]
    sizes = {p: f.size for p, f in listed.items()}
    # Not who the user said signs it (that is how the pull was asked): the model's identity.
    meta = {"source": "model.sig", "signed_sha256": model.subject_sha256, "signed_as": model.method}
    manifest = signed_manifest(model, sizes=sizes, paths=paths, name=name, meta=meta, origin=origin)
    return RepoSignature(manifest, signer, _note(model, manifest, signer))
