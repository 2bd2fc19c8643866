"""The owner of a split piece at its cut: it stops reading there and takes its helper's part.

Two in-process sources stand in for mirrors, so the test decides exactly when bytes come: a slow
one that paces its chunks, and a fast one whose requests from inside a piece (a split helper's)
are answered late. Nothing here measures speed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import collect
from dsmirror import PullFinished, create_manifest
from dsmirror._core.errors import SourceUnavailable
from dsmirror._fetch.engine import fetch
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import FileEntry, Manifest
from dsmirror._journal.store import Store
from dsmirror._schedule.info import SourceInfo
from dsmirror.testing import write_random_tree

KiB = 1 << 10
MiB = 1 << 20
PIECE = 1 * MiB

pytestmark = pytest.mark.timeout(60)


class _Closable(Source):
    def __init__(self, name: str, root: Path) -> None:
        self.info = SourceInfo(name=name, kind="http", host=name, max_connections=1)
        self.root = root
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def _read(self, file: FileEntry, start: int, end: int) -> bytes:
        with open(self.root / file.path, "rb") as f:
            f.seek(start)
            return f.read(end - start + 1)


class Paced(_Closable):
    """16 KiB every 10 ms (about 1.6 MiB/s). With ``hold``, it sends every byte of a range but the
    last and then nothing more until it is closed: a stream nobody should wait on."""

    def __init__(self, name: str, root: Path, *, hold: bool) -> None:
        super().__init__(name, root)
        self.hold = hold
        self.held = 0  # streams that reached the held-back last byte

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        yield self._chunks(self._read(file, start, end))

    def _chunks(self, data: bytes) -> Iterator[bytes]:
        stop = len(data) - 1 if self.hold else len(data)
        for i in range(0, stop, 16 * KiB):
            if self.closed.wait(0.01):
                raise SourceUnavailable("closed", source=self.name)
            yield data[i : min(i + 16 * KiB, stop)]
        if self.hold:
            self.held += 1
            self.closed.wait()
            raise SourceUnavailable("closed", source=self.name)
        return


class LateHelper(_Closable):
    """Answers every request after 50 ms; one that starts inside a piece (a split helper's) after
    ``late`` more seconds, or with ``fail`` it fails then."""

    def __init__(self, name: str, root: Path, *, late: float, fail: bool = False) -> None:
        super().__init__(name, root)
        self.late, self.fail = late, fail
        self.inside = 0  # requests that started inside a piece

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        self.closed.wait(0.05)
        if start % PIECE:
            self.inside += 1
            self.closed.wait(self.late)
            if self.fail and self.inside == 1:
                raise SourceUnavailable("the helper's request failed", source=self.name)
        yield iter([self._read(file, start, end)])


def _model(tmp_path: Path) -> tuple[Path, Manifest]:
    root = tmp_path / "model"
    write_random_tree(root, {"big.bin": 4 * PIECE}, seed=5)
    return root, create_manifest(root, name="split-join", piece_size=PIECE)


def _pull(tmp_path: Path, m: Manifest, sources: list[Source]) -> PullFinished:
    with Store.open(tmp_path / "out", m) as store:
        events = collect(fetch(m, sources, store), deadline=20)
    done = [e for e in events if isinstance(e, PullFinished)]
    assert len(done) == 1
    return done[0]


def test_the_owner_waits_at_its_cut_instead_of_reading_on(tmp_path: Path) -> None:
    # The slow owner passes its cut before its helper's part arrives (1 s late), and its stream
    # then brings every byte of the piece but the last (in about 0.6 s) and holds the connection
    # open. An owner that read on would wait on that stream for good; it must stop at its cut
    # and take the helper's part.
    root, m = _model(tmp_path)
    slow = Paced("slow", root, hold=True)
    fast = LateHelper("fast", root, late=1.0)
    done = _pull(tmp_path, m, [slow, fast])
    assert (tmp_path / "out" / "big.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert done.split_pieces == 1 and fast.inside == 1, (done, fast.inside)
    assert slow.held == 0  # it never read up to the held-back byte
    assert done.delivered_by_source["slow"] > 0 and done.corrupt_bytes == 0


def test_the_owner_goes_on_when_its_helper_fails(tmp_path: Path) -> None:
    # The waiting owner's helper fails: the piece goes back with the owner's front, and the pull
    # completes from there with correct bytes.
    root, m = _model(tmp_path)
    slow = Paced("slow", root, hold=False)
    fast = LateHelper("fast", root, late=0.3, fail=True)
    done = _pull(tmp_path, m, [slow, fast])
    assert (tmp_path / "out" / "big.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert fast.inside >= 1 and done.corrupt_bytes == 0
    assert sum(done.delivered_by_source.values()) == m.total_size
