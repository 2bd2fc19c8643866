"""The fetch engine on its own: the injected clock decides its timing, not the wall clock."""

from __future__ import annotations

from pathlib import Path

from dsmirror import FakeClock, Progress, PullFinished, create_manifest
from dsmirror._fetch.engine import EngineConfig, fetch
from dsmirror._fetch.local import MemorySource, local_source_info
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
