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
import sys

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
from dsmirror.cli._app import app, err_console

__all__ = ["app", "main"]

# Importing the command modules registers them on ``app``.
from dsmirror.cli import (  # noqa: F401
    _bundle_cmd,
    _demo_cmd,
    _doctor_cmd,
    _ls_cmd,
    _manifest_cmd,
    _pull_cmd,
    _seed_cmd,
    _serve_cmd,
    _sources_cmd,
    _torrent_cmd,
    _verify_cmd,
)

if _collecting:
    gc.freeze()  # else the first allocation after enable() collects all of it at once
    gc.enable()


def _app_for(argv: list[str]) -> typer.Typer:
    """``app`` with only the command ``argv`` runs, or ``app`` itself when argv names none.

    typer builds every command (its click object, every option's type from the signature) before
    it runs one: 20-30 ms here, three quarters of them for the commands not run. The others still
    show in ``dsmirror --help`` and a mistyped name gets the whole list.
    """
    name = argv[1] if len(argv) > 1 else None
    commands = [c for c in app.registered_commands if name is not None and c.name == name]
    groups = [g for g in app.registered_groups if name is not None and g.name == name]
    if not commands and not groups:
        return app
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
        _app_for(sys.argv)(standalone_mode=True, prog_name="dsmirror")
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
