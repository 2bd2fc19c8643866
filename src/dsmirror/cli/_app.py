"""The typer application object, ``--version``, and options shared by several commands.

Help is tidied once for every command (``_HelpGroup``): typer shows a type after each option, also
``<bool>`` after a flag, which takes no value, and ``<list[Path]>`` after a repeatable option; a
flag shows none, a repeatable option its element's type (``<path>``, ``<str>``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup, TyperOption

from dsmirror.cli._console import TextConsole

if TYPE_CHECKING:
    from typer._click import Command, Context, HelpFormatter

_LIST_TYPE = re.compile(r"<list\[(\w+)\]>")


def _tidy_help(command: Command, ctx: Context) -> None:
    """Give ``command``'s flags no type and its repeatable options their element's (and its subcommands')."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if not isinstance(param, TyperOption) or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        elif param.type_descriptor.is_list and (m := _LIST_TYPE.fullmatch(param.display_type(ctx))):
            param.metavar = f"<{m.group(1).lower()}>"
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            _tidy_help(sub, ctx)


class _HelpGroup(TyperGroup):
    """The root group: every command's help tidied before it is shown (``_tidy_help``)."""

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _tidy_help(command, ctx)
        return command

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        _tidy_help(self, ctx)
        super().format_help(ctx, formatter)


app = typer.Typer(
    name="dsmirror",
    cls=_HelpGroup,
    help="Verified, resumable, multi-source downloads of very large model files.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# soft_wrap: a message is one line, whatever the terminal width (and in pipes and logs). Text
# consoles: what manifests, catalogs, servers and paths say is shown as text (see _console).
console = TextConsole(soft_wrap=True)
err_console = TextConsole(stderr=True, soft_wrap=True)


def _print_version(value: bool) -> None:
    if value:
        from dsmirror import __version__

        console.print(f"dsmirror {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Verified, resumable, multi-source downloads of very large model files."""


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
