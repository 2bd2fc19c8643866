"""``dsmirror demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsmirror._core.units import parse_size
from dsmirror.cli._app import JsonOpt, app, console
from dsmirror.cli._console import styled


@app.command("demo")
def demo_cmd(
    size: Annotated[str, typer.Option("--size", help="Size of the generated model.")] = "256MiB",
    keep: Annotated[Path | None, typer.Option("--keep", help="Keep the pulled model in this folder.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Pull a generated model from local mirrors (fast, slow, corrupting) on 127.0.0.x, end to end."""
    from dsmirror._demo import demo
    from dsmirror.cli._render import render_human, render_json

    console.print(
        styled("dsmirror demo", "bold"),
        ": three local mirrors on 127.0.0.1-3 (fast, slow and far, corrupting); "
        "pulling a generated model from all of them at once, every piece checked.",
        sep="",
        highlight=False,
    )
    events = demo(parse_size(size), keep)
    if json_out:
        render_json(events)
    else:
        render_human(events, console)
        console.print(styled("verified again from disk: every file matches the manifest", "bold green"))
