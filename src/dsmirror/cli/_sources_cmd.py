"""``dsmirror sources REF``: every candidate source, probed and ranked — the first diagnostic."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from dsmirror._core.units import format_rate
from dsmirror.cli._app import (
    JsonOpt,
    MirrorsOpt,
    NoDefaultCatalogOpt,
    app,
    console,
    load_catalog_from_options,
)
from dsmirror.cli._console import styled


@app.command("sources")
def sources_cmd(
    ref: Annotated[str, typer.Argument(help="What you would pull: manifest, URL, hf://, ollama://, alias.")],
    mirrors: MirrorsOpt = None,
    no_default_catalog: NoDefaultCatalogOpt = False,
    region: Annotated[str | None, typer.Option("--region", help="Prefer mirrors of this region.")] = None,
    prefer: Annotated[str, typer.Option("--prefer", help="auto, mirror, official or p2p.")] = "auto",
    only: Annotated[list[str] | None, typer.Option("--only")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Probe every candidate source of REF and show latency, throughput, status and rank."""
    from rich.table import Table

    from dsmirror._fetch.source import Source
    from dsmirror._rank.probe import Experience, probe_sources, rank
    from dsmirror._resolve.plan import PullOptions
    from dsmirror._resolve.resolve import resolve

    settings, catalog = load_catalog_from_options(mirrors, no_default_catalog)
    opts = PullOptions(region=region, prefer=prefer, only=tuple(only or ()), exclude=tuple(exclude or ()))
    plan = resolve(ref, catalog, settings, opts)
    stream = [s for s in plan.sources if isinstance(s, Source)]
    try:
        probes = probe_sources(stream, plan.manifest)
    finally:
        for s in plan.sources:
            s.close()
    exp = Experience(settings.state_dir / "sources.json")
    hosts = {s.name: s.info.host for s in stream}
    probes = [
        dataclasses.replace(p, prior_rate=(exp.get(p.name, hosts[p.name]) or {}).get("rate")) for p in probes
    ]
    for p in probes:
        if p.rate and p.status == "ok":
            exp.update(p.name, hosts[p.name], p.rate, p.ttfb or 0.0)
    exp.save()
    ranked = rank(probes, prefer=prefer, region=region)

    def ms(v: float | None) -> str:
        return f"{v * 1000:.0f} ms" if v is not None else "-"

    if json_out:
        console.print_json(json.dumps([dataclasses.asdict(p) for p in ranked]))
        return
    t = Table(title=f"sources for {ref}")
    for col in ("rank", "source", "kind", "region", "connect", "first byte", "throughput", "status", "note"):
        t.add_column(
            col, justify="right" if col in ("rank", "connect", "first byte", "throughput") else "left"
        )
    for p in ranked:
        style = {"ok": "green", "slow": "yellow"}.get(p.status, "red")
        t.add_row(
            str(p.rank),
            p.name + (" (official)" if p.official else ""),
            p.kind,
            p.region,
            ms(p.connect),
            ms(p.ttfb),
            format_rate(p.rate) if p.rate else "-",
            styled(p.status, style),
            (p.error or "")[:60],
        )
    console.print(t)
