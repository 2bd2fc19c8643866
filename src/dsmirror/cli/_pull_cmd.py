"""``dsmirror pull REF``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._pull import PullOptions, pull
from .._units import parse_size
from ._app import JsonOpt, MirrorsOpt, NoDefaultCatalogOpt, app, console, load_catalog_from_options
from ._render import render_human, render_json


@app.command("pull")
def pull_cmd(
    ref: Annotated[
        str, typer.Argument(help="Manifest file or URL, hf://org/repo, ollama://name:tag, or an alias.")
    ],
    dest: Annotated[
        Path | None, typer.Option("--dest", "-d", help="Destination folder (format dir).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="dir, hf (Hugging Face cache) or ollama (store).")
    ] = "dir",
    mirrors: MirrorsOpt = None,
    no_default_catalog: NoDefaultCatalogOpt = False,
    manifest_sha256: Annotated[
        str | None, typer.Option("--manifest-sha256", help="Refuse a manifest whose SHA-256 differs.")
    ] = None,
    max_rate: Annotated[str | None, typer.Option("--max-rate", help="Bandwidth cap, e.g. 20MB/s.")] = None,
    connections: Annotated[
        int | None, typer.Option("--connections", "-x", min=1, max=64, help="Connections per source.")
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Use only this mirror (repeatable).")
    ] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Never use this mirror.")] = None,
    region: Annotated[str | None, typer.Option("--region", help="Prefer mirrors of this region.")] = None,
    prefer: Annotated[str, typer.Option("--prefer", help="auto, mirror, official or p2p.")] = "auto",
    give_up_after: Annotated[
        float, typer.Option("--give-up-after", help="Seconds without any progress before failing.")
    ] = 120.0,
    json_out: JsonOpt = False,
) -> None:
    """Download a model from every good source at once, verifying every piece; resumable."""
    settings, catalog = load_catalog_from_options(mirrors, no_default_catalog)
    opts = PullOptions(
        dest=dest,
        format=fmt,
        manifest_sha256=manifest_sha256,
        max_rate=parse_size(max_rate) if max_rate else None,
        connections=connections,
        only=tuple(only or ()),
        exclude=tuple(exclude or ()),
        region=region,
        prefer=prefer,
        give_up_after=give_up_after,
    )
    events = pull(ref, catalog=catalog, settings=settings, options=opts)
    if json_out:
        render_json(events)
    else:
        render_human(events, console)
