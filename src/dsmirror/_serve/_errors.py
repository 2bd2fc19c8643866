"""The server's recent errors, each with one line of advice: ``RecentErrors``.

What an office admin needs to see without reading logs is what went wrong lately and what to do
about it. Everything the server's parts complain about goes through ``logging`` already (a failed
pull-through, a file changed on disk since it was indexed, a store that cannot be indexed, seeding
that stopped), so ``RecentErrors`` is a logging handler on the ``dsmirror`` logger: it keeps the
last ``keep`` distinct warnings and errors (one seen again moves up, counted), counts them by kind,
and gives each one line of advice — the
error's own hint when the record carries one (``extra={"hint": ...}`` or a ``DsmirrorError`` in
``exc_info``), else the advice for its kind.

The kind is named by the record (``extra={"kind": ...}``) or by the module that logged it::

    pull      a pull-through failed (the next request for the file pulls it afresh)
    upstream  an upstream mirror or registry answered badly
    index     a store or folder could not be indexed, a file is not served
    serve     a file could not be sent
    seed      seeding over BitTorrent
    other     anything else logged under ``dsmirror``

The handler sees the whole process's ``dsmirror`` loggers while it is installed (from the app's
start-up to its clean-up, and during the index's first scan): ``dsmirror serve`` runs one server
per process.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator

from dsmirror._core.errors import DsmirrorError

__all__ = ["KINDS", "ErrorRecord", "RecentErrors"]

#: Every kind, with the advice given when the error brings no hint of its own.
KINDS: dict[str, str] = {
    "pull": "the next request for the file starts a fresh pull; `dsmirror doctor` checks the upstream",
    "upstream": "check the upstream mirrors and the network with `dsmirror doctor`",
    "index": "fix or remove the file named; the next rescan (or a request for it) picks it up",
    "serve": "the file changed on disk after it was indexed: it is served again after the next rescan",
    "seed": "check --listen (a free port) and that the files of the torrents are complete",
    "other": "see the server's log for the lines around it",
}

#: Which kind a module's complaints are (the last part of the logger's name).
_KIND_OF_MODULE = {
    "_pulljob": "pull",
    "_pullthrough": "pull",
    "_hf_pullthrough": "upstream",
    "_ollama_pullthrough": "upstream",
    "_upstream": "upstream",
    "_library": "index",
    "_index": "index",
    "_hf_index": "index",
    "_ollama_index": "index",
    "_folder_index": "index",
    "_digests": "index",
    "_send": "serve",
    "_app": "serve",
    "_server": "seed",
    "seed": "seed",
}

_MAX_MESSAGE = 500


@dataclasses.dataclass(frozen=True)
class ErrorRecord:
    """One error as the status shows it: when, what kind, what happened, what to do."""

    time: float
    kind: str
    level: str
    message: str
    hint: str
    #: How often it was logged (a rescan meets the same bad file every time): shown once.
    repeated: int = 1


def _kind_of(record: logging.LogRecord) -> str:
    named = getattr(record, "kind", None)
    if isinstance(named, str) and named in KINDS:
        return named
    return _KIND_OF_MODULE.get(record.name.rsplit(".", 1)[-1], "other")


def _hint_of(record: logging.LogRecord, kind: str) -> str:
    hint = getattr(record, "hint", None)
    if isinstance(hint, str) and hint:
        return hint
    if record.exc_info and isinstance(record.exc_info[1], DsmirrorError) and record.exc_info[1].hint:
        return record.exc_info[1].hint
    return KINDS[kind]


class RecentErrors(logging.Handler):
    """The last ``keep`` warnings and errors logged under ``dsmirror``, and counts by kind."""

    def __init__(self, keep: int = 50, *, logger: str = "dsmirror") -> None:
        super().__init__(level=logging.WARNING)
        self._recent: collections.deque[ErrorRecord] = collections.deque(maxlen=keep)
        self._counts = dict.fromkeys(KINDS, 0)
        self._lock = threading.Lock()
        self._logger = logging.getLogger(logger)

    def install(self) -> None:
        self._logger.addHandler(self)

    def uninstall(self) -> None:
        self._logger.removeHandler(self)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Collect while the block runs (e.g. the index's first scan, before the app starts)."""
        self.install()
        try:
            yield
        finally:
            self.uninstall()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the code that logged it
            message = str(record.msg)
        kind = _kind_of(record)
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 1] + "…"
        entry = ErrorRecord(record.created, kind, record.levelname.lower(), message, _hint_of(record, kind))
        with self._lock:
            for seen in self._recent:
                if (seen.kind, seen.message) == (kind, message):
                    self._recent.remove(seen)
                    entry = dataclasses.replace(entry, repeated=seen.repeated + 1)
                    break
            self._recent.append(entry)
            self._counts[kind] += 1

    def counts(self) -> dict[str, int]:
        """Errors seen by kind since the server started (every kind, zeros too)."""
        with self._lock:
            return dict(self._counts)

    def recent(self) -> list[ErrorRecord]:
        """The last errors, newest first."""
        with self._lock:
            return list(reversed(self._recent))
