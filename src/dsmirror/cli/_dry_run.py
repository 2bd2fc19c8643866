"""Rendering ``pull --dry-run``: per file, what is present, reused from where, fetched from whom."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from dsmirror._core.events import Event
from dsmirror._core.units import format_bytes
from dsmirror._fetch.reuse import PullDryRun
from dsmirror.cli._console import styled

if TYPE_CHECKING:
    from rich.console import Console


def render_dry_run(events: Iterable[Event], console: Console) -> None:
    from rich.table import Table

    for ev in events:
        if not isinstance(ev, PullDryRun):
            continue
        console.print(
            styled(ev.name, "bold"),
            f"(manifest {ev.manifest_sha256[:16]}…) into {ev.dest}: "
            f"{format_bytes(ev.total_bytes)}; dry run, nothing is fetched or written",
            highlight=False,
        )
        t = Table(box=None, pad_edge=False, header_style="dim")
        for col in ("file", "size", "present", "reuse", "fetch", "reuse from", "fetch from"):
            t.add_column(col, justify="right" if col in ("size", "present", "reuse", "fetch") else "left")
        for f in ev.files:
            t.add_row(
                f.path,
                format_bytes(f.size),
                format_bytes(f.present_bytes) if f.present_bytes else "-",
                format_bytes(f.reuse_bytes) if f.reuse_bytes else "-",
                format_bytes(f.fetch_bytes) if f.fetch_bytes else "-",
                ", ".join(f"{o} ({format_bytes(n)})" for o, n in f.reuse_from.items()) or "-",
                ", ".join(f.fetch_from) if f.fetch_bytes else "-",
            )
        console.print(t)
        sources = ", ".join(f"{s['name']} ({s['kind']}, {s['host']}, {s['region']})" for s in ev.sources)
        console.print(
            f"would fetch {format_bytes(ev.fetch_bytes)}, reuse {format_bytes(ev.reuse_bytes)} from local "
            f"files, keep {format_bytes(ev.present_bytes)} already present"
            + (f"; sources, ranked when the pull starts: {sources}" if ev.fetch_bytes else ""),
            highlight=False,
        )
