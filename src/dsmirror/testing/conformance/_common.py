"""What every suite shares: its failure and report, running checks with a deadline, test data."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

KiB = 1 << 10
MiB = 1 << 20


class ConformanceFailure(AssertionError):
    """An implementation broke rules of its contract; ``failures`` says which, one line each.

    Each line starts with the name of the check that failed (``"exact bytes: ..."``).
    """

    def __init__(self, subject: str, failures: Sequence[str]) -> None:
        self.failures = list(failures)
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(f"{subject} breaks {len(self.failures)} rule(s) of its contract:\n{lines}")


@dataclass(frozen=True)
class ConformanceReport:
    """What a suite checked (all of it passed)."""

    subject: str
    checks: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # checks the factory could not set up (e.g. faults it cannot show)


class Broken(Exception):
    """One rule broke; the message says how."""


def content(name: str, size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes, different for every name and seed."""
    return hashlib.shake_128(f"dsmirror-conformance:{seed}:{name}".encode()).digest(size)


@dataclass
class Checklist:
    """Runs a suite's checks one by one, each within ``timeout``, and collects what broke.

    A check appends to ``progress`` what it is doing, so a check that hangs can say where.
    """

    subject: str
    timeout: float
    progress: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def run(self, name: str, check: Callable[[], None]) -> None:
        self.progress.clear()
        try:
            self._bounded(check)
        except Broken as exc:
            self.failures.append(f"{name}: {exc}")
        except Exception as exc:
            self.failures.append(f"{name}: raised {type(exc).__name__}: {exc}{self._where()}")
        else:
            self.passed.append(name)

    def skip(self, name: str) -> None:
        self.skipped.append(name)

    def report(self) -> ConformanceReport:
        """The report; raises ConformanceFailure if any check failed."""
        if self.failures:
            raise ConformanceFailure(self.subject, self.failures)
        return ConformanceReport(self.subject, tuple(self.passed), tuple(self.skipped))

    def _where(self) -> str:
        return f" (at: {self.progress[-1]})" if self.progress else ""

    def _bounded(self, check: Callable[[], None]) -> None:
        """Run ``check`` in a thread: an implementation that hangs fails instead of hanging us."""
        box: list[BaseException | None] = []

        def target() -> None:
            try:
                check()
            except BaseException as exc:
                box.append(exc)
            else:
                box.append(None)

        t = threading.Thread(target=target, name="dsmirror-conformance", daemon=True)
        t.start()
        t.join(self.timeout)
        if t.is_alive():
            raise Broken(f"did not finish within {self.timeout:g} s{self._where()}")
        if box[0] is not None:
            raise box[0]
