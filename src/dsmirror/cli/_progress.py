"""Progress of long work on bytes (hashing, copying, verifying): a bar on a terminal, lines otherwise.

On a terminal the bar redraws in place and goes away when the work ends. Anywhere else (CI logs, a
pipe, a file) redrawing would be a flood and a bar nothing at all, so a plain line is written at
most once every ``PLAIN_INTERVAL`` seconds::

    verify: 1.2 GiB / 4.0 GiB (30%), 210.3 MiB/s, ETA 00:14

(``hash: 1.2 GiB, 210.3 MiB/s`` when the total is not known). Work shorter than the interval
writes no progress line at all: the command's own summary follows. Lines go to the console given
(the commands use stderr, so stdout keeps only results). ``dsmirror pull`` renders its own events
(``_render``) the same way, every 2 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from dsmirror._core.units import format_bytes, format_rate
from dsmirror.cli._console import safe_text
from dsmirror.cli._render import eta_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["PLAIN_INTERVAL", "ByteProgress"]

#: Seconds between two plain progress lines.
PLAIN_INTERVAL = 5.0


class ByteProgress:
    """Bytes done of ``total`` (None: unknown); ``advance`` and ``update`` may come from any thread."""

    def __init__(
        self,
        console: Console,
        label: str,
        total: int | None,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.label = label
        self.total = total
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.done = 0
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ByteProgress:
        if self.console.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self._bar = Progress(
                TextColumn("{task.description}", markup=False),  # the label names a model: text
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(safe_text(self.label), total=self.total)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
        self._show()

    def update(self, done: int) -> None:
        with self._lock:
            self.done = done
        self._show()

    def _show(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = self._clock()
        with self._lock:
            if now - self._last_line < self.interval:
                return
            self._last_line = now
            done = self.done
        self.console.print(self.line(done, now - self._started), highlight=False)

    def line(self, done: int, elapsed: float) -> str:
        """The plain progress line after ``done`` bytes in ``elapsed`` seconds."""
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            return f"{self.label}: {format_bytes(done)}, {format_rate(rate)}"
        frac = done / self.total if self.total else 1.0
        eta = (self.total - done) / rate if rate > 0 else None
        return (
            f"{self.label}: {format_bytes(done)} / {format_bytes(self.total)} ({frac * 100:.0f}%), "
            f"{format_rate(rate)}, ETA {eta_text(eta)}"
        )
