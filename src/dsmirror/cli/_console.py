"""Consoles that show untrusted text as text: no rich markup, no terminal control sequences.

Names, paths, URLs, reasons and header values come from manifests, catalogs, servers and the file
system; any of them may hold ``[/]`` (rich markup, which would raise ``MarkupError`` or restyle the
output) or control characters (an ESC sequence sets the terminal's title or clears the screen, a CR
overwrites the line). So the command line's consoles never parse markup, and every string they
render has its control characters replaced by the visible Unicode "control pictures" (ESC -> ␛,
BEL -> ␇, CR -> ␍; other C1 controls -> U+FFFD). The replacement is one character for one, so the
styles of a ``Text`` keep their spans. Line feeds and tabs stay: messages may be several lines.

Our own styling is done with ``Text`` objects (``styled``), never with markup strings.

rich is imported when a console or a style is first used, not with this module: a ``--json``
pull shows nothing through rich (``TextConsole`` is in ``_textconsole``, and named here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.text import Text

    from dsmirror.cli._textconsole import TextConsole

from dsmirror.cli._safetext import safe_text

__all__ = ["TextConsole", "safe_text", "styled"]


def styled(text: str, style: str) -> Text:
    """``text`` in ``style`` (for our own labels: ``styled("done", "bold green")``)."""
    from rich.text import Text

    return Text(text, style=style)


def __getattr__(name: str) -> Any:
    if name == "TextConsole":
        from dsmirror.cli._textconsole import TextConsole

        return TextConsole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
