"""Test tools for dsmirror and for code built on it: real servers to download from on loopback.

- :class:`MirrorServer`: an HTTP mirror with a shared bandwidth cap, latency, outages and
  :class:`Faults` (corruption, resets, stalls, HTML pages, bad ranges, error statuses, signed
  redirects), all changeable while it serves;
- :func:`write_random_tree`: deterministic pseudo-random files to serve, with their digests;
- :mod:`dsmirror.testing.hostile`: servers that try to take their client down (endless bodies,
  gzip bombs, answers dripped a byte at a time, black holes, unusable redirects);
- :func:`check_source`, :func:`check_piece_source`, :func:`check_local_reuse` (the suites of
  :mod:`dsmirror.testing.conformance`): the contract every kind of source keeps, as checks an
  implementation runs against itself.

The conformance suites are loaded on first use (PEP 562): they import the fetch layer, which a
test that only wants a mirror does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dsmirror.testing.mirror import Faults, MirrorServer, write_random_tree

if TYPE_CHECKING:
    from dsmirror.testing.conformance import (
        ConformanceFailure,
        ConformanceReport,
        ServerFault,
        check_local_reuse,
        check_piece_source,
        check_source,
    )

__all__ = [
    "ConformanceFailure",
    "ConformanceReport",
    "Faults",
    "MirrorServer",
    "ServerFault",
    "check_local_reuse",
    "check_piece_source",
    "check_source",
    "write_random_tree",
]

_LAZY = {
    "ConformanceFailure": "conformance",
    "ConformanceReport": "conformance",
    "ServerFault": "conformance",
    "check_local_reuse": "conformance",
    "check_piece_source": "conformance",
    "check_source": "conformance",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
