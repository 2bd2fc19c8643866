"""``fsutil.datasync``: fdatasync where the system has it, F_FULLFSYNC or fsync where it has not
(macOS's ``os`` has no fdatasync: the store's commits called it directly)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsmirror._core import fsutil


def _written(tmp_path: Path) -> int:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 4096)
    return fd


def test_datasync_uses_fdatasync_where_there_is_one(tmp_path: Path) -> None:
    if not hasattr(os, "fdatasync"):
        pytest.skip("this system has no fdatasync")
    fd = _written(tmp_path)
    try:
        fsutil.datasync(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        fsutil.datasync(fd)  # a closed descriptor: the error is the caller's (storage_errors)


@pytest.mark.parametrize("fullfsync", [None, -1], ids=["no-F_FULLFSYNC", "F_FULLFSYNC-refused"])
def test_without_fdatasync_it_falls_back_to_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fullfsync: int | None
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.delattr(os, "fdatasync", raising=False)  # as on macOS
    monkeypatch.setattr(fsutil, "_F_FULLFSYNC", fullfsync)  # -1: a command fcntl refuses (EINVAL)
    monkeypatch.setattr(os, "fsync", fsync)
    fd = _written(tmp_path)
    try:
        fsutil.datasync(fd)
    finally:
        os.close(fd)
    assert synced == [fd]


def test_nothing_in_the_package_calls_os_fdatasync_directly() -> None:
    import dsmirror

    root = Path(dsmirror.__file__).parent
    calls = [p for p in root.rglob("*.py") if "os.fdatasync(" in p.read_text() and p.name != "fsutil.py"]
    assert not calls, f"use dsmirror._core.fsutil.datasync (macOS has no os.fdatasync): {calls}"
