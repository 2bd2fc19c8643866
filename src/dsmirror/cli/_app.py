"""The typer application object, ``--version``, and options shared by several commands.

Help is tidied once for every command (``_HelpGroup``): typer shows a type after each option, also
``<bool>`` after a flag, which takes no value, and ``<list[Path]>`` after a repeatable option; a
flag shows none, a repeatable option its element's type (``<path>``, ``<str>``).

Start-up: typer converts every option's value with a pydantic ``TypeAdapter`` built on first use,
which imports pydantic (about 70 modules, a fifth of ``dsmirror pull``'s time from exec to its
first request). The options of dsmirror's commands have plain types (str, Path, int and float
with bounds, lists of them); ``_PlainCoercion`` converts a well-formed value of those itself, the
way the adapter does, and hands anything else (a malformed number, a value out of range) to
typer's own coercion, so every error message is typer's. tests/test_startup.py checks both give
the same results.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer.core import TyperGroup, TyperOption

if TYPE_CHECKING:
    from typer._click import Command, Context, HelpFormatter

    from dsmirror.cli._textconsole import TextConsole

_LIST_TYPE = re.compile(r"<list\[(\w+)\]>")
_INT = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,17})?")
_NO = object()  # "not a plain value": typer's coercion decides


class _PlainCoercion:
    """typer's runtime coercion of one parameter (``coerce``), for plain types without pydantic.

    A value this cannot convert exactly as typer's pydantic adapter would goes to that adapter
    (``_typer``), built then.
    """

    def __init__(self, param: Any) -> None:
        self.param = param
        self.info = param.type_descriptor.parameter_info
        self._real: Any = None

    @staticmethod
    def applies(param: Any) -> bool:
        desc = getattr(param, "type_descriptor", None)
        if desc is None or getattr(param, "_runtime_param", _NO) is not None:
            return False
        info = desc.parameter_info
        if desc.file_annotation is not None or info.parser is not None or info.clamp or desc.is_choice:
            return False
        ann = desc.annotation
        if desc.is_list:
            args: tuple[Any, ...] = getattr(ann, "__args__", ())
            if len(args) != 1:
                return False
            ann = args[0]
        if ann is Path:
            return info.path_type is None and not info.allow_dash
        return ann in (str, int, float, bool)

    def _typer(self) -> Any:
        if self._real is None:
            from typer._coercion import build_runtime_param

            self._real = build_runtime_param(self.param.type_descriptor)
        return self._real

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        desc = self.param.type_descriptor
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        if desc.is_list and isinstance(value, (list, tuple)):
            (ann,) = desc.annotation.__args__
            items = [self._one(ann, v, param, ctx) for v in value]
            if all(i is not _NO for i in items):
                return items
        elif not desc.is_list and not multi:
            one = self._one(desc.annotation, value, param, ctx)
            if one is not _NO:
                return one
        return self._typer().coerce(value, param=param, ctx=ctx)

    def _one(self, ann: Any, value: Any, param: Any, ctx: Any) -> Any:
        if ann is str:
            return value if isinstance(value, str) else _NO
        if ann is bool:
            return value if isinstance(value, bool) else _NO
        if ann is Path:
            if (isinstance(value, str) and value) or isinstance(value, Path):
                from typer._param_types import coerce_cli_path

                return coerce_cli_path(Path(value), self.info, path_type=Path, param=param, ctx=ctx)
            return _NO
        if isinstance(value, bool):
            return _NO
        if ann is int and isinstance(value, str) and _INT.fullmatch(value):
            n: float = int(value)
        elif ann is float and isinstance(value, str) and _FLOAT.fullmatch(value):
            n = float(value)
        elif (ann is int and isinstance(value, int)) or (ann is float and isinstance(value, (int, float))):
            n = ann(value)
        else:
            return _NO
        lo, hi = self.info.min, self.info.max
        if not math.isfinite(n) or (lo is not None and n < lo) or (hi is not None and n > hi):
            return _NO
        return n


def _plain_coercion(command: Command, ctx: Context) -> None:
    """Give ``command``'s parameters of plain types a coercion without pydantic (``_PlainCoercion``)."""
    params: list[Any] = [*command.params, command.get_help_option(ctx)]
    for param in params:
        if _PlainCoercion.applies(param):
            param._runtime_param = _PlainCoercion(param)


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
            _plain_coercion(command, ctx)
        return command

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        _plain_coercion(self, ctx)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        _tidy_help(self, ctx)
        super().format_help(ctx, formatter)


class _LazyConsole:
    """A ``TextConsole`` made when first used (rich is about 40 modules: a ``--json`` pull or a
    ``seed --json`` never shows anything through it). Attributes are the console's, read and set."""

    def __init__(self, **kwargs: Any) -> None:
        object.__setattr__(self, "_kwargs", kwargs)
        object.__setattr__(self, "_made", None)

    def _console(self) -> TextConsole:
        made: TextConsole | None = object.__getattribute__(self, "_made")
        if made is None:
            from dsmirror.cli._textconsole import TextConsole

            made = TextConsole(**object.__getattribute__(self, "_kwargs"))
            object.__setattr__(self, "_made", made)
        return made

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._console(), name, value)


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
console = cast("TextConsole", _LazyConsole(soft_wrap=True))
err_console = cast("TextConsole", _LazyConsole(stderr=True, soft_wrap=True))


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
TorrentFormatOpt = Annotated[
    str,
    typer.Option(
        "--torrent-format",
        help="hybrid (BitTorrent v1+v2, default) or v1 (for clients that cannot read hybrid: aria2, "
        "transmission 3).",
    ),
]


#: Set by ``dsmirror.cli.main``: this process is dsmirror's own.
_PROGRAM: list[bool] = []


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection inside, and what was made inside frozen after it (``gc.freeze``:
    never collected, nor walked by later collections): for a command's import of the library,
    which makes objects that live as long as the process (``dsmirror.cli`` does likewise for
    its own import). Only in dsmirror's own process (``main`` ran): a program that runs a
    command in its own process (typer's CliRunner) keeps its collector as it is."""
    if not _PROGRAM or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # else the first allocation after enable() collects all of it at once
        gc.enable()


def load_catalog_from_options(mirrors: list[Path] | None, no_default: bool):  # type: ignore[no-untyped-def]
    from dsmirror._core.settings import Settings
    from dsmirror._formats.catalog import load_default_catalog

    settings = Settings.from_env()
    return settings, load_default_catalog(settings.env, list(mirrors or ()), replace=no_default)
