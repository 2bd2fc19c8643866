"""The pieces of a pull: which are free, which a connection has taken, which are done.

Like libtorrent's piece picker, one byte per piece records its state (a ``bytearray``, searched and
counted in C per file: no ``Piece`` objects are made for it, so memory is one byte per piece)::

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
_FROM_DONE = bytes([FREE] + [DONE] * 255)  # translate table: 0 (not done) -> FREE, else DONE


class PieceMap:
    """The state of every piece of ``m``; ``left`` counts those not done."""

    def __init__(self, m: Manifest, done: Sequence[bool] | bytes | bytearray) -> None:
        self.m = m
        self._state = bytearray(done).translate(_FROM_DONE)
        self.left = self._state.count(FREE)
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
        i = self._state.find(FREE, self._cursor)
        self._cursor = len(self._state) if i < 0 else i
        return self._cursor

    @property
    def cursor(self) -> int:
        """No free piece lies before this one."""
        return self._cursor

    def free_count(self) -> int:
        return self._state.count(FREE)

    def free_bytes(self) -> int:
        total, ps = 0, self.m.piece_size
        for f, r in zip(self.m.files, self.m.file_piece_ranges, strict=True):
            if r:
                short = ps - (f.size - (len(r) - 1) * ps) if self._state[r.stop - 1] == FREE else 0
                total += self._state.count(FREE, r.start, r.stop) * ps - short
        return total

    def free_files(self) -> set[int]:
        """The files that have a free piece."""
        return {
            fi
            for fi, r in enumerate(self.m.file_piece_ranges)
            if self._state.find(FREE, r.start, r.stop) >= 0
        }

    def file_done(self, fi: int) -> bool:
        r = self.m.file_piece_ranges[fi]
        return self._state.count(DONE, r.start, r.stop) == len(r)

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
