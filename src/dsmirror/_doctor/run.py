"""The whole ``dsmirror doctor`` run: resolve the model (with a REF), check the mirrors and this
machine, and attach the advice."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dsmirror._core.errors import DsmirrorError
from dsmirror._core.settings import Settings
from dsmirror._doctor.advice import advise
from dsmirror._doctor.machine import check_disk, check_store, check_torrent
from dsmirror._doctor.mirrors import check_mirrors, in_thread
from dsmirror._doctor.proxies import proxy_env
from dsmirror._doctor.report import DoctorConfig, DoctorReport, TorrentCheck
from dsmirror._formats.catalog import Catalog

__all__ = ["run_doctor"]


def run_doctor(
    catalog: Catalog,
    settings: Settings,
    *,
    ref: str | None = None,
    dest: Path | None = None,
    config: DoctorConfig | None = None,
    listen: str | None = None,
    lsd: bool | None = None,
    dht: bool | None = None,
) -> DoctorReport:
    """Run every check (bounded in time) and return the report with its advice.

    ``listen``, ``lsd`` and ``dht`` are the BitTorrent settings a pull would use (the swarm's
    defaults when not given).
    """
    from dsmirror._fetch.swarm.config import SwarmConfig

    swarm = SwarmConfig()
    cfg = config or DoctorConfig()
    t0 = time.monotonic()
    notes: list[str] = []
    model = _Model(None, None, dest, {})
    if ref is not None:
        model = _resolve_model(ref, catalog, settings, dest, cfg, notes)
    mirrors = catalog.mirrors_of_kind()
    checks = check_mirrors(mirrors, urls=model.urls, config=cfg, env=settings.env)
    skews = [c.skew for c in checks if c.skew is not None]
    torrent: TorrentCheck | None = None
    try:
        torrent = check_torrent(
            listen or swarm.listen, swarm.lsd if lsd is None else lsd, swarm.dht if dht is None else dht
        )
    except DsmirrorError as exc:
        notes.append(f"BitTorrent listen address: {exc.message}")
    report = DoctorReport(
        ref=ref,
        model=model.name,
        model_size=model.size,
        mirrors=tuple(checks),
        proxies=proxy_env(settings.env),
        clock_skew=statistics.median(skews) if skews else None,
        disk=check_disk(model.dest or Path.cwd(), model.size),
        stores=(
            check_store("Ollama store", settings.ollama_models),
            check_store("Hugging Face cache", settings.hf_cache),
        ),
        torrent=torrent,
        seconds=time.monotonic() - t0,
        notes=tuple(notes),
    )
    return dataclasses.replace(report, advice=tuple(advise(report)))


@dataclass(frozen=True)
class _Model:
    """What resolving the REF told: the model, its size, where it goes, and the URL to check on
    each HTTP mirror (its largest file there, through the URL mapping a pull uses)."""

    name: str | None
    size: int | None
    dest: Path | None
    urls: dict[str, str]


def _resolve_model(
    ref: str, catalog: Catalog, settings: Settings, dest: Path | None, cfg: DoctorConfig, notes: list[str]
) -> _Model:
    """Resolve ``ref`` as a pull would (within ``deadline``); on failure, say so in ``notes``."""
    from dsmirror._fetch.http import HttpSource
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._resolve.plan import PullOptions
    from dsmirror._resolve.resolve import resolve

    try:
        # No swarm: only the HTTP sources' URLs are wanted, and no BitTorrent session is started.
        opts = PullOptions(dest=dest, swarm=SwarmConfig(enabled=False))
        plan = in_thread(lambda: resolve(ref, catalog, settings, opts), cfg.deadline)
    except TimeoutError:
        notes.append(f"resolving {ref} took over {cfg.deadline:.0f} s; checked the mirrors' own URLs")
        return _Model(None, None, dest, {})
    except DsmirrorError as exc:
        notes.append(f"cannot resolve {ref}: {exc.message}")
        return _Model(None, None, dest, {})
    urls: dict[str, str] = {}
    try:
        m = plan.manifest
        files = [f for f in m.files if f.size]
        for s in plan.sources:
            if isinstance(s, HttpSource) and files:
                have = [f for f in files if s.has_file(f)]
                if have:
                    urls[s.name] = s.url_for(max(have, key=lambda f: f.size))
    finally:
        for s in [*plan.sources, *plan.swarms]:
            with contextlib.suppress(Exception):
                s.close()
    return _Model(m.name, m.total_size, dest or plan.dest, urls)
