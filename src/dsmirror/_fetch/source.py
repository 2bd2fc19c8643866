"""The interface every kind of source implements (HTTP mirrors, registries, local copies).

``dsmirror.testing.conformance`` holds the checks every implementation must pass.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

from dsmirror._formats.manifest import FileEntry
from dsmirror._schedule.info import SourceInfo

__all__ = ["Source", "SourceInfo"]


class Source(ABC):
    """A stream source. Implementations must be safe to call from several threads at once."""

    info: SourceInfo

    @property
    def name(self) -> str:
        return self.info.name

    @abstractmethod
    def open_range(
        self, file: FileEntry, start: int, end: int
    ) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """Yield the bytes ``[start, end]`` (inclusive) of ``file``, exactly, or raise SourceError."""

    def has_file(self, file: FileEntry) -> bool:
        """Whether this source can serve ``file`` at all (by path and digest)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
