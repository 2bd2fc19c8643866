"""Untrusted text reaches the terminal as text: rich markup and control characters are never interpreted.

Names, paths, reasons and header values come from manifests, catalogs, servers and the file
system. The CLI's consoles (``dsmirror.cli._console.TextConsole``) parse no markup and show control
characters as visible pictures, so ``[/]`` can neither raise ``MarkupError`` nor restyle a line,
and an ESC sequence can neither set the terminal title nor clear the screen.
"""

from __future__ import annotations

import io
import itertools
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.table import Table
from rich.text import Text

import dsmirror
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
from dsmirror.testing import Faults, MirrorServer, write_random_tree

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


# -- the commands, end to end (real mirrors on 127.0.0.x, the real CLI in a subprocess) -------------
NAME = "x[/] \x1b]0;owned\x07\x1b[2J [bold]"
PATH = "a[/]b [red].bin"


def _hostile_model(tmp_path: Path) -> tuple[Path, Path, dsmirror.Manifest]:
    root = tmp_path / "src"
    root.mkdir()
    write_random_tree(root, {PATH: 300_000, "ok.bin": 70_000}, seed=3)
    manifest = dsmirror.create_manifest(root, name=NAME, piece_size=64 << 10)
    path = tmp_path / "m.json"
    manifest.write(path)
    return root, path, manifest


def _no_raw_controls(text: str) -> None:
    assert "Traceback" not in text
    assert "\x1b" not in text and "\x07" not in text


def test_pull_and_verify_show_hostile_names_paths_and_headers_as_text(
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    run_cli: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    root, manifest_path, _ = _hostile_model(tmp_path)
    good, liar = start_mirrors(root, 2)
    # One mirror answers every range with markup in its Content-Range: it is dropped, never printed raw.
    liar.set_faults(Faults(content_range="bytes [/][/bold] 0-9/[red]x[/]"))
    catalog = catalog_file([good, liar])
    dest = tmp_path / "d[/]e [bold]st"
    r = run_cli(
        "pull", manifest_path, "--no-default-catalog", "--mirrors", catalog, "--dest", dest, "--no-p2p"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    _no_raw_controls(r.stdout + r.stderr)
    assert safe_text(NAME) in r.stdout
    assert str(dest) in r.stdout
    assert (dest / PATH).read_bytes() == (root / PATH).read_bytes()

    # The same name pulled again is a no-op that prints it again; `sources` ranks the liar too.
    r = run_cli(
        "pull", manifest_path, "--no-default-catalog", "--mirrors", catalog, "--dest", dest, "--no-p2p"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    _no_raw_controls(r.stdout + r.stderr)
    r = run_cli("sources", manifest_path, "--no-default-catalog", "--mirrors", catalog)
    assert r.returncode == 0, r.stdout + r.stderr
    _no_raw_controls(r.stdout + r.stderr)

    # verify: a damaged file with markup in its path is an integrity failure (exit 3), shown as text.
    data = bytearray((dest / PATH).read_bytes())
    data[1000] ^= 0xFF
    (dest / PATH).write_bytes(bytes(data))
    r = run_cli("verify", manifest_path, dest)
    assert r.returncode == 3, r.stdout + r.stderr
    _no_raw_controls(r.stdout + r.stderr)
    assert PATH in r.stdout
