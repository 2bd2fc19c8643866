"""The pieces of a pull: which are free, which a connection has taken, which are done.

Like libtorrent's piece picker, one byte per piece records its state::

    FREE  --take-->  TAKEN  --finish-->  DONE
      ^                |                   |
      +---give_back----+                   |
      +----------------reopen--------------+   (its file failed its whole digest)

A cursor remembers where the first free piece may be (every free piece lies at or after it), so
handing out work does not rescan the done front of a large pull. The map also records which
sources spoiled which piece (sent bytes that failed its hash), so that the piece goes to someone
else (see "Failures" in ``scheduler``).
"""

from __future__ import annotations

from collections.abc import Sequence

from dsmirror._formats.manifest import Manifest

__all__ = ["DONE", "FREE", "TAKEN", "PieceMap"]

FREE, TAKEN, DONE = 0, 1, 2


class PieceMap:
    """The state of every piece of ``m``; ``left`` counts those not done."""

    def __init__(self, m: Manifest, done: Sequence[bool] | bytes | bytearray) -> None:
        self.m = m
        self._state = bytearray(DONE if d else FREE for d in done)
        self.left = sum(1 for d in done if not d)
        self._cursor = 0
        self._spoilers: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._state)

    def is_free(self, i: int) -> bool:
        return self._state[i] == FREE

    def is_done(self, i: int) -> bool:
        return self._state[i] == DONE

    def first_free(self) -> int:
        """The first free piece (``len(self)`` if none); the cursor moves up to it."""
        n = len(self._state)
        i = self._cursor
        while i < n and self._state[i] != FREE:
            i += 1
        self._cursor = i
        return i

    @property
    def cursor(self) -> int:
        """No free piece lies before this one."""
        return self._cursor

    def free_count(self) -> int:
        return sum(1 for st in self._state if st == FREE)

    def free_bytes(self) -> int:
        return sum(p.length for p in self.m.pieces if self._state[p.index] == FREE)

    def free_files(self) -> set[int]:
        """The files that have a free piece."""
        return {self.m.pieces[i].file_index for i, st in enumerate(self._state) if st == FREE}

    def file_done(self, fi: int) -> bool:
        return all(self._state[k] == DONE for k in self.m.file_piece_ranges[fi])

    def take(self, start: int, end: int) -> None:
        """Pieces ``[start, end)`` (free) are a connection's now."""
        for k in range(start, end):
            self._state[k] = TAKEN

    def give_back(self, start: int, end: int) -> None:
        """The taken pieces of ``[start, end)`` are free again (a span ended or was cut short)."""
        for k in range(start, end):
            if self._state[k] == TAKEN:
                self._state[k] = FREE
                self._cursor = min(self._cursor, k)

    def finish(self, i: int) -> bool:
        """Piece ``i`` verified and stored. False if it was done already (another copy won)."""
        if self._state[i] == DONE:
            return False
        self._state[i] = DONE
        self.left -= 1
        return True

    def reopen(self, i: int) -> None:
        """Piece ``i``, counted as done, must be fetched again."""
        if self._state[i] == DONE:
            self._state[i] = FREE
            self.left += 1
            self._cursor = min(self._cursor, i)

    # -- spoiled pieces --------------------------------------------------------------------------
    def spoil(self, i: int, source: str) -> None:
        """``source`` sent bytes for piece ``i`` that failed its hash."""
        self._spoilers.setdefault(i, set()).add(source)

    def spoilers(self, i: int) -> set[str] | None:
        return self._spoilers.get(i)

    def forgive(self, i: int) -> None:
        """Piece ``i`` verified: who spoiled it before no longer matters."""
        self._spoilers.pop(i, None)
