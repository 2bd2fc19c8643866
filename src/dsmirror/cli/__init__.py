"""The ``dsmirror`` command line: a thin layer of typer commands over the library.

Each command lives in its own module and registers itself on ``app``. Commands parse options, build
settings, call one library function and render the typed events it yields. ``main`` is the one place
that turns a ``DsmirrorError`` into a one-line message, a hint and the error's exit code.

Exit codes: 0 ok, 1 unexpected, 2 bad usage, 3 integrity failure, 4 no usable source,
5 local storage error, 6 already in progress, 7 invalid input file (manifest, catalog), 130 interrupted.
"""

from __future__ import annotations

import atexit
import copy
import gc
import importlib
import sys
from collections.abc import Iterable

# Start-up makes some 37,000 objects the collector tracks, which live as long as the process
# (modules, classes, functions), and next to no garbage; the collector's passes over them while
# the CLI and then a command's library are imported cost ~5 and ~7 ms (13 ms of the ~0.3 s from
# exec to a pull's first request), and later full collections walk them again. Paused meanwhile, and what
# was made is then frozen (never walked again): here to the end of this module, and around the
# library import of ``dsmirror pull`` (``_app.collector_paused``).
if _collecting := gc.isenabled():
    gc.disable()

import typer

# httpx's package imports its own command line (httpx._main: click, rich.syntax, pygments; a tenth
# of what a pull loads before its first request) whenever click is installed, and falls back to a
# stub when that import fails. dsmirror's process never runs httpx's command line: take the stub.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from dsmirror._core.errors import DsmirrorError
from dsmirror.cli import _app, _signals
from dsmirror.cli._app import err_console

__all__ = ["app", "main"]

if _collecting:
    gc.freeze()  # else the first allocation after enable() collects all of it at once
    gc.enable()

#: Each command's module, which registers it on ``_app.app`` when imported. ``main`` imports the
#: one of the command it runs (the others are ~10 ms of a pull's start-up); ``app``, help and a
#: mistyped name import them all, in this order (the order ``dsmirror --help`` lists them in).
COMMANDS = {
    "export": "_bundle_cmd",
    "import": "_bundle_cmd",
    "demo": "_demo_cmd",
    "doctor": "_doctor_cmd",
    "ls": "_ls_cmd",
    "rm": "_ls_cmd",
    "manifest": "_manifest_cmd",
    "pull": "_pull_cmd",
    "serve": "_serve_cmd",
    "sources": "_sources_cmd",
    "torrent": "_torrent_cmd",
    "verify": "_verify_cmd",
    "seed": "_seed_cmd",
}


def _register(names: Iterable[str]) -> None:
    for module in dict.fromkeys(COMMANDS[n] for n in names):
        importlib.import_module(f"dsmirror.cli.{module}")


def __getattr__(name: str) -> typer.Typer:
    """``dsmirror.cli.app``: the whole application, every command registered."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _register(COMMANDS)
    return _app.app


def _app_for(argv: list[str]) -> typer.Typer:
    """The application with only the command ``argv`` runs, or the whole one when argv names none.

    typer builds every command (its click object, every option's type from the signature) before
    it runs one: 20-30 ms here, three quarters of them for the commands not run. The others still
    show in ``dsmirror --help`` and a mistyped name gets the whole list.
    """
    name = argv[1] if len(argv) > 1 else None
    if name not in COMMANDS:
        return __getattr__("app")
    _register([name])
    app = _app.app
    commands = [c for c in app.registered_commands if name is not None and c.name == name]
    groups = [g for g in app.registered_groups if name is not None and g.name == name]
    if not commands and not groups:
        return __getattr__("app")
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return only


def main() -> None:
    _signals.install()  # Ctrl-C and SIGTERM raise Interrupted, never inside a line of output
    # The interpreter's exit collects garbage while it tears the modules down: after a pull, 57-86 ms
    # of CPU (perf: gc_collect_main, visit_decref), a third of what dsmirror pull spends after its
    # last byte (bench_mirrors). Everything is closed by then (the store's files synced and renamed,
    # sockets shut); the heap is simply freed with the process. Frozen at exit, the last collections
    # skip it: 11-15 ms. At exit only, so a caller of main() in its own process is not affected: what
    # start-up froze (above, and ``_app.collector_paused``) is unfrozen when main() returns.
    atexit.register(gc.freeze)
    _app._PROGRAM.append(True)  # a command's library import may pause the collector
    try:
        # The name usage lines show, however the program was started (``python -m``, ``-c``).
        with _app.collector_paused():  # the command's module: made for the process's lifetime
            command = _app_for(sys.argv)
        command(standalone_mode=True, prog_name="dsmirror")
    except DsmirrorError as exc:
        from rich.text import Text

        err_console.print(Text.assemble(("dsmirror: error: ", "bold red"), exc.message))
        if exc.hint:
            err_console.print(f"  hint: {exc.hint}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    finally:
        _app._PROGRAM.clear()
        gc.unfreeze()


if __name__ == "__main__":  # pragma: no cover
    main()
