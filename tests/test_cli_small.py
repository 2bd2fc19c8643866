"""Small things users expect of the command line: ``--version``, clean ``--help``, progress in logs.

- ``dsmirror --version`` prints the version and exits 0;
- every command's ``--help`` shows no ``<bool>`` after a flag (flags take no value) and no
  ``<list[...]>`` after a repeatable option, and usage lines name the program ``dsmirror`` however
  it was started (the installed script, ``python -c``);
- on a non-terminal (CI logs, pipes) long work on bytes prints one plain line every few seconds
  (``dsmirror.cli._progress``), not nothing and not a flood: ``import``, ``export``, ``verify``,
  ``manifest create`` (``pull`` and ``seed`` render their own events; ``serve`` logs its pulls).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dsmirror.cli import _progress, app
from dsmirror.cli._console import TextConsole
from dsmirror.cli._progress import ByteProgress

CLI = [sys.executable, "-c", "from dsmirror.cli import main; main()"]
SCRIPT = Path(sysconfig.get_path("scripts")) / "dsmirror"
HELP_ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
# One progress line, e.g. "verify m: 1.2 MiB / 4.0 MiB (30%), 210.3 MiB/s, ETA 00:14".
PROGRESS = re.compile(
    r"^(\S+) (.+): [\d.]+ [KMGT]?i?B( / [\d.]+ [KMGT]?i?B \(\d+%\))?, [\d.]+ [KMGT]?i?B/s(, ETA \S+)?$"
)


def _commands(
    command: typer.core.TyperGroup | object, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


ALL_COMMANDS = list(_commands(typer.main.get_command(app)))


def test_version() -> None:
    want = f"dsmirror {importlib.metadata.version('dsmirror')}\n"
    r = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, want, "")
    assert SCRIPT.is_file(), f"the dsmirror script is not installed in {SCRIPT.parent} (pip install -e .)"
    r = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, want)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "dsmirror")
def test_help_is_clean(command: tuple[str, ...]) -> None:
    r = CliRunner().invoke(app, [*command, "--help"], env=HELP_ENV)
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output
    options = r.output.split("Options", 1)[1] if "Options" in r.output else ""
    assert "<list[" not in options, options
    assert "--help" in r.output and "Show this message and exit." in r.output


def test_flags_and_repeatable_options_read_as_before() -> None:
    """The tidied help changes nothing of what the options mean."""
    text = CliRunner().invoke(app, ["pull", "--help"], env=HELP_ENV).output
    assert re.search(r"--p2p\s+--no-p2p\s+Use the model's BitTorrent swarm", text)
    assert re.search(r"--only\s+<str>\s+Use only this mirror \(repeatable\)", text)
    assert re.search(r"--mirrors\s+<path>\s+Extra catalog file", text)
    assert re.search(r"--connections\s+-x\s+<int range> \[1<=x<=64\]", text)


@pytest.mark.parametrize("how", ["script", "python -c"])
def test_usage_names_the_program_dsmirror(how: str) -> None:
    argv = [str(SCRIPT)] if how == "script" else CLI
    r = subprocess.run(
        [*argv, "manifest", "create", "--help"], capture_output=True, text=True, timeout=60, env=_env()
    )
    assert r.returncode == 0
    assert "Usage: dsmirror manifest create [OPTIONS] {folder}" in r.stdout
    r = subprocess.run([*argv, "pull"], capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode == 2 and "Usage: dsmirror pull" in r.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, **HELP_ENV}


# -- progress on a non-terminal ----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_is_one_line_every_interval() -> None:
    out = io.StringIO()
    console = TextConsole(file=out, width=200)
    clock = _Clock()
    with ByteProgress(console, "verify <b>m</b>\x1b[2J", 100 << 20, clock=clock) as progress:
        for _ in range(40):  # 100 MiB in 2.5 MiB steps, 0.25 s apart: 10 s
            clock.now += 0.25
            progress.advance(5 << 19)
    lines = out.getvalue().splitlines()
    assert lines == [
        "verify <b>m</b>␛[2J: 50.0 MiB / 100.0 MiB (50%), 10.0 MiB/s, ETA 00:05",
        "verify <b>m</b>␛[2J: 100.0 MiB / 100.0 MiB (100%), 10.0 MiB/s, ETA 00:00",
    ]
    # Work shorter than the interval prints nothing (the command's summary follows).
    out.seek(0)
    out.truncate()
    with ByteProgress(console, "quick", 10, clock=clock) as progress:
        clock.now += 1
        progress.update(10)
    assert out.getvalue() == ""
    # Unknown total.
    with ByteProgress(console, "hash m", None, clock=clock) as progress:
        clock.now += 6
        progress.advance(3 << 20)
    assert out.getvalue().splitlines()[-1] == "hash m: 3.0 MiB, 512.0 KiB/s"


def test_terminal_progress_is_a_bar_not_lines() -> None:
    out = io.StringIO()
    console = TextConsole(file=out, force_terminal=True, width=100)
    clock = _Clock()
    with ByteProgress(console, "export [/]x", 1000, clock=clock) as progress:  # markup in a name: text
        for _ in range(10):
            clock.now += 10
            progress.advance(100)
    assert "ETA" not in out.getvalue() and "export [/]x" in out.getvalue()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(hashlib.shake_128(b"w").digest(3 << 20))
    (folder / "sub" / "config.json").write_text("{}\n")
    return folder


def test_long_commands_print_progress_lines_in_logs(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the interval at 0, each step of the work is a line: the commands do report progress."""
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL", 0.0)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    runner = CliRunner()
    manifest = tmp_path / "m.json"
    bundle = tmp_path / "m.tar"
    steps = [
        (["manifest", "create", str(model), "-o", str(manifest), "--piece-size", "1MiB"], "hash"),
        (["verify", str(manifest), str(model)], "verify"),
        (["export", str(manifest), "--from", str(model), "-o", str(bundle)], "export"),
        (["import", str(bundle), "--dest", str(tmp_path / "copy")], "import"),
    ]
    for argv, label in steps:
        r = runner.invoke(app, argv, env=HELP_ENV)
        assert r.exit_code == 0, r.output
        lines = [line for line in r.stderr.splitlines() if PROGRESS.match(line)]
        assert lines and all(line.startswith(f"{label} ") for line in lines), r.stderr
        assert "ETA" in lines[-1] or label == "hash"
        assert not any(PROGRESS.match(line) for line in r.stdout.splitlines()), "progress belongs on stderr"
    assert (tmp_path / "copy" / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()


def test_quick_commands_do_not_flood_a_log(model: Path, tmp_path: Path) -> None:
    """At the real interval, work of a second prints no progress line at all (a real process, a pipe)."""
    manifest = tmp_path / "m.json"
    env = {**_env(), "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    for argv in (
        ["manifest", "create", str(model), "-o", str(manifest), "--piece-size", "64KiB"],
        ["verify", str(manifest), str(model)],
    ):
        r = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert not [line for line in r.stderr.splitlines() if PROGRESS.match(line)], r.stderr
        assert len(r.stdout.splitlines()) == 1  # the summary
