"""The ``dsmirror`` command line: a thin layer of typer commands over the library.

Each command lives in its own module and registers itself on ``app``. Commands parse options, build
settings, call one library function and render the typed events it yields. ``main`` is the one place
that turns a ``DsmirrorError`` into a one-line message, a hint and the error's exit code.

Exit codes: 0 ok, 1 unexpected, 2 bad usage, 3 integrity failure, 4 no usable source,
5 local storage error, 6 already in progress, 7 invalid input file (manifest, catalog), 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from .._errors import DsmirrorError, Interrupted
from ._app import app, err_console

__all__ = ["app", "main"]

# Importing the command modules registers them on ``app``.
from . import _demo_cmd, _manifest_cmd, _pull_cmd, _sources_cmd, _verify_cmd  # noqa: F401


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        app(standalone_mode=True)
    except DsmirrorError as exc:
        err_console.print(f"[bold red]dsmirror: error:[/] {exc.message}", highlight=False, markup=True)
        if exc.hint:
            err_console.print(f"  hint: {exc.hint}", highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("dsmirror: interrupted", highlight=False)
        sys.exit(Interrupted.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
