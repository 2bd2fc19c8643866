"""Rendering typed pull events: a live rich display on a terminal, plain lines otherwise, or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from dsmirror._core.events import (
    Event,
    PieceRejected,
    PlanNotes,
    Progress,
    PullFinished,
    PullStarted,
    SourceDropped,
    SourceTrouble,
    event_to_dict,
)
from dsmirror._core.units import format_bytes, format_rate
from dsmirror.cli._console import safe_text, styled

if TYPE_CHECKING:
    from rich.console import Console, Group

# rich is imported by the functions that show something: a --json pull does not load it.


def render_json(events: Iterable[Event]) -> PullFinished | None:
    last = None
    for ev in events:
        sys.stdout.write(json.dumps(event_to_dict(ev), default=str) + "\n")
        sys.stdout.flush()
        if isinstance(ev, PullFinished):
            last = ev
    return last


def _print_notes(ev: PlanNotes, console: Console) -> None:
    from rich.text import Text

    for note in ev.notes:
        # soft_wrap: one line each, also when rich would wrap a pipe's output at 80 columns.
        console.print(Text.assemble(("note ", "dim"), note), soft_wrap=True)


def print_notes(events: Iterable[Event], console: Console) -> Iterator[Event]:
    """Print the resolver's notes (one line each) as they pass; every event goes on unchanged."""
    for ev in events:
        if isinstance(ev, PlanNotes):
            _print_notes(ev, console)
        yield ev


def eta_text(s: float | None) -> str:
    """Seconds left as ``MM:SS`` or ``H:MM:SS`` (``--:--`` when not known)."""
    if s is None:
        return "--:--"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _view(p: Progress, name: str) -> Group:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    frac = p.verified_bytes / p.total_bytes if p.total_bytes else 1.0
    head = Text.assemble(
        (f"{safe_text(name)}  ", "bold"),  # a Text in a Live view: not sanitized by print
        f"{format_bytes(p.verified_bytes)} / {format_bytes(p.total_bytes)} verified  ",
        (f"{frac * 100:5.1f}%  ", "bold green"),
        f"{format_rate(p.rate)}  ETA {eta_text(p.eta)}",
    )
    t = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    for col in ("source", "kind", "region", "rate", "delivered", "conns", "status"):
        t.add_column(col, justify="right" if col in ("rate", "delivered", "conns") else "left")
    for s in sorted(p.sources, key=lambda s: -s.rate):
        style = {"ok": "green", "corrupt": "red", "failing": "red"}.get(s.status, "yellow")
        t.add_row(
            s.name,
            s.kind,
            s.region,
            format_rate(s.rate),
            format_bytes(s.delivered),
            str(s.connections),
            Text(s.status, style=style),
        )
    return Group(head, ProgressBar(total=p.total_bytes or 1, completed=p.verified_bytes), t)


def render_human(events: Iterable[Event], console: Console) -> PullFinished | None:
    from rich.live import Live
    from rich.text import Text

    last: PullFinished | None = None
    name = ""
    live: Live | None = None
    plain_at = 0.0
    try:
        for ev in events:
            if isinstance(ev, PlanNotes):
                _print_notes(ev, console)
            elif isinstance(ev, PullStarted):
                name = ev.name
                console.print(
                    styled(ev.name, "bold"),
                    Text(
                        f": {ev.pieces} pieces of {format_bytes(ev.piece_size)}, "
                        f"{format_bytes(ev.total_bytes)}; {format_bytes(ev.verified_bytes)} already verified"
                        + (f" ({ev.reverified_pieces} pieces re-checked)" if ev.reverified_pieces else "")
                        + f"; sources: {', '.join(ev.sources) or '-'}"
                    ),
                    sep="",
                    highlight=False,
                )
                if console.is_terminal:
                    live = Live(console=console, refresh_per_second=4, transient=False)
                    live.start()
            elif isinstance(ev, Progress):
                if live is not None:
                    live.update(_view(ev, name))
                elif time.monotonic() - plain_at > 2 or ev.verified_bytes == ev.total_bytes:
                    plain_at = time.monotonic()
                    console.print(
                        f"{format_bytes(ev.verified_bytes)} / {format_bytes(ev.total_bytes)} verified, "
                        f"{format_rate(ev.rate)}, ETA {eta_text(ev.eta)}; "
                        + ", ".join(f"{s.name} {format_rate(s.rate)} {s.status}" for s in ev.sources),
                        highlight=False,
                    )
            elif isinstance(ev, PieceRejected):
                console.print(styled("rejected", "red"), ev.reason, highlight=False)
            elif isinstance(ev, SourceDropped):
                console.print(styled("dropped", "red"), f"{ev.source}: {ev.reason}", highlight=False)
            elif isinstance(ev, SourceTrouble):
                retry = f" (retry in {ev.retry_in:.1f} s)" if ev.retry_in else ""
                console.print(styled(ev.source, "yellow"), f": {ev.message}{retry}", sep="", highlight=False)
            elif isinstance(ev, PullFinished):
                last = ev
    finally:
        if live is not None:
            live.stop()
    if last is not None:
        rate = last.downloaded_bytes / last.seconds if last.seconds > 0 else 0.0
        by = ", ".join(f"{k} {format_bytes(v)}" for k, v in last.delivered_by_source.items() if v)
        console.print(
            styled("done", "bold green"),
            f"{last.name} -> {last.dest}: {format_bytes(last.total_bytes)} verified "
            f"({format_bytes(last.downloaded_bytes)} downloaded at {format_rate(rate)}, "
            f"{format_bytes(last.reused_bytes)} reused, {format_bytes(last.redundant_bytes)} redundant, "
            f"{format_bytes(last.corrupt_bytes)} rejected) in {last.seconds:.1f} s"
            + (f"; from {by}" if by else ""),
            highlight=False,
        )
    return last
