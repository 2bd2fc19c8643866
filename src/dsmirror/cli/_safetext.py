"""``safe_text``: untrusted text with its control characters made visible (see ``dsmirror.cli._console``).

Its own module, without rich, so that both ``_console`` (no rich at import) and ``_textconsole``
(the rich console) use it with no import cycle between them.
"""

from __future__ import annotations

__all__ = ["safe_text"]

_PICTURES = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}
_PICTURES[0x7F] = 0x2421
_PICTURES.update({c: 0xFFFD for c in range(0x80, 0xA0)})


def safe_text(text: str) -> str:
    """``text`` with its control characters (but line feeds and tabs) made visible."""
    return text.translate(_PICTURES)
