"""``dsmirror pull``: turn a REF into a manifest and sources, then fetch it into a store.

The pieces: ``resolve`` (REF + catalog -> a ``PullPlan``: manifest, sources, destination) and
``pull`` (runs the plan: lock the store, fetch, install, yield events). Registry kinds (``hf://``,
``ollama://``, aliases, magnets) add their own resolvers to ``RESOLVERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ._catalog import Catalog, Mirror
from ._clock import Clock
from ._engine import EngineConfig, SwarmSource, fetch
from ._errors import ManifestError, NoSourceError, SourceError, UsageError
from ._events import Event, PlanNotes
from ._manifest import Manifest, load_manifest, parse_manifest
from ._refs import Ref, parse_ref
from ._resolver import Experience
from ._reuse import LocalIndex, plan_dry_run, record_manifest, reuse_local, reuse_roots
from ._scheduler import Scheduler, SchedulerConfig
from ._settings import Settings
from ._sources import HttpSource, Source, SourceInfo, plain_url_for, shared_ssl_context
from ._store import Store
from ._swarm_types import SwarmConfig

if TYPE_CHECKING:
    from ._swarm import SwarmOnlyPull

__all__ = ["PullOptions", "PullPlan", "pull", "resolve"]

PREFER = ("auto", "mirror", "official", "p2p")


@dataclass(frozen=True)
class PullOptions:
    dest: Path | None = None
    format: str = "dir"  # dir | hf | ollama
    manifest_sha256: str | None = None
    max_rate: float | None = None
    #: --min-rate: the speed floor of the whole pull (bytes/s); below it for 10 s, sources in
    #: back-off are retried at once and the slowest connection is replaced (see the scheduler).
    min_rate: float | None = None
    connections: int | None = None  # per source; default: the catalog's max_connections
    max_total_connections: int = 32
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    region: str | None = None
    prefer: str = "auto"
    include: tuple[str, ...] = ()
    exclude_files: tuple[str, ...] = ()
    stall_timeout: float = 20.0
    give_up_after: float = 120.0
    #: Seconds to wait for a registry's metadata (revision, file listing, manifest) before trying
    #: the next endpoint of the catalog.
    metadata_timeout: float = 15.0
    dry_run: bool = False  # print what would be reused and fetched from where; fetch nothing
    reuse: bool = True  # copy pieces already on this machine before fetching (see _reuse)
    reuse_from: tuple[Path, ...] = ()  # more folders to look in (--reuse-from)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)  # --torrent, --peer, --listen, --seed, --no-p2p


@dataclass
class PullPlan:
    manifest: Manifest
    sources: list[Source]
    dest: Path
    #: Runs after every file is verified and in place (e.g. write the Ollama manifest last).
    after_install: Callable[[Store], None] | None = None
    notes: list[str] = field(default_factory=list)
    #: BitTorrent swarms of the model (see ``_swarm.attach_swarm``), sources like the others.
    swarms: list[SwarmSource] = field(default_factory=list)
    #: A magnet or .torrent no manifest describes: the plan runs this instead of the engine, and
    #: ``manifest`` only names the model (its files are known once peers sent the torrent).
    swarm_only: SwarmOnlyPull | None = None


Resolver = Callable[[Ref, Catalog, Settings, PullOptions], PullPlan]
RESOLVERS: dict[str, Resolver] = {}


def select_mirrors(catalog: Catalog, kinds: Sequence[str], options: PullOptions) -> list[Mirror]:
    """Catalog mirrors of ``kinds`` after --only / --exclude."""
    mirrors = [m for m in catalog.mirrors_of_kind() if m.kind in kinds]
    known = {m.name for m in catalog.mirrors}
    for name in (*options.only, *options.exclude):
        if name not in known:
            raise UsageError(f"no mirror called {name!r} in the catalog", hint="see `dsmirror sources REF`")
    if options.only:
        mirrors = [m for m in mirrors if m.name in options.only]
    return [m for m in mirrors if m.name not in options.exclude]


def source_info(m: Mirror, options: PullOptions) -> SourceInfo:
    return SourceInfo(
        name=m.name,
        kind=m.kind,
        host=m.host,
        region=m.region,
        official=m.official,
        priority=m.priority,
        max_connections=options.connections or m.max_connections,
    )


def http_sources(catalog: Catalog, options: PullOptions) -> list[Source]:
    """Plain mirrors (kind http, and LAN dsmirror servers' plain-file routes)."""
    return [
        HttpSource(source_info(m, options), plain_url_for(m.url), stall_timeout=options.stall_timeout)
        for m in select_mirrors(catalog, ("http",), options)
    ]


def _load_manifest_ref(ref: Ref, pin: str | None) -> Manifest:
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


def _resolve_manifest(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    manifest = _load_manifest_ref(ref, options.manifest_sha256)
    sources = http_sources(catalog, options)
    if not sources and not (options.swarm.enabled and (options.swarm.torrent or manifest.torrent)):
        raise NoSourceError(
            "the catalog has no mirror of kind http for this manifest",
            hint="add one with --mirrors FILE (see mirrors.yaml for the format)",
        )
    dest = options.dest or Path.cwd() / manifest.folder_name
    return PullPlan(manifest, sources, dest)


def _resolve_swarm_ref(ref: Ref, catalog: Catalog, settings: Settings, options: PullOptions) -> PullPlan:
    from ._swarm import resolve_swarm_ref  # loads libtorrent: only for magnets and .torrent files

    return resolve_swarm_ref(ref, catalog, settings, options)


RESOLVERS["manifest-file"] = _resolve_manifest
RESOLVERS["manifest-url"] = _resolve_manifest
RESOLVERS["magnet"] = _resolve_swarm_ref
RESOLVERS["torrent-file"] = _resolve_swarm_ref


def _resolver(kind: str) -> Resolver | None:
    resolver = RESOLVERS.get(kind)
    if resolver is None:
        # hf://, ollama:// and aliases: importing the registries registers their resolvers.
        from . import _registries  # noqa: F401

        resolver = RESOLVERS.get(kind)
    return resolver


def _attach_swarm(plan: PullPlan, ref: Ref, catalog: Catalog, options: PullOptions) -> PullPlan:
    if not options.swarm.enabled:
        return plan  # what attach_swarm does then, without loading libtorrent (--no-p2p)
    from ._swarm import attach_swarm

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


def pull(
    ref: str,
    *,
    catalog: Catalog,
    settings: Settings,
    options: PullOptions | None = None,
    clock: Clock | None = None,
) -> Iterator[Event]:
    """Resolve ``ref`` and fetch it; yields typed events; raises DsmirrorError subclasses."""
    opts = options or PullOptions()
    plan = resolve(ref, catalog, settings, opts)
    try:
        if plan.notes:
            yield PlanNotes(ref, plan.manifest.name, plan.manifest.sha256, str(plan.dest), tuple(plan.notes))
    except BaseException:  # closed before run_plan started: its `finally` would not release these
        for s in plan.sources:
            s.close()
        for sw in plan.swarms:
            sw.close()
        raise
    yield from run_plan(plan, opts, clock=clock, settings=settings)


def run_plan(
    plan: PullPlan, opts: PullOptions, *, clock: Clock | None = None, settings: Settings | None = None
) -> Iterator[Event]:
    if plan.swarm_only is not None:
        yield from plan.swarm_only.run(opts, settings)
        return
    cfg = EngineConfig(
        max_connections=opts.max_total_connections,
        max_rate=opts.max_rate,
        scheduler=SchedulerConfig(
            prefer=opts.prefer,
            region=opts.region,
            give_up_after=opts.give_up_after,
            min_total_rate=opts.min_rate,
        ),
    )
    exp = Experience(settings.state_dir / "sources.json") if settings else None
    scheds: list[Scheduler] = []

    def prime(sched: Scheduler) -> None:
        # Start from what earlier pulls measured; the first real pieces correct it.
        scheds.append(sched)
        for st in sched.sources():
            seen = exp.get(st.info.name, st.info.host) if exp else None
            if seen:
                sched.set_prior(st.info.name, seen["rate"])

    roots = reuse_roots(plan.dest, opts.reuse_from, settings) if opts.reuse else []
    same_path = [plan.dest, *opts.reuse_from]
    try:
        if opts.dry_run:
            index = (
                LocalIndex.build(plan.manifest, plan.dest, roots, settings, same_path=same_path)
                if opts.reuse
                else None
            )
            yield plan_dry_run(plan.manifest, plan.dest, [*plan.sources, *plan.swarms], index)
            return
        with Store.open(plan.dest, plan.manifest) as store:
            if opts.reuse and not store.complete():
                # Before fetch: it counts what is verified when it starts as reused bytes.
                index = LocalIndex.build(plan.manifest, plan.dest, roots, settings, same_path=same_path)
                yield from reuse_local(store, index)
            sources: list[Source | SwarmSource] = [*plan.sources, *plan.swarms]
            yield from fetch(plan.manifest, sources, store, config=cfg, clock=clock, on_sources=prime)
            record_manifest(plan.dest, plan.manifest)
            if plan.after_install:
                plan.after_install(store)
        if opts.swarm.seed:
            from ._swarm import seed_after_pull

            yield from seed_after_pull(plan, opts)
    finally:
        for s in plan.sources:
            s.close()
        for sw in plan.swarms:
            sw.close()
        if exp and scheds:
            for st in scheds[0].sources():
                if st.ewma_rate and not st.banned:
                    exp.update(st.info.name, st.info.host, st.ewma_rate, st.ttfb)
            exp.save()
