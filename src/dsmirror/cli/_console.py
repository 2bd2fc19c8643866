"""Consoles that show untrusted text as text: no rich markup, no terminal control sequences.

Names, paths, URLs, reasons and header values come from manifests, catalogs, servers and the file
system; any of them may hold ``[/]`` (rich markup, which would raise ``MarkupError`` or restyle the
output) or control characters (an ESC sequence sets the terminal's title or clears the screen, a CR
overwrites the line). So the command line's consoles never parse markup, and every string they
render has its control characters replaced by the visible Unicode "control pictures" (ESC -> ␛,
BEL -> ␇, CR -> ␍; other C1 controls -> U+FFFD). The replacement is one character for one, so the
styles of a ``Text`` keep their spans. Line feeds and tabs stay: messages may be several lines.

Our own styling is done with ``Text`` objects (``styled``), never with markup strings.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["TextConsole", "safe_text", "styled"]

_PICTURES = {c: 0x2400 + c for c in range(0x20) if c not in (0x09, 0x0A)}
_PICTURES[0x7F] = 0x2421
_PICTURES.update({c: 0xFFFD for c in range(0x80, 0xA0)})


def safe_text(text: str) -> str:
    """``text`` with its control characters (but line feeds and tabs) made visible."""
    return text.translate(_PICTURES)


def styled(text: str, style: str) -> Text:
    """``text`` in ``style`` (for our own labels: ``styled("done", "bold green")``)."""
    return Text(text, style=style)


class TextConsole(Console):
    """A rich ``Console`` that renders every string as plain text (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        kwargs["markup"] = False
        kwargs["emoji"] = False
        return super().render_str(safe_text(text), **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.pop("markup", None)
        super().print(*(_safe(o) for o in objects), markup=False, **kwargs)


def _safe(obj: Any) -> Any:
    if isinstance(obj, Text):
        clean = safe_text(obj.plain)
        if clean != obj.plain:
            obj = obj.copy()
            obj.plain = clean
    return obj
