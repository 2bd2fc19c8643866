"""Bad inputs and broken environments: one clear line on stderr and the documented exit code.

Exit codes (``dsmirror.cli`` docstring): 0 ok, 1 unexpected, 2 bad usage, 3 integrity failure,
4 no usable source, 5 local storage error, 6 already in progress, 7 invalid input file,
130 interrupted. Every case runs the real command line in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dsmirror.testing import MirrorServer

KiB = 1 << 10
MiB = 1 << 20
SIZES = {"weights.bin": 300 * KiB + 7, "config.json": 321, "empty.txt": 0}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def model(make_model: Callable[..., Any]) -> Any:
    return make_model(SIZES, piece_size=64 * KiB, name="cli-errors")


@pytest.fixture
def mirror(model: Any, start_mirrors: Callable[..., list[MirrorServer]]) -> MirrorServer:
    return start_mirrors(model.root, 1)[0]


@pytest.fixture
def catalog(mirror: MirrorServer, catalog_file: Callable[..., Path]) -> Path:
    return catalog_file([mirror])


def pull_args(ref: Path | str, catalog: Path, dest: Path, *extra: str | Path) -> list[str | Path]:
    return ["pull", ref, "--mirrors", catalog, "--no-default-catalog", "--dest", dest, *extra]


# -- 7: invalid input files -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["pull", "verify", "show"])
def test_unsafe_manifest_exit_7(
    command: str,
    model: Any,
    tmp_path: Path,
    catalog: Path,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    d = model.manifest.to_dict()
    d["files"][0]["path"] = "../../etc/cron.d/evil"
    bad = tmp_path / "unsafe.manifest.json"
    bad.write_text(json.dumps(d))
    args = {
        "pull": pull_args(bad, catalog, tmp_path / "dest"),
        "verify": ["verify", bad, model.root],
        "show": ["manifest", "show", bad],
    }[command]
    r = run_cli(*args)
    assert r.returncode == 7, r.stderr
    one_line_error(r, "unsafe.manifest.json", "'..'")
    assert not (tmp_path / "dest").exists()


def test_manifest_not_json_exit_7(
    tmp_path: Path, catalog: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text("this is not a manifest\n")
    r = run_cli(*pull_args(bad, catalog, tmp_path / "dest"))
    assert r.returncode == 7
    one_line_error(r, "notes.json", "not valid JSON")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 1\nmirrors:\n  - name: a\n    kind: http\n   url: http://127.0.0.1:1/\n", 5, "YAML"),
        ("version: 1\nmirrors:\n  - name: a\n    kind: htp\n    url: http://127.0.0.1:1/\n", 4, "kind"),
        ("version: 1\nmirrors:\n  - name: a\n    kind: http\n    url: ftp://127.0.0.1/\n", 5, "url"),
        (
            "version: 1\nmirrors:\n  - name: a\n    kind: http\n    url: http://x/\n    colour: red\n",
            6,
            "colour",
        ),
        ("version: 2\n", 1, "version"),
    ],
    ids=["syntax", "unknown-kind", "bad-scheme", "unknown-key", "future-version"],
)
def test_bad_catalog_names_file_and_line_exit_7(
    text: str,
    line: int,
    fragment: str,
    model: Any,
    tmp_path: Path,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    cat = tmp_path / "mirrors.yaml"
    cat.write_text(text)
    r = run_cli(*pull_args(model.manifest_path, cat, tmp_path / "dest"))
    assert r.returncode == 7, r.stderr
    one_line_error(r, f"{cat}:{line}", fragment)


def test_missing_catalog_file_exit_7(
    model: Any, tmp_path: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    r = run_cli(*pull_args(model.manifest_path, tmp_path / "nope.yaml", tmp_path / "dest"))
    assert r.returncode == 7
    one_line_error(r, "nope.yaml", "no such file")


def test_bad_user_catalog_is_reported_too(
    model: Any,
    tmp_path: Path,
    cli_env: dict[str, str],
    catalog: Path,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    # Without --no-default-catalog the user's own catalog (XDG config dir) is read and validated.
    user = Path(cli_env["XDG_CONFIG_HOME"]) / "dsmirror" / "mirrors.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("version: 1\nmirrors: [\n")
    r = run_cli("pull", model.manifest_path, "--mirrors", catalog, "--dest", tmp_path / "dest")
    assert r.returncode == 7
    one_line_error(r, str(user))


# -- 2: bad usage ---------------------------------------------------------------------------------
def test_unknown_ref_exit_2(
    tmp_path: Path, catalog: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    r = run_cli(*pull_args("no-such-model:7b", catalog, tmp_path / "dest"))
    assert r.returncode == 2
    one_line_error(r, "no-such-model:7b")


def test_folder_as_ref_exit_2(
    model: Any, tmp_path: Path, catalog: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    r = run_cli(*pull_args(model.root, catalog, tmp_path / "dest"))
    assert r.returncode == 2
    one_line_error(r, "not a file")


def test_bad_size_option_exit_2(
    model: Any, tmp_path: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    r = run_cli("manifest", "create", model.root, "-o", tmp_path / "m.json", "--piece-size", "banana")
    assert r.returncode == 2
    one_line_error(r, "banana")


@pytest.mark.parametrize("option", ["--max-rate", "--min-rate"])
def test_bad_rate_option_exit_2(
    model: Any,
    tmp_path: Path,
    catalog: Path,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
    option: str,
) -> None:
    r = run_cli(*pull_args(model.manifest_path, catalog, tmp_path / "dest", option, "fast"))
    assert r.returncode == 2, r.stderr
    one_line_error(r, "fast")
    assert not (tmp_path / "dest").exists()


def test_piece_size_not_power_of_two_is_a_usage_error(
    model: Any, tmp_path: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    r = run_cli("manifest", "create", model.root, "-o", tmp_path / "m.json", "--piece-size", "3MiB")
    assert r.returncode == 2, r.stderr
    one_line_error(r, "power of two")


# -- 3: integrity ---------------------------------------------------------------------------------
def test_verify_mismatch_exit_3(
    model: Any, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    with open(model.root / "weights.bin", "r+b") as fh:
        fh.seek(100_000)
        fh.write(b"\0\1\2")
    (model.root / "config.json").unlink()
    r = run_cli("verify", model.manifest_path, model.root)
    assert r.returncode == 3
    assert "missing     config.json" in r.stdout
    bad = next(
        p
        for p in model.manifest.pieces
        if p.path == "weights.bin" and p.offset <= 100_000 < p.offset + p.length
    )
    assert f"bad piece   {bad.index} (weights.bin bytes 65536-131071)" in r.stdout
    one_line_error(r, "2 of 3 files do not match")


def test_manifest_pin_mismatch_exit_3(
    model: Any,
    tmp_path: Path,
    mirror: MirrorServer,
    catalog: Path,
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    wrong = "f" * 64
    r = run_cli(*pull_args(model.manifest_path, catalog, tmp_path / "dest", "--manifest-sha256", wrong))
    assert r.returncode == 3
    one_line_error(r, wrong, model.manifest.sha256)
    assert mirror.requests == 0
    ok = run_cli(
        *pull_args(
            model.manifest_path, catalog, tmp_path / "dest", "--manifest-sha256", model.manifest.sha256
        )
    )
    assert ok.returncode == 0, ok.stderr


# -- 4: no usable source --------------------------------------------------------------------------
def test_unreachable_mirrors_exit_4(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    mirrors = start_mirrors(model.root, 2)
    for m in mirrors:
        m.set_down(True)  # the ports stay reserved for these tests, nothing listens
    started = time.monotonic()
    r = run_cli(
        *pull_args(model.manifest_path, catalog_file(mirrors), tmp_path / "dest", "--give-up-after", "30")
    )
    assert r.returncode == 4, r.stderr
    one_line_error(r, "no source could be reached", "m1", "m2")
    # Unreachable mirrors are given up on after a few attempts, not after --give-up-after.
    assert time.monotonic() - started < 25


def test_catalog_without_http_mirrors_exit_4(
    model: Any, tmp_path: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    cat = tmp_path / "hf-only.yaml"
    cat.write_text("version: 1\nmirrors:\n  - name: hub\n    kind: hf\n    url: http://127.0.0.1:9/\n")
    r = run_cli(*pull_args(model.manifest_path, cat, tmp_path / "dest"))
    assert r.returncode == 4
    one_line_error(r, "kind http")


# -- 5: local storage -----------------------------------------------------------------------------
def test_no_space_exit_5(
    model: Any,
    tmp_path: Path,
    mirror: MirrorServer,
    catalog: Path,
    small_tmpfs: Callable[..., Path],
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    fs = small_tmpfs("8m")
    r = run_cli(*pull_args(model.manifest_path, catalog, fs / "dest"))
    assert r.returncode == 5, r.stderr
    one_line_error(r, "not enough free space")
    assert mirror.bytes_served == 0, "space is checked before anything is downloaded"


@pytest.mark.parametrize("sub", ["", "dest"], ids=["mount-point", "folder-below"])
def test_read_only_destination_exit_5(
    sub: str,
    model: Any,
    tmp_path: Path,
    catalog: Path,
    small_tmpfs: Callable[..., Path],
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    fs = small_tmpfs("8m", ro=True)
    r = run_cli(*pull_args(model.manifest_path, catalog, fs / sub if sub else fs))
    assert r.returncode == 5, r.stderr
    line = one_line_error(r)
    assert "read-only" in line or "cannot write" in line


def test_dest_is_a_file_exit_5(
    model: Any, tmp_path: Path, catalog: Path, run_cli: Callable[..., Any], one_line_error: Callable[..., str]
) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    r = run_cli(*pull_args(model.manifest_path, catalog, target))
    assert r.returncode == 5, r.stderr
    one_line_error(r, "a-file")


def test_symlink_in_destination_exit_5(
    tmp_path: Path,
    make_model: Callable[..., Any],
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    nested = make_model({"sub/weights.bin": 100_000}, piece_size=64 * KiB)
    cat = catalog_file(start_mirrors(nested.root, 1))
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    r = run_cli(*pull_args(nested.manifest_path, cat, dest))
    assert r.returncode == 5, r.stderr
    one_line_error(r, "symlink")
    assert list(outside.iterdir()) == [], "nothing is written through a symlink"


# -- 6: already in progress -----------------------------------------------------------------------
def test_second_pull_of_same_model_exit_6(
    model: Any,
    tmp_path: Path,
    start_mirrors: Callable[..., list[MirrorServer]],
    catalog_file: Callable[..., Path],
    spawn_cli: Callable[..., Any],
    run_cli: Callable[..., Any],
    one_line_error: Callable[..., str],
) -> None:
    (slow,) = start_mirrors(model.root, [{"rate": 50_000}])
    cat = catalog_file([slow])
    dest = tmp_path / "dest"
    first = spawn_cli(*pull_args(model.manifest_path, cat, dest, "--json"))
    first.wait_event("PullStarted", timeout=60)
    second = run_cli(*pull_args(model.manifest_path, cat, dest))
    assert second.returncode == 6, second.stderr
    one_line_error(second, "already in progress", f"pid {first.pid}")
    assert first.proc.poll() is None, "the running pull is not disturbed"
    first.kill()
    # Once it is gone, the same command resumes.
    slow.set_rate(None)
    again = run_cli(*pull_args(model.manifest_path, cat, dest))
    assert again.returncode == 0, again.stderr
    model.assert_identical(dest)


# -- how errors are printed -----------------------------------------------------------------------
def test_long_error_stays_on_one_line_without_a_terminal(
    model: Any,
    tmp_path: Path,
    catalog: Path,
    cli_env: dict[str, str],
    one_line_error: Callable[..., str],
) -> None:
    env = {k: v for k, v in cli_env.items() if k != "COLUMNS"}
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "model.manifest.json"
    deep.parent.mkdir(parents=True)
    deep.write_text("{}")
    r = subprocess.run(
        [sys.executable, "-c", "from dsmirror.cli import main; main()", "manifest", "show", str(deep)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 7
    one_line_error(r, str(deep))


def test_ctrl_c_during_verify_says_interrupted(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # A sparse 2 GiB file hashes for a few seconds: long enough to interrupt.
    big = tmp_path / "tree" / "big.bin"
    big.parent.mkdir()
    with open(big, "wb") as fh:
        fh.truncate(2 << 30)
    m = {
        "format": "dsmirror-manifest",
        "version": 1,
        "name": "sparse",
        "piece_size": 1 << 30,
        "files": [{"path": "big.bin", "size": 2 << 30, "sha256": "a" * 64, "pieces": ["b" * 64, "c" * 64]}],
    }
    mpath = tmp_path / "sparse.json"
    mpath.write_text(json.dumps(m))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from dsmirror.cli import main; main()",
            "verify",
            str(mpath),
            str(big.parent),
        ],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt it while it hashes (once it has the file open), not while Python is still importing.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        fds = Path(f"/proc/{proc.pid}/fd")
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(big) for fd in fds.iterdir()):
                break
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err
