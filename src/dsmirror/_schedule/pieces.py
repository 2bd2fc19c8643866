"""The pieces of a pull: which are free, which a connection has taken, which are done.

Like libtorrent's piece picker, one byte per piece records its state (a ``bytearray``: no ``Piece``
objects are made for it, so memory is a few bytes per piece)::

    FREE  --take-->  TAKEN  --finish-->  DONE
      ^                |                   |
      +---give_back----+                   |
      +----------------reopen--------------+   (its file failed its whole digest)

A cursor remembers where the first free piece may be (every free piece lies at or after it), so
handing out work does not rescan the done front of a large pull. The map also records which
sources spoiled which piece (sent bytes that failed its hash), so that the piece goes to someone
else (see "Failures" in ``scheduler``).

Costs stay flat in the piece count (a 700 GB model has 700k pieces of 1 MiB, and the scheduler is
asked something on every acquire and every turn of the engine's loop, under its lock): what it
asks is answered from counters that the transitions above keep up to date (free pieces and bytes,
free and unfinished pieces per file, the files with a free piece), and the next free piece, or the
next one that is not, is found by ``bytearray.find`` over a second byte per piece (1 = free):
memchr, in C, instead of a walk in Python. ``scripts/bench_scale.py`` measures it.

A caller that rules free pieces out by ranges can keep a third byte per piece, the *candidates*
(``reset_candidates``, ``drop_candidates``, ``next_candidate``): every free piece at first, then
those it did not drop; a piece that stops being free leaves them, and one that is free again
(given back, reopened) joins them, so whatever rule dropped the others is asked about it anew. A
LAN pull's mirrors use it for the free pieces not known to be in another machine's blocks
(``lan``): once those are dropped, finding this machine's next piece is one ``find``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from dsmirror._formats.manifest import Manifest

__all__ = ["DONE", "FREE", "TAKEN", "PieceMap"]

FREE, TAKEN, DONE = 0, 1, 2
_FROM_DONE = bytes([FREE] + [DONE] * 255)  # translate table: 0 (not done) -> FREE, else DONE
_FREE_FLAG = bytes([1] + [0] * 255)  # translate table: FREE -> 1, any other state -> 0


class PieceMap:
    """The state of every piece of ``m``; ``left`` counts those not done."""

    def __init__(self, m: Manifest, done: Sequence[bool] | bytes | bytearray) -> None:
        self.m = m
        self._state = bytearray(done).translate(_FROM_DONE)
        self._free = self._state.translate(_FREE_FLAG)  # 1 where free: searched with find()
        self.left = self._free.count(1)
        self._cursor = 0
        self._spoilers: dict[int, set[str]] = {}
        ranges = m.file_piece_ranges
        self._starts = [r.start for r in ranges]  # for file_of: a file's first piece
        self._last = [r.stop - 1 for r in ranges]  # a file's last piece, the one that may be short
        self._last_len = [f.size - (len(r) - 1) * m.piece_size for f, r in zip(m.files, ranges, strict=True)]
        self._file_free = [self._free.count(1, r.start, r.stop) for r in ranges]  # free pieces per file
        self._file_left = list(self._file_free)  # pieces not done per file (none is taken yet)
        self._free_count = self.left
        self._free_bytes = sum(
            k * m.piece_size - (m.piece_size - self._last_len[fi] if self._free[self._last[fi]] else 0)
            for fi, k in enumerate(self._file_free)
            if k
        )
        self._free_files = {fi for fi, k in enumerate(self._file_free) if k}
        self._sizes = [len(r) for r in ranges]  # pieces per file
        self._missing = list(self._starts)  # per file: no piece before this one is missing
        self._candidates: bytearray | None = None  # 1 = a candidate; None: every free piece is one

    def __len__(self) -> int:
        return len(self._state)

    def is_free(self, i: int) -> bool:
        return self._state[i] == FREE

    def is_done(self, i: int) -> bool:
        return self._state[i] == DONE

    def file_of(self, i: int) -> int:
        """The file piece ``i`` belongs to (without making its ``Piece``)."""
        # The last file starting at or before i: an empty file shares its start with the next one.
        return bisect.bisect_right(self._starts, i) - 1

    def first_free(self) -> int:
        """The first free piece (``len(self)`` if none); the cursor moves up to it."""
        self._cursor = self.next_free(self._cursor)
        return self._cursor

    def next_free(self, i: int) -> int:
        """The first free piece at or after ``i`` (``len(self)`` if none)."""
        k = self._free.find(1, i)
        return len(self._free) if k < 0 else k

    def last_free(self, i: int) -> int:
        """The last free piece before ``i`` (-1 if none)."""
        return self._free.rfind(1, 0, i)

    def next_not_free(self, i: int) -> int:
        """The first piece at or after ``i`` that is not free (``len(self)`` if none)."""
        k = self._free.find(0, i)
        return len(self._free) if k < 0 else k

    def reset_candidates(self) -> None:
        """Every free piece is a candidate again (the rule that dropped the others changed)."""
        self._candidates = None  # made again at the next drop

    def drop_candidates(self, lo: int, hi: int) -> None:
        """Pieces ``[lo, hi)`` are no candidates (until one of them is free again)."""
        if self._candidates is None:
            self._candidates = bytearray(self._free)
        hi = min(hi, len(self._candidates))
        self._candidates[lo:hi] = bytes(max(0, hi - lo))

    def next_candidate(self, i: int) -> int:
        """The first candidate at or after ``i`` (``len(self)`` if none)."""
        flags = self._free if self._candidates is None else self._candidates
        k = flags.find(1, i)
        return len(flags) if k < 0 else k

    @property
    def cursor(self) -> int:
        """No free piece lies before this one."""
        return self._cursor

    def free_count(self) -> int:
        return self._free_count

    def free_bytes(self) -> int:
        return self._free_bytes

    def free_files(self) -> set[int]:
        """The files that have a free piece (kept up to date: read it, do not change it)."""
        return self._free_files

    def file_done(self, fi: int) -> bool:
        return self._file_left[fi] == 0

    def file_untouched(self, fi: int) -> bool:
        """Whether every piece of file ``fi`` is free (none taken or done)."""
        return self._file_free[fi] == self._sizes[fi]

    def last_done(self, fi: int) -> int:
        """The last done piece of file ``fi`` (-1 if none)."""
        return self._state.rfind(DONE, self._starts[fi], self._last[fi] + 1)

    def first_missing(self, fi: int) -> int:
        """The first piece of file ``fi`` that is not done (its end if all are).

        A cursor per file that only moves forward while pieces finish (back on ``reopen``): over a
        pull, each piece is stepped over once.
        """
        k, stop, state = self._missing[fi], self._last[fi] + 1, self._state
        while k < stop and state[k] == DONE:
            k += 1
        self._missing[fi] = k
        return k

    def take(self, start: int, end: int) -> None:
        """Pieces ``[start, end)`` (free) are a connection's now."""
        fi = self.file_of(start)
        for k in range(start, end):
            fi = fi if k <= self._last[fi] else self.file_of(k)
            if self._state[k] == FREE:
                self._unfree(k, fi)
            self._state[k] = TAKEN

    def give_back(self, start: int, end: int) -> None:
        """The taken pieces of ``[start, end)`` are free again (a span ended or was cut short)."""
        fi = self.file_of(start) if start < end else 0
        for k in range(start, end):
            if self._state[k] == TAKEN:
                fi = fi if k <= self._last[fi] else self.file_of(k)
                self._state[k] = FREE
                self._refree(k, fi)
                self._cursor = min(self._cursor, k)

    def finish(self, i: int) -> bool:
        """Piece ``i`` verified and stored. False if it was done already (another copy won)."""
        state = self._state[i]
        if state == DONE:
            return False
        fi = self.file_of(i)
        if state == FREE:
            self._unfree(i, fi)
        self._state[i] = DONE
        self.left -= 1
        self._file_left[fi] -= 1
        return True

    def reopen(self, i: int) -> None:
        """Piece ``i``, counted as done, must be fetched again."""
        if self._state[i] == DONE:
            fi = self.file_of(i)
            self._state[i] = FREE
            self._refree(i, fi)
            self.left += 1
            self._file_left[fi] += 1
            self._cursor = min(self._cursor, i)
            self._missing[fi] = min(self._missing[fi], i)

    def _length(self, i: int, fi: int) -> int:
        return self._last_len[fi] if i == self._last[fi] else self.m.piece_size

    def _unfree(self, i: int, fi: int) -> None:
        """Piece ``i`` of file ``fi`` was free and is not any more: the counters follow."""
        self._free[i] = 0
        if self._candidates is not None:
            self._candidates[i] = 0
        self._free_count -= 1
        self._free_bytes -= self._length(i, fi)
        self._file_free[fi] -= 1
        if not self._file_free[fi]:
            self._free_files.discard(fi)

    def _refree(self, i: int, fi: int) -> None:
        """Piece ``i`` of file ``fi`` is free again."""
        self._free[i] = 1
        if self._candidates is not None:
            self._candidates[i] = 1
        self._free_count += 1
        self._free_bytes += self._length(i, fi)
        self._file_free[fi] += 1
        self._free_files.add(fi)

    # -- spoiled pieces --------------------------------------------------------------------------
    def spoil(self, i: int, source: str) -> None:
        """``source`` sent bytes for piece ``i`` that failed its hash."""
        self._spoilers.setdefault(i, set()).add(source)

    def spoilers(self, i: int) -> set[str] | None:
        return self._spoilers.get(i)

    def spoiled(self) -> dict[int, set[str]]:
        """Every spoiled piece and who spoiled it (read it, do not change it)."""
        return self._spoilers

    def forgive(self, i: int) -> None:
        """Piece ``i`` verified: who spoiled it before no longer matters."""
        self._spoilers.pop(i, None)
