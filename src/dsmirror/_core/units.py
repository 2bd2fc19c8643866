"""Human byte sizes and rates: ``8MiB``, ``1.5GB``, ``40M`` (rates: ``40MB/s``)."""

from __future__ import annotations

import re

from dsmirror._core.errors import UsageError
from dsmirror._core.sizes import format_bytes

__all__ = ["format_bytes", "format_rate", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*(?:/s)?\s*$")


def parse_size(text: str) -> int:
    """Parse ``8MiB`` / ``40MB/s`` / ``1048576`` into bytes; raise UsageError otherwise."""
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UsageError(f"cannot read size {text!r}", hint="write it like 8MiB, 500KB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_rate(bps: float) -> str:
    return f"{format_bytes(bps)}/s"
