"""Resolvers for registry references and catalog aliases (named in ``_resolve.resolve.RESOLVERS``).

Which source of an alias a pull uses, by ``--format``::

    --format hf       the alias's ``hf:`` repo (plus its ``modelscope:`` copy as a second source)
    --format ollama   the alias's ``ollama:`` model
    --format dir      ``hf:`` (+ ``modelscope:``), else ``modelscope:`` alone, else ``ollama:``,
                      else the ``signature:`` (a model.sig, plain mirrors), else the
                      ``manifest:`` (plain mirrors), else the ``magnet:``

A piece manifest published by the alias (``manifest:``, pinned by ``manifest_sha256:`` or
``--manifest-sha256``) lends its piece hashes to the registry pull after it was checked to agree
with the registry's digests. ``hf://org/repo`` given directly also picks up the ModelScope copy and
the piece manifest of an alias that names the same repo. A model signature (the alias's
``signature:``, else the repo's own ``model.sig``), checked against its ``publisher:``, vouches for
a Hugging Face pull the same way, before any file is fetched (``dsmirror._resolve.signature``).
"""

from __future__ import annotations

import dataclasses

from dsmirror._core.errors import UsageError
from dsmirror._core.settings import Settings
from dsmirror._formats.catalog import Catalog, ModelAlias
from dsmirror._formats.manifest import Manifest
from dsmirror._formats.ollama import parse_ollama_name
from dsmirror._resolve.manifest import load_manifest_ref, resolve_manifest
from dsmirror._resolve.plan import PullOptions, PullPlan
from dsmirror._resolve.ref import Ref, parse_ref
from dsmirror._resolve.registries.hf import plan_hf
from dsmirror._resolve.registries.modelscope import plan_modelscope
from dsmirror._resolve.registries.ollama import plan_ollama

__all__ = ["resolve_alias", "resolve_hf", "resolve_ollama"]


def _split_hf(text: str) -> tuple[str, str]:
    repo, _, rev = text.partition("@")
    if "/" not in repo:
        raise UsageError(f"hf repo {text!r} needs an owner", hint="write it like deepseek-ai/DeepSeek-R1")
    return repo, rev or "main"


def _published(alias: ModelAlias, options: PullOptions) -> Manifest | None:
    if not alias.manifest:
        return None
    pin = options.manifest_sha256 or alias.manifest_sha256
    # The manifest loader of `dsmirror pull MANIFEST`: same checks, same errors.
    return load_manifest_ref(parse_ref(alias.manifest), pin, timeout=options.metadata_timeout)


def _globs(alias: ModelAlias | None, options: PullOptions) -> tuple[tuple[str, ...], tuple[str, ...]]:
    include = options.include or (alias.include if alias else ())
    exclude = (*(alias.exclude if alias else ()), *options.exclude_files)
    return tuple(include), exclude


def resolve_hf(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    assert ref.repo is not None
    revision = ref.revision or "main"
    # An alias for the same repo lends its ModelScope copy and its piece manifest (checked).
    same = next((a for a in catalog.models.values() if a.hf and _split_hf(a.hf)[0] == ref.repo), None)
    published = None
    if same is not None and same.manifest and _split_hf(same.hf or "")[1] == revision:
        published = _published(same, options)
    include, exclude = _globs(None, options)
    return plan_hf(
        ref.repo,
        revision,
        catalog=catalog,
        settings=settings,
        options=options,
        ref_text=ref.text,
        modelscope=same.modelscope if same else None,
        published=published,
        include=include,
        exclude=exclude,
    )


def resolve_ollama(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    assert ref.ollama is not None
    return plan_ollama(ref.ollama, catalog=catalog, settings=settings, options=options, ref_text=ref.text)


def resolve_alias(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    alias = catalog.alias(ref.text)
    if alias is None:  # pragma: no cover - parse_ref only returns aliases the catalog has
        raise UsageError(f"unknown alias {ref.text!r}")
    fmt = options.format
    include, exclude = _globs(alias, options)
    if alias.hf and fmt in ("hf", "dir"):
        repo, revision = _split_hf(alias.hf)
        return plan_hf(
            repo,
            revision,
            catalog=catalog,
            settings=settings,
            options=options,
            ref_text=ref.text,
            name=alias.name,
            modelscope=alias.modelscope,
            published=_published(alias, options),
            include=include,
            exclude=exclude,
        )
    if alias.ollama and fmt in ("ollama", "dir"):
        return plan_ollama(
            parse_ollama_name(alias.ollama),
            catalog=catalog,
            settings=settings,
            options=options,
            ref_text=ref.text,
            display_name=alias.name,
        )
    if alias.modelscope and fmt == "dir":
        return plan_modelscope(
            alias.modelscope,
            catalog=catalog,
            settings=settings,
            options=options,
            ref_text=ref.text,
            name=alias.name,
            include=include,
            exclude=exclude,
        )
    if fmt == "dir" and alias.signature:  # a model.sig is the manifest; files from plain mirrors
        from dsmirror._resolve.signature import resolve_signature

        web = alias.signature.startswith(("http://", "https://"))
        sig = Ref("signature-url" if web else "signature-file", alias.signature)
        return resolve_signature(sig, catalog, settings, options)
    if fmt == "dir":
        for target in (alias.manifest, alias.magnet):
            if target:
                inner = parse_ref(target)
                pin = options.manifest_sha256 or alias.manifest_sha256
                inner_options = dataclasses.replace(options, manifest_sha256=pin)
                if inner.kind in ("manifest-file", "manifest-url"):
                    return resolve_manifest(inner, catalog, settings, inner_options)
                if inner.kind in ("magnet", "torrent-file"):
                    from dsmirror._resolve.swarm import resolve_swarm_ref  # loads libtorrent

                    return resolve_swarm_ref(inner, catalog, settings, inner_options)
    have = [k for k in ("hf", "ollama", "modelscope", "manifest", "magnet", "signature") if getattr(alias, k)]
    raise UsageError(
        f"{alias.name} cannot be pulled with --format {fmt} (it has: {', '.join(have)})",
        hint="--format hf needs an hf: repo, --format ollama an ollama: model",
    )
