"""``dsmirror ls`` and ``dsmirror rm``: installed models in the HF cache, the Ollama store and folders."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated

import typer

from dsmirror._core.settings import Settings
from dsmirror._core.units import format_bytes
from dsmirror.cli._app import app, console
from dsmirror.cli._console import safe_text

_STYLE = {"verified": "green", "unverified": "yellow", "corrupt": "red", "incomplete": "red"}


@app.command("ls")
def ls_cmd(
    check: Annotated[
        bool, typer.Option("--check", help="Hash every file now instead of trusting install records (slow).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per model.")] = False,
) -> None:
    """List installed models: where they are, their size, and whether they are verified."""
    from rich.table import Table
    from rich.text import Text

    from dsmirror._install.listing import list_installed

    models = list_installed(Settings.from_env(), check=check)
    if json_out:
        for m in models:
            console.print_json(json.dumps(dataclasses.asdict(m), default=str))
        return
    if not models:
        console.print("no models installed", highlight=False)
        return
    t = Table(box=None, pad_edge=False, header_style="dim")
    for col in ("kind", "model", "size", "files", "status", "where"):
        t.add_column(col, justify="right" if col in ("size", "files") else "left", overflow="fold")
    for m in models:
        status = Text.assemble(
            (m.status, _STYLE.get(m.status, "white")), safe_text(f" ({m.detail})" if m.detail else "")
        )
        # What `dsmirror rm` accepts: hf://org/name@rev, an Ollama name, or the folder (where).
        model = m.ref if m.kind == "hf" else m.name
        t.add_row(m.kind, model, format_bytes(m.size), str(m.files), status, str(m.where))
    console.print(t)


@app.command("rm")
def rm_cmd(
    target: Annotated[
        str,
        typer.Argument(
            help="hf://org/name[@revision], ollama://..., name:tag, or a folder (see `dsmirror ls`)."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove an installed model; blobs another model still uses are kept. Never follows symlinks."""
    from dsmirror._install.removal import remove_installed

    r = remove_installed(Settings.from_env(), target, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for p in r.removed:
        console.print(f"{verb} {p}", highlight=False)
    for p in r.kept_shared:
        console.print(f"kept {p} (used by another model)", highlight=False)
    console.print(f"{verb} {len(r.removed)} entries, {format_bytes(r.freed)} freed", highlight=False)
