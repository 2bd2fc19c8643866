"""Resolving a manifest REF (a file or a URL): the manifest, and the catalog's plain mirrors."""

from __future__ import annotations

from pathlib import Path

from dsmirror._core.errors import ManifestError, NoSourceError, SourceError, Stalled, TooLarge
from dsmirror._core.settings import Settings
from dsmirror._fetch.metadata import METADATA_LIMIT, MetadataSession
from dsmirror._formats.catalog import Catalog
from dsmirror._formats.manifest import Manifest, load_manifest, parse_manifest
from dsmirror._resolve.plan import PullOptions, PullPlan, http_sources
from dsmirror._resolve.ref import Ref

__all__ = ["MANIFEST_URL_LIMIT", "load_manifest_ref", "resolve_manifest"]

#: A manifest fetched from a URL larger than this is refused before more of it is read (a file
#: on disk may be larger: ``load_manifest``). 64 MiB is about a million piece hashes: 8 TiB in
#: the default 8 MiB pieces.
MANIFEST_URL_LIMIT = METADATA_LIMIT


def load_manifest_ref(ref: Ref, pin: str | None, *, timeout: float = 15.0) -> Manifest:
    """The manifest at a path or an http(s) URL (checked against ``pin``, its SHA-256, if given).

    A URL is read through a ``MetadataSession``: at most ``MANIFEST_URL_LIMIT`` bytes (decoded),
    within ``timeout`` seconds in all (``PullOptions.metadata_timeout``), redirects included.
    """
    if ref.kind == "manifest-file":
        assert ref.path is not None
        return load_manifest(ref.path, expected_sha256=pin)
    url = ref.text
    try:
        with MetadataSession(source=url, timeout=timeout) as session:
            doc = session.get(url, limit=MANIFEST_URL_LIMIT)
    except TooLarge as exc:
        raise ManifestError(
            f"the manifest is larger than {MANIFEST_URL_LIMIT >> 20} MiB",
            path=url,
            hint="download it and pull the file (a manifest on disk may be larger)",
        ) from exc
    except Stalled as exc:
        raise SourceError(
            f"cannot fetch the manifest {url}: {exc}",
            url=url,
            hint="a large manifest on a slow link needs a longer --metadata-timeout",
        ) from exc
    except SourceError as exc:
        raise SourceError(f"cannot fetch the manifest {url}: {exc}", url=url) from exc
    if doc.status != 200:
        raise SourceError(f"cannot fetch the manifest {url}: HTTP {doc.status}", url=url)
    return parse_manifest(doc.body, expected_sha256=pin, origin=url)


def resolve_manifest(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    manifest = load_manifest_ref(ref, options.manifest_sha256, timeout=options.metadata_timeout)
    sources = http_sources(catalog, options)
    if not sources and not (options.swarm.enabled and (options.swarm.torrent or manifest.torrent)):
        raise NoSourceError(
            "the catalog has no mirror of kind http for this manifest",
            hint="add one with --mirrors FILE (see mirrors.yaml for the format)",
        )
    dest = options.dest or Path.cwd() / manifest.folder_name
    return PullPlan(manifest, sources, dest)
