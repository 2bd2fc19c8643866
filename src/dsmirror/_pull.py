"""``dsmirror pull``: turn a REF into a manifest and sources, then fetch it into a store.

The pieces: ``resolve`` (REF + catalog -> a ``PullPlan``: manifest, sources, destination) and
``pull`` (runs the plan: lock the store, fetch, install, yield events). The plan types and
the resolvers live below this module, in ``dsmirror._resolve``.

A pull returns (as its generator's value) a :class:`Pulled`: what it put in place, for a step
after it. ``pull --seed`` is such a step, above this module (``dsmirror._share.seed``); with
``SwarmConfig.seed`` the pull leaves its BitTorrent session open for it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dsmirror._core.clock import Clock
from dsmirror._core.events import Event, PlanNotes
from dsmirror._core.settings import Settings
from dsmirror._fetch.broker import SwarmSource
from dsmirror._fetch.engine import EngineConfig, fetch
from dsmirror._fetch.source import Source
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._formats.catalog import Catalog
from dsmirror._journal.store import Store
from dsmirror._rank.probe import Experience
from dsmirror._resolve.plan import PullOptions, PullPlan
from dsmirror._resolve.resolve import resolve
from dsmirror._schedule.scheduler import Scheduler, SchedulerConfig

if TYPE_CHECKING:
    from dsmirror._fetch.swarm.only import InstalledTorrent

__all__ = ["PullOptions", "PullPlan", "Pulled", "pull", "resolve", "run_plan"]


@dataclass(frozen=True)
class Pulled:
    """What a pull put in place: its plan, the swarm settings it ran with, and for a pull from
    peers alone (``plan.swarm_only``) what that installed."""

    plan: PullPlan
    swarm: SwarmConfig
    torrent: InstalledTorrent | None = None


def pull(
    ref: str,
    *,
    catalog: Catalog,
    settings: Settings,
    options: PullOptions | None = None,
    clock: Clock | None = None,
) -> Generator[Event, None, Pulled | None]:
    """Resolve ``ref`` and fetch it; yields typed events; raises DsmirrorError subclasses.

    Returns what was pulled (None for a dry run).
    """
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
    return (yield from run_plan(plan, opts, clock=clock, settings=settings))


def run_plan(
    plan: PullPlan, opts: PullOptions, *, clock: Clock | None = None, settings: Settings | None = None
) -> Generator[Event, None, Pulled | None]:
    """Run ``plan``: yields its events; returns what was pulled (None for a dry run)."""
    if plan.swarm_only is not None:
        rate = int(opts.max_rate) if opts.max_rate else opts.swarm.download_rate
        config = replace(opts.swarm, download_rate=rate)  # --max-rate
        installed = yield from plan.swarm_only.run(
            config, give_up_after=opts.give_up_after, settings=settings, clock=clock
        )
        return Pulled(plan, config, installed)
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

    # dsmirror._fetch.reuse is imported where it is used: a pull without reuse needs none of it
    # before its pieces are fetched (~10 ms of start-up).
    roots: list[Path] = []
    if opts.reuse:
        from dsmirror._fetch.reuse import reuse_roots

        roots = reuse_roots(plan.dest, opts.reuse_from, settings)
    same_path = [plan.dest, *opts.reuse_from]
    try:
        if opts.dry_run:
            from dsmirror._fetch.reuse import LocalIndex, plan_dry_run

            index = (
                LocalIndex.build(plan.manifest, plan.dest, roots, settings, same_path=same_path)
                if opts.reuse
                else None
            )
            yield plan_dry_run(plan.manifest, plan.dest, [*plan.sources, *plan.swarms], index)
            return None
        with Store.open(plan.dest, plan.manifest) as store:
            if store.complete() and (store.area / "bt").exists():
                # libtorrent's copy left by a process killed after its install (a whole copy of
                # the model that nothing reads again): see ``dsmirror._fetch.swarm.resume``.
                # Imported here: a pull without a swarm does not load libtorrent.
                from dsmirror._fetch.swarm.resume import drop_stale_copy

                drop_stale_copy(store.area)
            if opts.reuse and not store.complete():
                # Before fetch: it counts what is verified when it starts as reused bytes.
                from dsmirror._fetch.reuse import LocalIndex, reuse_local

                index = LocalIndex.build(plan.manifest, plan.dest, roots, settings, same_path=same_path)
                yield from reuse_local(store, index)
            sources: list[Source | SwarmSource] = [*plan.sources, *plan.swarms]

            # The manifest record `dsmirror seed DEST` reads is written before PullFinished (a
            # pull stopped right after that event must leave it), and the swarms are closed
            # below, after the install hook (a finished one may linger for LAN peers, see
            # "Leaving" in dsmirror._fetch.swarm.source).
            def record_installed() -> None:
                from dsmirror._fetch.reuse import record_manifest  # not before the first request

                record_manifest(plan.dest, plan.manifest)

            yield from fetch(
                plan.manifest,
                sources,
                store,
                config=cfg,
                clock=clock,
                on_sources=prime,
                close_swarms=False,
                installed=record_installed,
            )
            if plan.after_install:
                plan.after_install(store)
        return Pulled(plan, opts.swarm)
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
