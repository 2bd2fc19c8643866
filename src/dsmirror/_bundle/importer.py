"""Importing a bundle: read the manifest first, check it against the pin, then every file in order.

The manifest is read and checked against the pin before any file data is read (a wrong bundle
costs nothing); then each member must be the file the manifest dictates at that position, of its
size, and its bytes go through ``Ingest`` (hashed piece by piece into the store). Anything else —
a member out of order, a truncated tar, a member after the last file — is ``ImportRejected``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from dsmirror._bundle.format import (
    FILES_PREFIX,
    MANIFEST_MEMBER,
    MAX_MANIFEST,
    MAX_SIDECAR,
    MAX_SIDECARS,
    SIDECAR_PREFIX,
)
from dsmirror._bundle.ingest import Ingest, bundle_opened, pull_started
from dsmirror._bundle.target import import_target
from dsmirror._core.errors import ImportRejected
from dsmirror._core.events import Event
from dsmirror._core.settings import Settings
from dsmirror._formats.manifest import Manifest, parse_manifest
from dsmirror._journal.store import Store

__all__ = ["import_bundle"]


def import_bundle(
    stream: IO[bytes],
    *,
    origin: str,
    fmt: str = "dir",
    dest: Path | None = None,
    expected_sha256: str | None = None,
    pinned_by: str | None = None,
    known: Mapping[str, str] | None = None,
    settings: Settings | None = None,
) -> Iterator[Event]:
    """Verify and install a bundle read from ``stream``, yielding BundleOpened and pull events.

    ``expected_sha256`` pins the manifest (``pinned_by`` says who vouched for it); ``known`` maps
    catalog aliases to their pinned manifest digests, so a bundle of a known model is recognised.
    Raises ManifestMismatch before any file is read if the pin does not match, and ImportRejected
    (naming the file and piece) for a truncated, damaged or reordered bundle.
    """
    with _open_tar(stream, origin) as tar:
        manifest, sidecars, member = _read_head(tar, origin, expected_sha256)
        target = import_target(manifest, sidecars, fmt, dest, settings, origin)
        pin = pinned_by or ("--manifest-sha256" if expected_sha256 else None)
        yield bundle_opened(origin, manifest, pin, known or {}, target, fmt)
        with Store.open(target.dest, target.manifest) as store:
            before = store.verified_bytes
            yield pull_started(target, store, origin)
            ingest = Ingest(manifest, target, store, origin)
            for fi, f in enumerate(manifest.files):
                if fi:
                    member = _next(tar, origin, f.path)
                fh = tar.extractfile(_file_member(member, manifest, fi, origin))
                assert fh is not None
                yield from ingest.file(fi, fh.read)
            extra = _next(tar, origin, "the end")
            if extra is not None:
                raise ImportRejected(
                    f"unexpected member {extra.name!r} after the last file: the bundle was altered",
                    origin=origin,
                )
            yield from ingest.finish(before)


# ValueError: tarfile lets some malformed headers through as one (a pax GNU.sparse.size that is not
# a number, for instance).
_TAR_ERRORS = (tarfile.TarError, EOFError, ValueError)


def _open_tar(stream: IO[bytes], origin: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|")
    except _TAR_ERRORS as exc:
        raise ImportRejected(f"not a dsmirror bundle (not a tar file: {exc})", origin=origin) from exc


def _read_head(
    tar: tarfile.TarFile, origin: str, expected_sha256: str | None
) -> tuple[Manifest, dict[str, bytes], tarfile.TarInfo | None]:
    """The manifest (checked against the pin), the sidecars, and the member after them."""
    first = _next(tar, origin, "its manifest")
    if first is None or first.name != MANIFEST_MEMBER or not first.isfile():
        raise ImportRejected(
            f"not a dsmirror bundle: the first member must be {MANIFEST_MEMBER}",
            origin=origin,
            hint="bundles are written by `dsmirror export`",
        )
    if first.size > MAX_MANIFEST:
        raise ImportRejected("its manifest is implausibly large", origin=origin)
    data = _read_member(tar, first, origin)
    manifest = parse_manifest(data, expected_sha256=expected_sha256, origin=f"{origin}:{MANIFEST_MEMBER}")
    sidecars: dict[str, bytes] = {}
    member = _next(tar, origin, "the first file")
    while member is not None and member.name.startswith(SIDECAR_PREFIX):
        if not member.isfile() or member.size > MAX_SIDECAR or len(sidecars) >= MAX_SIDECARS:
            raise ImportRejected(f"bad member {member.name}", origin=origin)
        sidecars[member.name[len(SIDECAR_PREFIX) :]] = _read_member(tar, member, origin)
        member = _next(tar, origin, "the first file")
    return manifest, sidecars, member


def _file_member(member: tarfile.TarInfo | None, manifest: Manifest, fi: int, origin: str) -> tarfile.TarInfo:
    """``member`` if it is file ``fi`` of the manifest, of its size; else ImportRejected."""
    f = manifest.files[fi]
    want = FILES_PREFIX + f.path
    if member is None:
        raise ImportRejected(
            f"ends before {f.path} (file {fi + 1} of {len(manifest.files)}): the bundle is truncated",
            origin=origin,
            path=f.path,
            piece=manifest.file_piece_ranges[fi].start if f.size else None,
        )
    if member.name != want or not member.isfile():
        raise ImportRejected(
            f"member {member.name!r} where {want!r} belongs: the bundle was altered",
            origin=origin,
            path=f.path,
        )
    if member.size != f.size:
        raise ImportRejected(
            f"{f.path} is {member.size} bytes in the bundle, the manifest says {f.size}",
            origin=origin,
            path=f.path,
        )
    return member


def _next(tar: tarfile.TarFile, origin: str, what: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except _TAR_ERRORS as exc:
        raise ImportRejected(
            f"unreadable before {what} ({exc}): the bundle is truncated or damaged", origin=origin
        ) from exc


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, origin: str) -> bytes:
    fh = tar.extractfile(member)
    assert fh is not None
    try:
        data = fh.read()
    except _TAR_ERRORS as exc:
        raise ImportRejected(f"{member.name} is truncated ({exc})", origin=origin) from exc
    if len(data) != member.size:
        raise ImportRejected(f"{member.name} is truncated", origin=origin)
    return data
