"""A source of bytes the resolver already holds in memory.

The small, non-LFS files of a Hugging Face repo are fetched while resolving, to learn their SHA-256
(see ``_hf``). ``MemorySource`` hands those bytes to the engine like any mirror would, so they cross
the network once and need no special case in the scheduler or the store; the engine verifies them
against their piece hashes like any other bytes. For a file it does not hold it answers
``SourceNotFound`` at once, without I/O, and the scheduler never asks it for that file again.

(Files already on disk — the destination, the HF cache, the Ollama store, other installs — are
reused by ``dsmirror._fetch.reuse`` before the engine starts; no source is needed for them.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dsmirror._core.errors import BadResponse, SourceNotFound
from dsmirror._fetch.source import Source
from dsmirror._formats.manifest import FileEntry
from dsmirror._schedule.info import SourceInfo

__all__ = ["MemorySource", "local_source_info"]

_CHUNK = 1 << 20


def local_source_info(name: str) -> SourceInfo:
    return SourceInfo(
        name=name, kind="local", host="localhost", region="local", priority=1, max_connections=2
    )


def _not_here(source: str, file: FileEntry) -> SourceNotFound:
    return SourceNotFound(f"{file.path} is not held by {source}", source=source)


@dataclass
class MemorySource(Source):
    """Serves whole files held in memory, keyed by manifest path."""

    info: SourceInfo
    data: Mapping[str, bytes]

    def has_file(self, file: FileEntry) -> bool:
        blob = self.data.get(file.path)
        return blob is not None and len(blob) == file.size

    @contextlib.contextmanager
    def open_range(self, file: FileEntry, start: int, end: int) -> Iterator[Iterator[bytes]]:
        if not self.has_file(file):
            raise _not_here(self.name, file)
        blob = self.data[file.path]
        if not 0 <= start <= end < len(blob):
            # A slice would quietly end short; the contract wants an error instead.
            raise BadResponse(
                f"bytes {start}-{end} are not within {file.path} ({len(blob)} bytes)", source=self.name
            )
        view = memoryview(blob)[start : end + 1]
        yield (bytes(view[i : i + _CHUNK]) for i in range(0, len(view), _CHUNK))
