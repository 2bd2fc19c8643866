"""The typer application object and options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsmirror.cli._console import TextConsole

app = typer.Typer(
    name="dsmirror",
    help="Verified, resumable, multi-source downloads of very large model files.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# soft_wrap: a message is one line, whatever the terminal width (and in pipes and logs). Text
# consoles: what manifests, catalogs, servers and paths say is shown as text (see _console).
console = TextConsole(soft_wrap=True)
err_console = TextConsole(stderr=True, soft_wrap=True)

MirrorsOpt = Annotated[
    list[Path] | None,
    typer.Option("--mirrors", help="Extra catalog file(s) of mirrors (YAML); override the defaults."),
]
NoDefaultCatalogOpt = Annotated[
    bool,
    typer.Option(
        "--no-default-catalog", help="Use only --mirrors files: not the shipped or the user catalog."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write one JSON event per line instead of a display.")]


def load_catalog_from_options(mirrors: list[Path] | None, no_default: bool):  # type: ignore[no-untyped-def]
    from dsmirror._core.settings import Settings
    from dsmirror._formats.catalog import load_default_catalog

    settings = Settings.from_env()
    return settings, load_default_catalog(settings.env, list(mirrors or ()), replace=no_default)
