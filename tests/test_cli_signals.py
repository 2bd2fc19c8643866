"""Ctrl-C and SIGTERM in the command line (dsmirror.cli._signals): a real signal, sent to this
process while the console is writing a line, is raised once the line is out."""

from __future__ import annotations

import io
import os
import signal
import threading
from collections.abc import Iterator

import pytest

from dsmirror._core.errors import Interrupted
from dsmirror.cli import _signals
from dsmirror.cli._textconsole import TextConsole


@pytest.fixture
def handlers() -> Iterator[None]:
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    _signals.install()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


class SignalOnFirstWrite(io.StringIO):
    """A terminal that gets ``sig`` sent to this process right after the first write."""

    def __init__(self, sig: int) -> None:
        super().__init__()
        self.sig, self.sent = sig, False

    def write(self, s: str) -> int:
        n = super().write(s)
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)
        return n


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_a_line_is_written_is_raised_after_it_and_loses_or_repeats_nothing(
    handlers: None, sig: int
) -> None:
    out = SignalOnFirstWrite(sig)
    console = TextConsole(file=out, width=200)
    with pytest.raises(Interrupted):
        console.print("seeding model on port 1")
    console.print("stopped seeding: 0 B uploaded")  # what seed prints on its way out
    # Raised inside rich, the first line was written again with the second (or, in another spot,
    # everything after it stayed in rich's buffer: seed's last line was lost).
    assert out.getvalue() == "seeding model on port 1\nstopped seeding: 0 B uploaded\n"


def test_outside_a_line_a_signal_is_raised_at_once(handlers: None) -> None:
    with pytest.raises(Interrupted, match="verified progress is kept"):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs at the next check of the main thread
            pass


def test_deferred_blocks_nest_and_other_threads_are_not_deferred(handlers: None) -> None:
    with pytest.raises(Interrupted):
        with _signals.deferred():
            with _signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
            done_inner = True  # the inner block's end did not raise: the outer one is still open
        pytest.fail("not reached")
    assert done_inner
    seen: list[BaseException] = []

    def worker() -> None:
        try:
            with _signals.deferred():
                pass
        except BaseException as exc:  # pragma: no cover - the failure this checks
            seen.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not seen and not _signals._pending
