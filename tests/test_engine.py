"""The fetch engine on its own: the injected clock decides its timing, not the wall clock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dsmirror import FakeClock, Progress, PullFinished, create_manifest
from dsmirror._core.errors import IntegrityError
from dsmirror._fetch.engine import EngineConfig, fetch
from dsmirror._fetch.local import MemorySource, local_source_info
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes
from dsmirror._journal.store import Store
from dsmirror.testing import write_random_tree

KiB = 1 << 10


def test_the_engine_reads_the_injected_clock(tmp_path: Path) -> None:
    """A fake clock that never moves: the pull completes, its events report no time at all."""
    root = tmp_path / "model"
    write_random_tree(root, {"a.bin": 300 * KiB, "b/c.bin": 70 * KiB}, seed=3)
    m = create_manifest(root, name="clocked", piece_size=64 * KiB)
    data = {f.path: (root / f.path).read_bytes() for f in m.files}
    clock = FakeClock()
    # Progress every 0 s of the fake clock: a snapshot each loop turn, all at the same instant.
    cfg = EngineConfig(progress_interval=0.0)
    with Store.open(tmp_path / "out", m) as store:
        events = list(
            fetch(m, [MemorySource(local_source_info("mem"), data)], store, config=cfg, clock=clock)
        )
    done = [e for e in events if isinstance(e, PullFinished)]
    assert done and done[0].seconds == 0.0
    assert done[0].delivered_by_source == {"mem": m.total_size}
    # The rate needs a second of the pull's clock: none passed, so none is known.
    assert all(e.rate == 0.0 for e in events if isinstance(e, Progress))
    for f in m.files:
        assert (tmp_path / "out" / f.path).read_bytes() == data[f.path]


def _whole_file_only(root: Path) -> Manifest:
    """A manifest of ``root`` that publishes whole-file SHA-256 only (as a registry's listing)."""
    full = create_manifest(root, name="registry", piece_size=64 * KiB)
    files = tuple(FileEntry(f.path, f.size, f.sha256, NoPieceHashes(len(f.pieces))) for f in full.files)
    return Manifest(full.name, full.piece_size, files)


def test_pieces_without_hashes_are_hashed_once_when_nothing_needs_their_own_digest(tmp_path: Path) -> None:
    """Issue 14: with one stream source there are no witnesses to compare copies by their digests,
    so the engine does not hash such pieces on its own: the store's whole-file hasher is the only
    one (each byte hashed once). The provenance still names the sender, with no digest, and no piece
    hashes are learned; the whole-file digest still decides."""
    root = tmp_path / "model"
    write_random_tree(root, {"a.bin": 300 * KiB, "b/c.bin": 70 * KiB}, seed=4)
    m = _whole_file_only(root)
    data = {f.path: (root / f.path).read_bytes() for f in m.files}
    with Store.open(tmp_path / "out", m) as store:
        list(fetch(m, [MemorySource(local_source_info("mem"), data)], store))
        assert dict(store.provenance) == {i: ("mem", "") for i in range(m.num_pieces)}
        assert all(store.file_verified(fi) for fi in range(len(m.files)))
        learned = store.learned_manifest()
    assert [f.pieces[0] for f in learned.files] == ["", ""]  # nothing learned without digests
    for f in m.files:
        assert (tmp_path / "out" / f.path).read_bytes() == data[f.path]

    # A wrong whole-file digest still fails: nothing else vouched for the bytes.
    bad = Manifest(
        m.name, m.piece_size, (FileEntry(m.files[0].path, m.files[0].size, "0" * 64, m.files[0].pieces),)
    )
    with Store.open(tmp_path / "bad", bad) as store:
        one = {bad.files[0].path: data[bad.files[0].path]}
        with pytest.raises(IntegrityError, match="SHA-256"):
            list(fetch(bad, [MemorySource(local_source_info("mem"), one)], store))


def test_pieces_without_hashes_keep_their_digests_for_witnesses(tmp_path: Path) -> None:
    """Two stream sources: witnesses compare copies by the pieces' own digests, so they are hashed
    as they stream in (and learned once the file matched)."""
    root = tmp_path / "model"
    write_random_tree(root, {"a.bin": 300 * KiB}, seed=5)
    m = _whole_file_only(root)
    data = {f.path: (root / f.path).read_bytes() for f in m.files}
    sources = [MemorySource(local_source_info(name), data) for name in ("m1", "m2")]
    with Store.open(tmp_path / "out", m) as store:
        list(fetch(m, sources, store))
        digests = {i: d for i, (_, d) in store.provenance.items()}
        learned = store.learned_manifest()
    blob = data["a.bin"]
    want = [hashlib.sha256(blob[k : k + 64 * KiB]).hexdigest() for k in range(0, len(blob), 64 * KiB)]
    assert [digests[i] for i in range(m.num_pieces)] == want
    assert list(learned.files[0].pieces) == want
