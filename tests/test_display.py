"""Untrusted text reaches the terminal as text: rich markup and control characters are never interpreted.

Names, paths, reasons and header values come from manifests, catalogs, servers and the file
system. The CLI's consoles (``dsmirror.cli._console.TextConsole``) parse no markup and show control
characters as visible pictures, so ``[/]`` can neither raise ``MarkupError`` nor restyle a line,
and an ESC sequence can neither set the terminal title nor clear the screen.
"""

from __future__ import annotations

import io
import itertools

import pytest
from rich.table import Table
from rich.text import Text

from dsmirror._core.events import (
    Event,
    PieceRejected,
    PlanNotes,
    Progress,
    PullFinished,
    PullStarted,
    SourceDropped,
    SourceProgress,
    SourceTrouble,
)
from dsmirror.cli._console import TextConsole, safe_text, styled
from dsmirror.cli._render import render_human

HOSTILE = [
    "x[/]",
    "[/][/bold]",
    "[red]x[/]",
    "[link=http://e.x]y",
    "\x1b]0;owned\x07\x1b[2J",
    "a\rb",
    "\x9b31m",
    "\x00\x7f",
    ":smile:",
]


def _console(terminal: bool = False) -> tuple[TextConsole, io.StringIO]:
    out = io.StringIO()
    return TextConsole(file=out, soft_wrap=True, force_terminal=terminal, width=200), out


def _events(bad: str) -> list[Event]:
    src = SourceProgress(bad, "http", bad, 1.0, 10, 1, "ok")
    return [
        PlanNotes(bad, bad, "0" * 64, bad, (bad,)),
        PullStarted(bad, "0" * 64, bad, 100, 0, 1, 100, (bad,)),
        Progress(50, 100, 1.0, 1.0, (src,), 50),
        PieceRejected(bad, 0, bad, f"{bad} sent bad bytes"),
        SourceDropped(bad, bad),
        SourceTrouble(bad, bad, 1.0),
        Progress(100, 100, 1.0, 0.0, (src,), 100),
        PullFinished(bad, bad, (bad,), 100, 100, 0, 0, 0, 1.0, {bad: 100}),
    ]


@pytest.mark.parametrize(("bad", "terminal"), list(itertools.product(HOSTILE, (False, True))))
def test_pull_display_shows_hostile_text_as_text(bad: str, terminal: bool) -> None:
    console, out = _console(terminal)
    render_human(_events(bad), console)
    text = out.getvalue()
    shown = safe_text(bad)
    assert shown in text
    # No control character of the input reaches the output (the display's own ANSI styling aside).
    for ch in set(bad) - {"\n", "\t"}:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            plain = text if not terminal else _strip_own_sgr(text)
            assert ch not in plain, repr(ch)


def _strip_own_sgr(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m|\x1b\[\?25[lh]|\x1b\[2K|\x1b\[1A|\r", "", text)


def test_safe_text_is_one_character_for_one() -> None:
    for bad in HOSTILE:
        assert len(safe_text(bad)) == len(bad)
    assert safe_text("line\nnext\ttab") == "line\nnext\ttab"
    assert safe_text("\x1b[2J") == "\u241b[2J"


def test_styled_labels_and_tables_render_untrusted_cells_as_text() -> None:
    console, out = _console()
    t = Table()
    t.add_column("name")
    t.add_row("x[/]\x1b[31m")
    console.print(t)
    console.print(styled("done", "bold green"), "[red]x[/]")
    console.print(Text.assemble(("note ", "dim"), "y[/]\x1b]0;t\x07"))
    text = out.getvalue()
    assert "x[/]\u241b[31m" in text
    assert "done [red]x[/]" in text
    assert "note y[/]\u241b]0;t" in text  # rich itself drops the BEL of a Text
    assert "\x1b" not in text
