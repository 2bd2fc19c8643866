"""Witnesses: catching a lying source early where no piece hashes are published.

The problem
    Hugging Face publishes one SHA-256 per LFS file, the Ollama registry one digest per blob: no
    piece hashes. A pull from several sources of such a file learns that some source lied only
    when the whole file is hashed at its end, and then not *which* source or *where*. Fetching
    one suspect's share again and comparing (the repair before this module) cost about 2.4x the
    file in the 20 MB case measured, and for a 404 GB blob it is a second download.

Why small blocks, not whole pieces
    The check is the one a reader would do by hand: ask a second source for the same bytes and
    compare. What it costs is the bytes asked for, so the question is which bytes buy the most
    evidence. A liar that damages a *region* (a bad disk extent, a corrupt cache segment, a
    tampered tensor) spoils every block of that region; one that flips a single byte spoils one
    block. Let ``B`` be the block compared, ``s`` the spacing of bad bytes in a damaged region.
    A block finds a bad byte with probability about ``min(1, B / s)`` for ``B`` bytes, so the
    evidence per byte fetched is ``1 / s`` for any ``B <= s``, and a whole 8 MiB piece (``B`` =
    the piece) buys 128 times less evidence per byte than 64 KiB blocks when ``s`` is 64 KiB, and
    512 times less than 16 KiB blocks spread over the same piece when the damage is a few bytes
    in one place. For a *single* flipped byte nothing sampled beats chance: a share ``f`` of the
    bytes compared finds it with probability ``f``, whatever the unit. So: many small blocks
    (``block``, 16 KiB: an HTTP request's headers are a few hundred bytes, about 2% of it), spread
    over every piece of a source (stratified: one random block in each of ``n`` equal slices of
    the piece), rather than a few whole pieces. The checked source cannot tell which of its bytes
    are checked: the comparison fetch goes to *another* source, after the piece has landed.

Who is checked how much: trust earned by passing checks
    A source nobody has vouched for yet has a share ``start_share`` (1.5%) of its bytes compared;
    each block that agrees with another source moves it towards ``floor_share`` (0.5%), halfway
    after ``trust_half`` passed blocks (``share``). Why not a flat rate: the cost of a liar is what
    it delivered before it was caught, and that is smallest when checks are densest while a source
    is still unproven; why not the start rate throughout: when nobody lies, the checks are the
    whole overhead. With 8 MiB pieces even the floor puts at least two random 16 KiB blocks in
    every piece (``0.005 * 8 MiB / 16 KiB = 2.56``), so damage covering a piece's blocks at a
    density ``c`` survives one piece with probability ``(1 - c) ** 2.56`` and ``k`` such pieces
    with that to the power ``k``: a liar that starts late, after it earned trust, is still caught
    within a few pieces of damage, long before a file of a gigabyte ends. Overhead when nobody
    lies: the bootstrap of each source (a few MiB) plus ``floor_share`` of the rest; measured on
    loopback, three mirrors at 64 MB/s: checks 1.0% of a 1.1 GiB file (the mirrors' counters,
    which also count what streams cut short left in flight, 1.6-1.75%), 1.5% of a 24 MiB one
    (``scripts/bench_liars.py`` prints it).

A disagreement, and who pays for it
    When the witness's block differs from the stored one, a third source arbitrates (``judge``):
    the one the other two contradict lied, and is banned with the evidence in the reason. With two
    sources only, nobody can be convicted by a block: the disagreement is kept as evidence and the
    whole-file digest decides. A convicted source's bytes are suspect, but fetching all of them
    again would cost its whole share — the 2.4x of before, and the reason a liar caught late used
    to be expensive. Instead:

    - the damaged region is *grown*: from the bad block outwards, the liar's bytes are compared
      with the (now vouched) witness until ``grow_clean`` bytes agree on each side, within the
      liar's own contiguous pieces; every block that differs is replaced in place by the witness's
      bytes. The cost is the damaged region plus twice ``grow_clean``, i.e. what must be fetched
      anyway to repair it;
    - every other piece the liar delivered in a file not yet verified is *audited*: a share
      ``audit_share`` of its blocks compared, and the region grown around each bad one.

    The whole-file digest stays the final authority: a file is installed only when it matches,
    and nothing above is more than a way to make it match cheaply.

When the whole file still fails
    Then the evidence is what the sources sent, per block, so far; the repair audits the file's
    pieces at ``final_first`` (1/64 of their bytes), banned and least trusted sources first,
    doubling the share each round that finds nothing (``final_shares``). A region of ``R`` bytes
    is found after about ``file * B / R`` bytes compared — 3% of a 24 MiB file for a 512 KiB
    region — instead of one source's whole share. Only after ``final_last`` (1/4) found nothing
    (sparse damage: a byte or two) does it fall back to fetching suspects' whole pieces again
    (``dsmirror._fetch.repair``), by evidence first: banned, then least vouched.

This module decides; ``dsmirror._fetch.witness`` fetches, compares and patches. Everything here is
pure: an injected clock (a witness that failed to answer rests ``rest`` seconds) and an injected
random generator, so tests drive it with a fake clock and a seeded ``random.Random``.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from dsmirror._core.clock import Clock

__all__ = ["Trust", "Verdict", "WitnessConfig", "WitnessPolicy", "final_shares", "judge", "next_windows"]

KiB = 1 << 10


@dataclass(frozen=True)
class WitnessConfig:
    """The knobs of cross-checking (see the module docstring for why each has its value)."""

    block: int = 16 * KiB
    start_share: float = 0.015  # an unproven source: share of its bytes compared
    floor_share: float = 0.005  # what a trusted source's share goes down to
    trust_half: int = 64  # passed blocks that take a source halfway from start to floor
    audit_share: float = 0.02  # a convicted source's other pieces: share of their bytes compared
    grow_clean: int = 128 * KiB  # agreeing bytes on each side that end a damaged region
    final_first: float = 1 / 64  # whole-file digest failed: first share of the file compared
    final_last: float = 1 / 4  # the last share tried before fetching whole pieces again
    rest: float = 2.0  # seconds a witness that failed to answer is not asked again
    max_pending: int = 512  # spot checks waiting; beyond, new ones are skipped


@dataclass
class Trust:
    """What one source earned in this pull: blocks that agreed, arbitrations lost, silences."""

    passed: int = 0
    lost: int = 0
    errors: int = 0
    rest_until: float = 0.0


class Verdict(enum.Enum):
    AGREE = "agree"
    SOURCE_LIED = "source lied"  # the stored copy's source
    WITNESS_LIED = "witness lied"
    UNDECIDED = "undecided"  # no arbiter, or all three differ


def judge(stored: bytes, witness: bytes, arbiter: bytes | None) -> Verdict:
    """Who lied, from the stored copy of a block, a witness's copy and an arbiter's (if any)."""
    if stored == witness:
        return Verdict.AGREE
    if arbiter is None:
        return Verdict.UNDECIDED
    if arbiter == witness:
        return Verdict.SOURCE_LIED
    if arbiter == stored:
        return Verdict.WITNESS_LIED
    return Verdict.UNDECIDED


def next_windows(
    bad: tuple[int, int], checked: tuple[int, int], limit: tuple[int, int], clean: int
) -> list[tuple[int, int]]:
    """Growing a damaged region: the byte ranges still to compare, ``[start, end)``.

    ``bad`` is the extent known to differ, ``checked`` the extent already compared (it contains
    ``bad``), ``limit`` the liar's own contiguous bytes. The region ends where ``clean`` bytes
    beyond the last difference agree, on each side, or at the limit.
    """
    out = []
    want_lo = max(limit[0], bad[0] - clean)
    if want_lo < checked[0]:
        out.append((want_lo, checked[0]))
    want_hi = min(limit[1], bad[1] + clean)
    if want_hi > checked[1]:
        out.append((checked[1], want_hi))
    return out


def final_shares(config: WitnessConfig) -> Iterator[float]:
    """The shares of a failed file compared, round after round, before whole pieces are fetched."""
    share = config.final_first
    while share <= config.final_last + 1e-12:
        yield share
        share *= 2


@dataclass
class WitnessPolicy:
    """Which blocks of a received piece to compare, with whom, and what each result earns."""

    config: WitnessConfig
    clock: Clock
    rng: random.Random = field(default_factory=random.Random)
    trust: dict[str, Trust] = field(default_factory=dict)

    def _t(self, name: str) -> Trust:
        t = self.trust.get(name)
        if t is None:
            t = self.trust[name] = Trust()
        return t

    def share(self, name: str, *, convicted: bool = False) -> float:
        """The share of ``name``'s next bytes to compare (see "Who is checked how much")."""
        c = self.config
        if convicted:
            return c.audit_share
        p = self._t(name).passed
        return c.floor_share + (c.start_share - c.floor_share) * c.trust_half / (c.trust_half + p)

    def blocks(self, length: int, share: float, *, least: int = 0) -> list[tuple[int, int]]:
        """``(offset, size)`` of the blocks to compare in a piece of ``length`` bytes.

        ``share * length / block`` blocks, rounded up or down at random so the expectation is
        exact, one at a random place in each of that many equal slices of the piece; at least
        ``least`` of them (as many as the piece holds). Audits (a convicted source's pieces, a
        failed file's evidence rounds) ask for one: by expectation alone a piece shorter than a
        block is compared with the share's probability, and a liar's 7-byte last piece of a file
        escaped five rounds (1/64 to 1/4) and the audit, so its file was fetched again whole.
        """
        b = min(self.config.block, length)
        if b <= 0:
            return []
        want = share * length / b
        n = int(want)
        if self.rng.random() < want - n:
            n += 1
        n = min(max(n, least), length // b)
        out = []
        for k in range(n):
            lo, hi = k * length // n, (k + 1) * length // n
            start = lo + self.rng.randrange(max(1, hi - lo - b + 1))
            start = min(start, length - b)
            out.append((start, b))
        return out

    def spot_blocks(self, name: str, length: int) -> list[tuple[int, int]]:
        return self.blocks(length, self.share(name))

    def pick(self, candidates: Sequence[str], exclude: Iterable[str] = ()) -> str | None:
        """A witness (or arbiter) among ``candidates``: not excluded, not resting, most vouched
        first; one of the two most vouched at random, so checks spread over honest sources."""
        now = self.clock.now()
        skip = set(exclude)
        ok = [c for c in candidates if c not in skip and self._t(c).rest_until <= now and not self._t(c).lost]
        if not ok:
            return None
        ok.sort(key=lambda c: -self._t(c).passed)
        return self.rng.choice(ok[:2])

    def next_awake(self, candidates: Sequence[str]) -> float | None:
        """When the first of ``candidates`` that may still witness stops resting (None: none may)."""
        times = [self._t(c).rest_until for c in candidates if not self._t(c).lost]
        return min(times) if times else None

    def agreed(self, *names: str) -> None:
        """A block two sources sent agreed: both earn a passed check."""
        for name in names:
            self._t(name).passed += 1

    def convicted(self, name: str) -> None:
        self._t(name).lost += 1

    def failed_to_answer(self, name: str) -> None:
        t = self._t(name)
        t.errors += 1
        t.rest_until = self.clock.now() + self.config.rest

    def suspicion(self, names: Iterable[str], banned: Iterable[str] = ()) -> list[str]:
        """``names`` from the most to the least suspect: convicted or banned, then least vouched."""
        gone = set(banned)

        def key(name: str) -> tuple[int, int, int]:
            t = self._t(name)
            return (0 if (t.lost or name in gone) else 1, t.passed, t.errors)

        return sorted(names, key=key)
