"""The manifest's own swarm with real piece hashes: a manifest with ``sha1`` (issue 13 item 5).

Its derived torrent is the v1 torrent of the manifest and its files (same info-hash as ``torrent
create --torrent-format v1``), libtorrent checks every piece of it, and dsmirror still checks
SHA-256: a liar is banned by libtorrent with nothing wrong stored; a manifest whose ``sha1`` is
wrong drops the swarm with a clear reason (mirrors fetch the rest); one whose ``sha1`` matches bad
bytes gets those bytes past libtorrent, and the manifest's SHA-256 still refuses them (the piece is
fetched again). The field itself: tests/test_manifest_sha1.py.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest

import dsmirror
from _liar import LIAR
from conftest import CliProcess, addr, free_port
from dsmirror import Event, PieceRejected, PullFinished, PullOptions, SourceDropped, SourceTrouble
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.source import SwarmSource
from dsmirror._fetch.swarm.torrent import (
    DERIVED_KEY,
    check_torrent,
    create_torrent,
    derived_torrent,
    own_swarm,
    with_torrent_hashes,
)
from dsmirror._formats.manifest import FileEntry, Manifest
from dsmirror._pull import resolve, run_plan
from dsmirror._verify.tree import create_manifest, v1_last_file
from dsmirror.testing import MirrorServer, write_random_tree

KiB = 1 << 10
PS = 64 * KiB
# Odd names, an empty file, short last pieces; the last file in torrent order ("zz/last.bin")
# ends on a short piece in one case, on a full piece in the other.
SHAPES = {
    "short-tail": {"b/model.bin": 5 * PS + 77, "a.json": 19, "empty": 0, "A-b.x": PS, "zz/last.bin": PS + 3},
    "full-tail": {"model.bin": 3 * PS + 1, "é.txt": 5, "zz/last.bin": 2 * PS, "zzz-empty": 0},
}


def _model(tmp: Path, sizes: dict[str, int], *, sha1: bool = True) -> tuple[Path, Manifest]:
    root = tmp / "files"
    write_random_tree(root, sizes, seed=3)
    return root, create_manifest(root, name="sha1 model", piece_size=PS, sha1=sha1)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_derived_torrent_of_a_manifest_with_sha1_is_its_v1_torrent(shape: str, tmp_path: Path) -> None:
    root, m = _model(tmp_path, SHAPES[shape])
    assert m.has_sha1
    derived = derived_torrent(m)
    assert derived is not None
    made = create_torrent(m, root, format="v1")  # libtorrent hashing the bytes itself
    assert derived.btih == made.btih and derived.btmh is None
    assert lt.bdecode(derived.info().info_section()) == lt.bdecode(made.info().info_section())
    assert derived.derived is None  # nothing of dsmirror's in the info dict: a plain torrent
    assert own_swarm(m, derived) and own_swarm(m, made)
    # Pinned by construction, also when the manifest records (only) its hybrid torrent.
    recorded = with_torrent_hashes(m, [create_torrent(m, root)])
    assert check_torrent(recorded, derived_torrent(recorded) or made).pinned
    assert not own_swarm(recorded, create_torrent(m, root))


def test_the_last_file_in_torrent_order_is_libtorrents() -> None:
    rnd = random.Random(13)
    alphabet = ["a", "b", "A", "-", ".", "0", "é", "_", "~", "Z"]
    flags = (
        lt.create_torrent.canonical_files_no_tail_padding
        | lt.create_torrent.v1_only
        | lt.create_torrent.canonical_files
    )
    for _ in range(300):
        paths: set[str] = set()
        while len(paths) < rnd.randint(1, 6):
            parts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 3))) for _ in range(3)]
            paths.add("/".join(parts[: rnd.randint(1, 3)]))
        if any(q.startswith(p + "/") for p in paths for q in paths):
            continue  # a file that is also a folder
        files = [FileEntry(p, rnd.choice([0, 1, 5000]), "", ()) for p in sorted(paths)]
        if not any(f.size for f in files):
            assert v1_last_file(files) is None
            continue
        ct = lt.create_torrent([lt.create_file_entry(f"r/{f.path}", f.size) for f in files], PS, flags)
        layout = ct.files()
        order = [
            str(layout.file_path(k))[2:]
            for k in range(layout.num_files())
            if not layout.file_flags(k) & lt.file_storage.flag_pad_file and layout.file_size(k)
        ]
        k = v1_last_file(files)
        assert k is not None and files[k].path == order[-1], (files, order)


def test_a_manifest_without_sha1_keeps_the_placeholder_torrent(tmp_path: Path) -> None:
    root, m = _model(tmp_path, SHAPES["short-tail"], sha1=False)
    old = derived_torrent(m)
    assert old is not None and old.derived == m.sha256  # the manifest's own, unchecked swarm
    info = lt.bdecode(old.info().info_section())
    assert info[DERIVED_KEY] == m.sha256.encode()
    assert old.btih != create_torrent(m, root, format="v1").btih
    assert own_swarm(m, old)
    # Pieces hashed with and without sha1 are the same manifest pieces.
    _, with_sha1 = _model(tmp_path / "again", SHAPES["short-tail"])
    assert [f.pieces for f in with_sha1.files] == [f.pieces for f in m.files]
    assert with_sha1.sha256 != m.sha256


# -- pulls over loopback ---------------------------------------------------------------------------
def _pull(
    tmp: Path, manifest: Manifest, dest: Path, mirror: MirrorServer | None, swarm: SwarmConfig
) -> tuple[list[Event], SwarmSource]:
    mpath = tmp / f"m-{manifest.sha256[:8]}.json"
    manifest.write(mpath)
    fd, name = tempfile.mkstemp(suffix=".yaml", dir=tmp)
    os.close(fd)
    lines = ["version: 1", "mirrors:"] if mirror else ["version: 1"]
    if mirror:
        lines += ["  - name: upstream", "    kind: http", f'    url: "{mirror.url}"']
    Path(name).write_text("\n".join(lines) + "\n")
    catalog = dsmirror.load_default_catalog({}, [Path(name)], replace=True)
    settings = dsmirror.Settings.from_env({"HOME": str(tmp / "home")})
    opts = PullOptions(dest=dest, reuse=False, swarm=swarm, prefer="p2p")
    plan = resolve(str(mpath), catalog, settings, opts)
    (sw,) = [s for s in plan.swarms if isinstance(s, SwarmSource)]
    return list(run_plan(plan, opts, settings=settings)), sw


def _done(events: list[Event]) -> PullFinished:
    done = [e for e in events if isinstance(e, PullFinished)]
    assert done, events[-3:]
    return done[-1]


def _same(root: Path, dest: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            assert (dest / p.relative_to(root)).read_bytes() == p.read_bytes(), p


def _cfg(me: int, *peers: int) -> SwarmConfig:
    return SwarmConfig(listen=addr(me), peers=tuple(addr(p) for p in peers), lsd=False)


def _liar(torrent: Any, folder: Path, port: int, tmp: Path) -> subprocess.Popen[str]:
    path = tmp / "liar.torrent"
    torrent.write(path)
    p = subprocess.Popen(
        [sys.executable, LIAR, str(path), str(folder), addr(port)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and '"LiarReady"' in p.stdout.readline()
    return p


def _pull_beside_liar(
    tmp: Path, root: Path, manifest: Manifest, torrent: Any, bad: Path
) -> tuple[list[Event], SwarmSource, int]:
    """Pull ``manifest`` from a mirror of ``root`` and a swarm whose one peer is a liar seeding
    ``bad`` as ``torrent``; the pulled files must be ``root``'s (never the bad bytes). Returns the
    events, the swarm source and the liar's port."""
    liar_port, me = free_port(), free_port()
    liar = _liar(torrent, bad, liar_port, tmp)
    try:
        with MirrorServer(root, host="127.0.0.1") as mirror:
            events, sw = _pull(tmp, manifest, tmp / "out", mirror, _cfg(me, liar_port))
    finally:
        liar.kill()
        liar.wait(10)
    _same(root, tmp / "out")
    return events, sw, liar_port


