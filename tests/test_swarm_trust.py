"""libtorrent sessions survive the end of a pull: the piece that completes a torrent, and the
torrent's removal right after its last pieces were added.

1. libtorrent 2.1 with hash checks off (a session that trusts its pieces: the manifest's own
   swarm) passes the last piece of a padded file inside ``add_piece`` (its pad blocks count as
   done); if that completes the torrent, it becomes a seed there, frees its piece picker and reads
   it for the next block: a segfault in its network thread (about 1 single-host ``hf://`` pull
   with ``--prefer p2p`` in 30; their derived torrent puts a small file first). ``SwarmSession``
   keeps the picker (``suggest_read_cache``).
2. libtorrent 2.1's default disk I/O frees a removed torrent's cached blocks while its own hashing
   threads may still read them; ``SwarmSession`` uses ``posix_disk_io``, which has no such threads.

See "Session settings" and "Disk I/O" in ``dsmirror._fetch.swarm.session``. The sessions run in a
child process, so that a crash fails the test instead of ending pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# The start of both children: a manifest of a small file (one block of data, then pad blocks in
# its derived torrent) and a larger one, of PS-byte pieces; add(ses, bt) adds its derived torrent
# as SwarmSource._add does, every piece at priority 0, and waits until libtorrent has checked it;
# inject(h, order) hands it pieces with add_piece as SwarmSource._feed does.
_PRELUDE = textwrap.dedent(
    """
    import hashlib, os, shutil, sys, time
    import libtorrent as lt
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._fetch.swarm.session import SwarmSession
    from dsmirror._fetch.swarm.torrent import check_torrent, derived_torrent
    from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes

    PS = int(sys.argv[1])
    files = {"a.json": os.urandom(19), "b.bin": os.urandom(int(sys.argv[2]) * PS + 5)}
    m = Manifest("trust", PS, tuple(
        FileEntry(p, len(d), hashlib.sha256(d).hexdigest(), NoPieceHashes(-(-len(d) // PS)))
        for p, d in files.items()))
    t = derived_torrent(m)
    pm = check_torrent(m, t)
    config = SwarmConfig(listen="127.0.0.1:0", lsd=False)

    def add(ses, bt):
        atp = lt.add_torrent_params()
        atp.ti = t.info()
        atp.save_path = bt
        atp.flags |= lt.torrent_flags.default_dont_download
        atp.piece_priorities = [0] * t.num_pieces
        h = ses.add_torrent(atp)
        while not h.status().has_metadata or h.status().state in (
            lt.torrent_status.states.checking_files, lt.torrent_status.states.checking_resume_data):
            time.sleep(0.005)
        return h

    def inject(h, order):
        for i in order:
            piece = m.pieces[i]
            data = files[piece.path][piece.offset : piece.offset + piece.length]
            h.add_piece(pm.to_torrent[i], data + bytes(pm.padded[i] - len(data)), 0)
    """
)


def _child(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``_PRELUDE`` + ``script`` in a child process with ``args`` (a crash fails the caller)."""
    src = Path(__file__).resolve().parent.parent / "src"
    env = {"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MALLOC_PERTURB_": "165"}
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _PRELUDE + script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


# Every piece at priority 0 but the small file's (as the swarm's bait piece), then every piece
# added, the small file's last, which completes the torrent.
_COMPLETE = textwrap.dedent(
    """
    how, bt = sys.argv[3], sys.argv[4]
    if how == "trusting":
        ses = SwarmSession(config, trust_pieces=True)
    else:  # pull --seed: the pull's session, then trust() to seed the derived torrent
        ses = SwarmSession(config)
        ses.trust()
    with ses.using():
        h = add(ses, bt)
        small = pm.to_torrent[m.file_piece_ranges[0][0]]
        prio = [0] * t.num_pieces
        prio[small] = 1  # the torrent wants a piece: it is downloading, not finished
        h.prioritize_pieces(prio)
        deadline = time.monotonic() + 10
        while h.status().state != lt.torrent_status.states.downloading:
            assert time.monotonic() < deadline, h.status().state
            time.sleep(0.01)
        inject(h, sorted(range(m.num_pieces), key=lambda i: pm.to_torrent[i] == small))
        while not all(h.have_piece(k) for k in range(t.num_pieces)):
            assert time.monotonic() < deadline, "libtorrent did not take every piece"
            time.sleep(0.01)
        print("seed", h.status().is_seeding, flush=True)
        ses.remove(h)
    ses.close()
    """
)


@pytest.mark.parametrize("how", ["trusting", "trust-later"])
def test_add_piece_that_completes_a_padded_torrent_does_not_crash(tmp_path: Path, how: str) -> None:
    p = _child(tmp_path, _COMPLETE, str(64 << 10), "3", how, str(tmp_path / "bt"))
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-3000:]}"
    assert "seed True" in p.stdout, p.stdout


# Sessions made as SwarmSource makes them, each given every piece with add_piece and its torrent
# removed (and libtorrent's folder deleted) at once, as at the end of a pull. libtorrent 2.1's
# default disk I/O (pread_disk_io) hashes written blocks in threads of its own, and removing a
# torrent frees its cached blocks without waiting for them: now and then a heap corrupted
# (malloc_consolidate(): unaligned fastbin chunk detected), a segfault in kick_hasher. That race
# is rare, so the child also checks what rules it out: the session's disk I/O runs in the
# session's thread (posix_disk_io), no disk thread ever starts.
_REMOVE_AT_ONCE = textwrap.dedent(
    """
    work = sys.argv[3]
    threads = len(os.listdir("/proc/self/task"))
    most = 0
    for k in range(12):
        ses = SwarmSession(config, trust_pieces=True)
        bt = os.path.join(work, f"bt{k}")
        with ses.using():
            h = add(ses, bt)
            inject(h, range(m.num_pieces))
            time.sleep(0.002 * k)
            most = max(most, len(os.listdir("/proc/self/task")) - threads)
            ses.remove(h)
            shutil.rmtree(bt, ignore_errors=True)
        ses.close()
    print("threads", most, flush=True)
    """
)


def test_a_torrent_removed_right_after_add_piece_leaves_no_disk_work_behind(tmp_path: Path) -> None:
    p = _child(tmp_path, _REMOVE_AT_ONCE, str(1 << 20), "6", str(tmp_path))
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr[-3000:]}"
    # The session's own thread, no more: no disk thread that could outlive a torrent's removal.
    assert p.stdout.split() == ["threads", "1"], p.stdout
