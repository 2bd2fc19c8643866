"""Python exiting while a libtorrent session is in use must not abort the process.

libtorrent's binding releases the GIL in every call and takes it back in a C++ destructor; a
thread that comes back after the interpreter began to finalize is ended with ``pthread_exit``,
whose forced unwind through that destructor calls ``std::terminate``: "terminate called without
an active exception", exit code 134. dsmirror stops and closes its sessions before that (see
"Closing sessions" in ``dsmirror._fetch.swarm.session``). Each case runs in a fresh interpreter
whose main thread returns while another thread is still seeding or pulling, as a test that failed
half-way, an embedding program, or a CLI command left behind by an exception would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from dsmirror._core.errors import Interrupted
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.session import SwarmSession

PRELUDE = textwrap.dedent(
    """
    import socket, sys, threading, time
    from pathlib import Path
    import dsmirror
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._share.seed import SeedTarget, seed
    from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes
    from dsmirror.testing import write_random_tree

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    tmp = Path(sys.argv[1])
    root = tmp / "model"
    root.mkdir(parents=True)
    write_random_tree(root, {"a.bin": 3_000_000, "b.bin": 1_000_000}, seed=1)
    manifest = dsmirror.create_manifest(root, name="exit-test", piece_size=64 << 10)
    torrent = create_torrent(manifest, root)
    sp = free_port()
    seeding = threading.Event()

    def run_seed():
        cfg = SwarmConfig(listen=f"127.0.0.1:{sp}", lsd=False, upload_rate=1_000_000)
        for _ev in seed([SeedTarget(torrent, root)], cfg, interval=0.05):
            seeding.set()

    threading.Thread(target=run_seed, daemon=True).start()
    assert seeding.wait(30), "seeding did not start"
    """
)

# Nothing stops the seeding thread: it is inside libtorrent when the main thread returns.
SEEDING = PRELUDE + "time.sleep(0.2)\n"

# A pull from the (rate-limited) seeder runs in a thread: the engine's swarm thread is inside
# libtorrent when the main thread returns half-way through the pull.
PULLING = PRELUDE + textwrap.dedent(
    """
    from dsmirror import Progress, PullOptions
    from dsmirror._pull import resolve, run_plan

    manifest = with_torrent_hashes(manifest, [torrent])
    manifest.write(tmp / "m.json")
    torrent.write(tmp / "m.torrent")
    (tmp / "cat.yaml").write_text("version: 1\\nmirrors:\\n")
    catalog = dsmirror.load_default_catalog({}, [tmp / "cat.yaml"], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp / "home")})
    cfg = SwarmConfig(listen=f"127.0.0.1:{free_port()}", peers=(f"127.0.0.1:{sp}",), lsd=False,
                      torrent=tmp / "m.torrent")
    opts = PullOptions(dest=tmp / "out", reuse=False, swarm=cfg)
    progressing = threading.Event()

    def run_pull():
        plan = resolve(str(tmp / "m.json"), catalog, settings, opts)
        for ev in run_plan(plan, opts, settings=settings):
            if isinstance(ev, Progress) and 0 < ev.verified_bytes < ev.total_bytes:
                progressing.set()

    threading.Thread(target=run_pull, daemon=True).start()
    assert progressing.wait(60), "the pull made no progress"
    time.sleep(0.1)
    """
)


@pytest.mark.parametrize("script", [SEEDING, PULLING], ids=["seeding", "pulling"])
def test_exit_with_a_session_in_use_is_clean(script: str, tmp_path: Path) -> None:
    for attempt in range(2):  # without the fix each run aborts almost every time
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", script, str(tmp_path / f"run{attempt}")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "terminate called" not in r.stderr, r.stderr
        assert "Fatal Python error" not in r.stderr, r.stderr
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert time.monotonic() - started < 60


def test_close_waits_for_the_thread_using_the_session() -> None:
    session = SwarmSession(SwarmConfig(listen="127.0.0.1:0", lsd=False))
    inside = threading.Event()
    turns: list[bool] = []

    def loop() -> None:
        with session.using():
            inside.set()
            while not session.stopping:
                session.alerts(0.05)  # a call into libtorrent, GIL released
            turns.append(session.destroyed)  # close() has not destroyed it under us

    t = threading.Thread(target=loop)
    t.start()
    assert inside.wait(10)
    session.close()
    t.join(10)
    assert turns == [False]
    assert session.closed and session.destroyed
    session.close()  # idempotent
    with pytest.raises(Interrupted), session.using():
        pass


def test_a_session_close_gave_up_on_is_destroyed_by_its_last_user() -> None:
    session = SwarmSession(SwarmConfig(listen="127.0.0.1:0", lsd=False))
    release = threading.Event()

    def busy() -> None:
        with session.using():
            release.wait(10)  # not looking at session.stopping

    t = threading.Thread(target=busy)
    t.start()
    time.sleep(0.1)
    session.close(timeout=0.2)
    assert session.closed and not session.destroyed
    release.set()
    t.join(10)
    assert session.destroyed
