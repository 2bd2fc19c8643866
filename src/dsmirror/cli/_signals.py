"""Ctrl-C and SIGTERM in the command line: raised as ``Interrupted``, never inside a line of output.

``install()`` (called by ``dsmirror.cli.main``) makes both signals raise ``Interrupted`` in the
main thread, as our own error so that typer/click cannot swallow it: the command unwinds (the store
commits its verified pieces) and ``main`` says what happened.

An exception can be raised wherever the interpreter checks for signals, and rich's console is not
safe against that: interrupted after it wrote a line but before it cleared its buffer, the line is
written again with the next one (or, between entering and leaving its buffer, everything printed
later stays buffered and is lost: ``seed``'s "stopped seeding" line vanished this way after a
SIGTERM that came right after "seeding ..."). ``TextConsole.print`` runs inside ``deferred()``: a
signal that arrives then is raised when the line is out.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from dsmirror._core.errors import Interrupted

__all__ = ["deferred", "install"]

MESSAGE = "interrupted; verified progress is kept: run the same command to resume"

_depth = 0  # deferred() blocks the main thread is inside
_pending = False  # a signal came during one of them


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _depth:
        _pending = True
        return
    raise Interrupted(MESSAGE)


def install() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` (outside ``deferred()`` blocks). Main thread only."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a signal during it raises ``Interrupted`` when it ends.

    Python runs signal handlers in the main thread only; in other threads this does nothing.
    """
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            _pending = False
            raise Interrupted(MESSAGE)
