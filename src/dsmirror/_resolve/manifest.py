"""Resolving a manifest REF (a file or a URL): the manifest, and the catalog's plain mirrors."""

from __future__ import annotations

from pathlib import Path

import httpx

from dsmirror._core.errors import ManifestError, NoSourceError, SourceError
from dsmirror._core.settings import Settings
from dsmirror._fetch.http import shared_ssl_context
from dsmirror._formats.catalog import Catalog
from dsmirror._formats.manifest import Manifest, load_manifest, parse_manifest
from dsmirror._resolve.plan import PullOptions, PullPlan, http_sources
from dsmirror._resolve.ref import Ref

__all__ = ["load_manifest_ref", "resolve_manifest"]


def load_manifest_ref(ref: Ref, pin: str | None) -> Manifest:
    if ref.kind == "manifest-file":
        assert ref.path is not None
        return load_manifest(ref.path, expected_sha256=pin)
    try:
        with httpx.Client(follow_redirects=True, timeout=30, verify=shared_ssl_context()) as c:
            r = c.get(ref.text)
            r.raise_for_status()
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot fetch the manifest {ref.text}: {exc}", url=ref.text) from exc
    if len(r.content) > 1 << 30:
        raise ManifestError("manifest is too large", path=ref.text)
    return parse_manifest(r.content, expected_sha256=pin, origin=ref.text)


def resolve_manifest(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    manifest = load_manifest_ref(ref, options.manifest_sha256)
    sources = http_sources(catalog, options)
    if not sources and not (options.swarm.enabled and (options.swarm.torrent or manifest.torrent)):
        raise NoSourceError(
            "the catalog has no mirror of kind http for this manifest",
            hint="add one with --mirrors FILE (see mirrors.yaml for the format)",
        )
    dest = options.dest or Path.cwd() / manifest.folder_name
    return PullPlan(manifest, sources, dest)
