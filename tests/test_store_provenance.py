"""The store's provenance in memory (``dsmirror._journal.provenance``): a dict's behaviour, 34 bytes
a piece instead of ~270 (issue 14: a 700k-piece pull without piece hashes peaked at 361 MiB)."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pytest

from dsmirror._journal.provenance import Provenance


@pytest.mark.parametrize("seed", range(4))
def test_reads_like_the_dict_it_replaces(seed: int) -> None:
    rng = random.Random(seed)
    prov, ref = Provenance(), {}
    for _ in range(5000):
        # Indices around block edges and far apart; now and then a digest that is not 64 hex digits.
        i = rng.choice([rng.randrange(0, 9000), 4095, 4096, 0, 10**7 + rng.randrange(3)])
        if rng.random() < 0.7:
            digest = hashlib.sha256(rng.randbytes(8)).hexdigest()
            digest = rng.choice([digest, digest.upper(), "feed", ""]) if rng.random() < 0.1 else digest
            prov[i] = ref[i] = (rng.choice(["m1", "m2", "local", "import"]), digest)
        elif i in ref:
            del prov[i], ref[i]
        else:
            with pytest.raises(KeyError):
                del prov[i]
        assert (i in prov) == (i in ref)
        assert prov.get(i, ("?", "")) == ref.get(i, ("?", ""))
    assert len(prov) == len(ref)
    assert list(prov) == sorted(ref)
    assert dict(prov) == ref and dict(prov.items()) == ref
    assert "x" not in prov and -1 not in prov


def test_memory_follows_the_pieces_recorded() -> None:
    n = 100_000
    digests = [hashlib.sha256(i.to_bytes(4, "little")).hexdigest() for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        prov = Provenance()
        for i, d in enumerate(digests):
            prov[i] = ("m1", d)  # as a pull records them: dense, in blocks of 4096
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(prov) == n
    assert used < 40 * n, f"{used} bytes for {n} pieces"  # a dict of tuples: ~270 a piece
    empty = Provenance()
    assert 20_000_000 not in empty and len(empty) == 0  # a declared piece count allocates nothing
