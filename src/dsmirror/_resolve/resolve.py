"""REF -> plan: parse the REF, pick its resolver, add the model's swarm.

Resolvers by REF kind (``dsmirror._resolve.ref``). The table names modules, imported when a REF
of that kind is resolved, so a manifest pull loads neither the registries' clients nor libtorrent::

    manifest-file, manifest-url   _resolve.manifest.resolve_manifest
    magnet, torrent-file          _resolve.swarm.resolve_swarm_ref   (libtorrent)
    hf, ollama, alias             _resolve.registries.alias          (huggingface_hub, ...)
"""

from __future__ import annotations

import importlib

from dsmirror._core.errors import UsageError
from dsmirror._core.settings import Settings
from dsmirror._formats.catalog import Catalog
from dsmirror._resolve.plan import PREFER, PullOptions, PullPlan, Resolver
from dsmirror._resolve.ref import Ref, parse_ref

__all__ = ["RESOLVERS", "resolve"]

#: REF kind -> "module:function" of its resolver.
RESOLVERS: dict[str, str] = {
    "manifest-file": "dsmirror._resolve.manifest:resolve_manifest",
    "manifest-url": "dsmirror._resolve.manifest:resolve_manifest",
    "magnet": "dsmirror._resolve.swarm:resolve_swarm_ref",
    "torrent-file": "dsmirror._resolve.swarm:resolve_swarm_ref",
    "hf": "dsmirror._resolve.registries.alias:resolve_hf",
    "ollama": "dsmirror._resolve.registries.alias:resolve_ollama",
    "alias": "dsmirror._resolve.registries.alias:resolve_alias",
}


def _resolver(kind: str) -> Resolver | None:
    where = RESOLVERS.get(kind)
    if where is None:
        return None
    module, _, name = where.partition(":")
    resolver: Resolver = getattr(importlib.import_module(module), name)
    return resolver


def _attach_swarm(plan: PullPlan, ref: Ref, catalog: Catalog, options: PullOptions) -> PullPlan:
    if not options.swarm.enabled:
        return plan  # what attach_swarm does then, without loading libtorrent (--no-p2p)
    from dsmirror._resolve.swarm import attach_swarm

    return attach_swarm(plan, ref, catalog, options)


def resolve(ref_text: str, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    if options.prefer not in PREFER:
        raise UsageError(f"--prefer must be one of {', '.join(PREFER)}")
    if options.format not in ("dir", "hf", "ollama"):
        raise UsageError("--format must be dir, hf or ollama")
    ref = parse_ref(ref_text, aliases=set(catalog.models))
    resolver = _resolver(ref.kind)
    if resolver is None:
        raise UsageError(
            f"pulling a {ref.kind} reference is not supported yet", hint="give a manifest file or URL"
        )
    plan = resolver(ref, catalog, settings, options)
    return _attach_swarm(plan, ref, catalog, options)
