"""REF -> plan: parse the REF, pick its resolver, check it is signed if it must be, add the model's swarm.

Resolvers by REF kind (``dsmirror._resolve.ref``). The table names modules, imported when a REF
of that kind is resolved, so a manifest pull loads neither the registries' clients nor libtorrent::

    manifest-file, manifest-url   _resolve.manifest.resolve_manifest
    signature-file, signature-url _resolve.signature.resolve_signature  (model-signing)
    magnet, torrent-file          _resolve.swarm.resolve_swarm_ref   (libtorrent)
    hf, ollama, alias             _resolve.registries.alias          (huggingface_hub, ...)

Signatures: the command line's ``--signature-*`` (``PullOptions.signature``) is completed by the
catalog alias of the model (the alias pulled, or for ``hf://`` one naming the same repo): whose
signature counts, where it is, whether it is required. Resolvers that find a ``model.sig`` verify
it before anything else and set ``PullPlan.signed_by``; a pull that requires one and has none stops
here (``SignatureInvalid``, exit 3), before a byte of the model is fetched.
"""

from __future__ import annotations

import dataclasses
import importlib

from dsmirror._core.errors import SignatureInvalid, UsageError
from dsmirror._core.settings import Settings
from dsmirror._formats.catalog import Catalog
from dsmirror._resolve.plan import PREFER, PullOptions, PullPlan, Resolver, SignaturePolicy
from dsmirror._resolve.ref import Ref, parse_ref

__all__ = ["RESOLVERS", "may_join_swarm", "resolve"]

#: REF kind -> "module:function" of its resolver.
RESOLVERS: dict[str, str] = {
    "manifest-file": "dsmirror._resolve.manifest:resolve_manifest",
    "manifest-url": "dsmirror._resolve.manifest:resolve_manifest",
    "signature-file": "dsmirror._resolve.signature:resolve_signature",
    "signature-url": "dsmirror._resolve.signature:resolve_signature",
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


def _signature_policy(ref: Ref, catalog: Catalog, options: PullOptions) -> SignaturePolicy:
    """The signature a pull needs: the command line's, completed by the model's catalog alias."""
    given = options.signature or SignaturePolicy()
    alias = catalog.alias(ref.text) if ref.kind == "alias" else None
    if ref.kind == "hf":
        alias = next(
            (a for a in catalog.models.values() if a.hf and a.hf.partition("@")[0] == ref.repo), None
        )
    if alias is None:
        return given
    publisher = given.publisher or (catalog.publishers.get(alias.publisher) if alias.publisher else None)
    return SignaturePolicy(
        publisher, given.location or alias.signature, given.required or alias.require_signature
    )


def _require_signed(plan: PullPlan, ref: Ref, policy: SignaturePolicy) -> None:
    if not policy.required or plan.signed_by is not None:
        return
    for s in plan.sources:
        s.close()
    for sw in plan.swarms:
        sw.close()
    who = policy.publisher.name if policy.publisher else "its publisher"
    raise SignatureInvalid(
        f"a signature by {who} is required, and none vouches for this pull",
        origin=ref.text,
        hint="the catalog (require_signature) or --signature-* asks for a model.sig: pull one, an hf:// "
        "repo that has one, or an alias with signature:",
    )


def may_join_swarm(plan: PullPlan, ref: Ref, catalog: Catalog, options: PullOptions) -> bool:
    """False when ``attach_swarm`` would add no swarm to ``plan``: known without libtorrent.

    Its conditions, the other way round: p2p on, no swarm yet, and a torrent, a magnet, the
    manifest's recorded info-hashes, the alias's magnet or ``--prefer p2p`` naming one
    (tests/test_startup.py checks the two agree).
    """
    if not options.swarm.enabled or plan.swarms or plan.swarm_only is not None:
        return False
    if options.swarm.torrent or ref.kind in ("torrent-file", "magnet") or options.prefer == "p2p":
        return True
    if plan.manifest.torrent:
        return True
    alias = catalog.models.get(ref.text) if ref.kind == "alias" else None
    return alias is not None and alias.magnet is not None


def _attach_swarm(plan: PullPlan, ref: Ref, catalog: Catalog, options: PullOptions) -> PullPlan:
    if not may_join_swarm(plan, ref, catalog, options):
        return plan  # what attach_swarm does then, without loading libtorrent (--no-p2p, no swarm)
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
    policy = _signature_policy(ref, catalog, options)
    options = dataclasses.replace(options, signature=policy)
    plan = resolver(ref, catalog, settings, options)
    _require_signed(plan, ref, policy)
    return _attach_swarm(plan, ref, catalog, options)