def _rot(root: Path, tmp: Path, path: str, pieces: range) -> Path:
    """A copy of ``root`` with one byte of each of ``pieces`` of ``path`` flipped."""
    bad = tmp / "rotten"
    shutil.copytree(root, bad)
    data = bytearray((bad / path).read_bytes())
    for k in pieces:
        data[k * PS + 10] ^= 0xFF
    (bad / path).write_bytes(bytes(data))
    return bad


def test_a_pull_with_sha1_takes_the_plain_v1_torrents_swarm_with_checks_on(
    seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    root, m = _model(tmp_path, SHAPES["short-tail"])
    # Published for sharing with its v1 torrent (no mirror: a pull from peers needs one recorded).
    m = with_torrent_hashes(m, [create_torrent(m, root, format="v1")])
    assert m.torrent == {"btih_v1only": derived_torrent(m).btih}  # type: ignore[union-attr]
    mpath = tmp_path / "m.json"
    m.write(mpath)
    port, me = free_port(), free_port()
    # The seeder hashes the files into the plain v1 torrent; the pull derives its own from the manifest.
    seeder(mpath, root, port, "--torrent-format", "v1")
    events, sw = _pull(tmp_path, m, tmp_path / "out", None, _cfg(me, port))
    done = _done(events)
    _same(root, tmp_path / "out")
    assert not sw.trusting and sw.own and not sw.session.trust_pieces  # libtorrent checked each piece
    assert done.delivered_by_source == {"swarm": m.total_size} and done.corrupt_bytes == 0


def test_a_liar_is_banned_by_libtorrent_and_nothing_wrong_is_stored(tmp_path: Path) -> None:
    root, m = _model(tmp_path, SHAPES["short-tail"])
    bad = _rot(root, tmp_path, "b/model.bin", range(6))
    events, sw, liar_port = _pull_beside_liar(tmp_path, root, m, derived_torrent(m), bad)
    done = _done(events)
    bans = [e.message for e in events if isinstance(e, SourceTrouble) and "banned peer" in e.message]
    assert any(addr(liar_port) in b and "failed the hash check" in b for b in bans), bans
    assert [e for e in events if isinstance(e, PieceRejected)]
    assert sw.stats.failed > 0 and done.corrupt_bytes == 0  # libtorrent threw them away


def test_a_wrong_sha1_drops_the_swarm_with_a_clear_reason_and_the_mirror_serves(tmp_path: Path) -> None:
    root, good = _model(tmp_path, SHAPES["short-tail"])
    wrong = Manifest(
        good.name,
        good.piece_size,
        tuple(
            FileEntry(f.path, f.size, f.sha256, f.pieces, hashlib.sha1(f.sha1).digest() * len(f.pieces))
            if f.sha1
            else f
            for f in good.files
        ),
    )
    # Throttled (3 s for the model): the swarm is up and has its pieces checked before the end.
    with MirrorServer(root, host="127.0.0.1", rate=150_000) as mirror:
        events, _ = _pull(tmp_path, wrong, tmp_path / "out", mirror, _cfg(free_port()))
    done = _done(events)
    _same(root, tmp_path / "out")
    dropped = [e.reason for e in events if isinstance(e, SourceDropped) and e.source == "swarm"]
    assert dropped and "sha1 piece hashes are wrong" in dropped[0], dropped
    assert done.delivered_by_source.get("upstream") == good.total_size and done.corrupt_bytes == 0


def test_bytes_matching_a_forged_sha1_are_still_refused_by_sha256(tmp_path: Path) -> None:
    root, good = _model(tmp_path, SHAPES["short-tail"])
    bad = _rot(root, tmp_path, "b/model.bin", range(2, 3))
    # A manifest whose sha1 of piece 2 of b/model.bin names the rotten bytes (its SHA-256 does not).
    forged_sha1 = hashlib.sha1((bad / "b/model.bin").read_bytes()[2 * PS : 3 * PS]).digest()
    files = []
    for f in good.files:
        if f.path == "b/model.bin" and f.sha1:
            f = FileEntry(f.path, f.size, f.sha256, f.pieces, f.sha1[:40] + forged_sha1 + f.sha1[60:])
        files.append(f)
    forged = Manifest(good.name, good.piece_size, tuple(files))
    events, _, _ = _pull_beside_liar(tmp_path, root, forged, derived_torrent(forged), bad)
    done = _done(events)
    forged_piece = forged.file_piece_ranges[[f.path for f in forged.files].index("b/model.bin")][2]
    rejected = [e for e in events if isinstance(e, PieceRejected) and e.piece == forged_piece]
    assert rejected, "the swarm delivered no bad piece: the test proved nothing"
    assert done.delivered_by_source.get("swarm", 0) > 0 and done.delivered_by_source.get("upstream", 0) > 0


def test_a_rotten_dsmirror_seeder_of_a_checked_torrent_serves_no_bad_piece(
    seeder: Callable[..., CliProcess], tmp_path: Path
) -> None:
    # Bit rot after the files were verified: dsmirror seed adds the torrent in seed mode, and with
    # real piece hashes libtorrent checks each piece before it first serves it (with placeholder
    # hashes it cannot: tests/test_lan_faults.py, the manifest without sha1).
    root, m = _model(tmp_path, SHAPES["short-tail"])
    bad = _rot(root, tmp_path, "b/model.bin", range(6))
    mpath, tpath = tmp_path / "m.json", tmp_path / "derived.torrent"
    m.write(mpath)
    t = derived_torrent(m)
    assert t is not None
    t.write(tpath)
    port, me = free_port(), free_port()
    seeding = seeder(mpath, bad, port, "--torrent", tpath)
    with MirrorServer(root, host="127.0.0.1", rate=400_000) as mirror:
        events, sw = _pull(tmp_path, m, tmp_path / "out", mirror, _cfg(me, port))
    done = _done(events)
    _same(root, tmp_path / "out")
    assert done.corrupt_bytes == 0 and sw.stats.failed == 0  # nothing bad even reached libtorrent
    assert not [e for e in events if isinstance(e, PieceRejected)]
    assert done.delivered_by_source.get("swarm", 0) > 0  # the seeder served its good pieces
    seeding.proc.terminate()
    seeding.finish(timeout=30)
