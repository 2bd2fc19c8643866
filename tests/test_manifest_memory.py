"""The manifest's memory per piece (issue 14, "memory flat in model size"), and the reading that keeps it.

A 700k-piece manifest (DeepSeek-V3/R1 in 1 MiB pieces) is 45 MB of JSON, nearly all of it lists of
hex piece hashes. Read with ``json.loads`` it peaked at about 240 MB and kept 80 MB: a str for
the whole text and one for each hash. Now the parser reads those lists straight into raw digests
(``PieceHashes``, 32 bytes a piece), the canonical bytes are written and hashed in chunks, and a
store's learned manifest takes its digests from the provenance's raw bytes. The bounds here are in
bytes per piece, measured with ``tracemalloc``, not in time: at 100k pieces they fail by a wide
margin if hashes go back to being strings (about 120 bytes each) or the text is made whole. The
store and the scheduler of a pull are held to a few bytes a piece the same way.

The fast reading must accept exactly what the plain one accepts and give the same manifest (or
the same error): each case below is parsed both ways and compared.
"""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from dsmirror import FakeClock, ManifestError, Scheduler, SchedulerConfig, SourceInfo
from dsmirror._formats import manifest as mf
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes, PieceHashes, parse_manifest
from dsmirror._journal.store import Store
from dsmirror._schedule.scheduler import Assignment

PS = 16 << 10
N = 100_000


def _hex(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "little", signed=True)).hexdigest()


def _sha1(i: int) -> str:
    return hashlib.sha1(i.to_bytes(8, "little", signed=True)).hexdigest()


def _document(pieces: int, files: int = 25) -> bytes:
    per = pieces // files
    entries = [
        FileEntry(
            f"model-{i:05d}.safetensors", per * PS, _hex(-1 - i), tuple(_hex(i * per + k) for k in range(per))
        )
        for i in range(files)
    ]
    return Manifest("memory", PS, tuple(entries)).canonical_bytes


def _traced(fn: Callable[[], object]) -> tuple[object, int, int]:
    """``fn()``, and the peak and the kept bytes it allocated (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak - base, kept - base


@pytest.fixture(scope="module")
def document() -> bytes:
    return _document(N)


def test_parsing_keeps_32_bytes_a_piece_and_peaks_under_the_document_s_size(document: bytes) -> None:
    m, peak, kept = _traced(lambda: parse_manifest(document))
    assert isinstance(m, Manifest) and m.num_pieces == N
    assert all(isinstance(f.pieces, PieceHashes) for f in m.files)
    # Kept: the raw digests (32 B a piece) and little else; as strings it was ~120 B a piece.
    assert kept / N < 40, f"{kept / N:.0f} bytes kept per piece"
    # Peak: the digests plus a chunk at a time; json.loads of the whole text peaked at ~350 B a piece.
    assert peak / N < 64, (
        f"{peak / N:.0f} bytes per piece at the peak (the document is {len(document) / N:.0f})"
    )
    assert m.sha256 == hashlib.sha256(document).hexdigest()


def test_a_pretty_printed_manifest_is_read_as_compactly(document: bytes) -> None:
    pretty = json.dumps(json.loads(document), indent=2).encode()
    m, _peak, kept = _traced(lambda: parse_manifest(pretty))
    assert isinstance(m, Manifest) and kept / N < 40, f"{kept / N:.0f} bytes kept per piece"
    assert m.canonical_bytes == document


def test_the_canonical_bytes_are_hashed_and_written_in_chunks(document: bytes, tmp_path: Path) -> None:
    m = parse_manifest(document)
    m.__dict__.pop("sha256", None)
    sha, peak, _kept = _traced(lambda: m.sha256)
    assert sha == hashlib.sha256(document).hexdigest()
    # A chunk at a time, whatever the size; made whole it was the text and a str per hash (~190 B a piece).
    assert peak < 1 << 20, f"{peak} bytes to hash the manifest"
    _, peak, _kept = _traced(lambda: m.write(tmp_path / "m.json"))
    assert (tmp_path / "m.json").read_bytes() == document
    assert peak < 1 << 20, f"{peak} bytes to write the manifest"


def test_a_learned_manifest_takes_32_bytes_a_piece(tmp_path: Path) -> None:
    """A pull without published piece hashes learns them (``Store.learned_manifest``) at the end."""
    n, files = 20_000, 4
    per = n // files
    block = bytes(PS)
    whole = hashlib.sha256(block * per).hexdigest()
    entries = tuple(FileEntry(f"f{i}.bin", per * PS, whole, NoPieceHashes(per)) for i in range(files))
    m = Manifest("learned", PS, entries)
    digest = hashlib.sha256(block).hexdigest()
    with Store.open(tmp_path / "dest", m) as store:
        for p in m.pieces:
            store.write(p, 0, block)
            store.mark_verified(p, source="m1", digest=digest)
        assert store.wait_checked(120)
        learned, peak, kept = _traced(store.learned_manifest)
    assert isinstance(learned, Manifest)
    assert all(isinstance(f.pieces, PieceHashes) and list(f.pieces) == [digest] * per for f in learned.files)
    # As a tuple of strings, which it was: ~120 B a piece kept, more at the peak.
    assert kept / n < 40 and peak / n < 64, f"{kept / n:.0f} kept, {peak / n:.0f} at the peak, per piece"


@pytest.mark.parametrize("hashed", [True, False], ids=["piece-hashes", "whole-file-digests"])
def test_a_store_and_its_scheduler_keep_a_few_bytes_a_piece(tmp_path: Path, hashed: bool) -> None:
    """What a pull holds per piece besides the manifest: the store's and the scheduler's state.

    3.5 to 5 bytes a piece here (bytearrays); a Python object per piece would be 50 B or more.
    """
    n, files, ps = N, 20, 1 << 10  # small pieces: 100 MB of sparse files
    per = n // files
    entries = tuple(
        FileEntry(
            f"f{i:02d}.bin",
            per * ps,
            _hex(-1 - i),
            tuple(_hex(i * per + k) for k in range(per)) if hashed else NoPieceHashes(per),
        )
        for i in range(files)
    )
    m = Manifest("state", ps, entries)
    m.sha256  # noqa: B018 - the manifest's own cost is measured above
    infos = [SourceInfo(f"m{j}", "http", f"m{j}.example", max_connections=4) for j in range(3)]

    def pull_state() -> tuple[Store, Scheduler]:
        store = Store.open(tmp_path / "dest", m)
        sched = Scheduler(m, store.verified_pieces(), infos, FakeClock(), SchedulerConfig())
        for j in range(3):  # some work taken, a span received and verified
            got = sched.acquire(f"m{j}")
            assert isinstance(got, Assignment)
            for i in range(got.start, got.end):
                piece = m.pieces[i]
                store.write(piece, 0, bytes(piece.length))
                store.mark_verified(piece, source=f"m{j}", digest=hashlib.sha256(bytes(ps)).hexdigest())
                sched.progress(got, piece.length)
                sched.piece_verified(got, i)
            sched.release(got)
        if not hashed:  # the whole-file hasher has read the stored run back (its buffer is counted)
            deadline = time.monotonic() + 30
            while store._hashers[0].next_piece < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert store._hashers[0].next_piece == 3
        return store, sched

    (store, _sched), peak, kept = _traced(pull_state)
    try:
        assert kept / n < 16, f"{kept / n:.1f} bytes kept per piece"
        assert peak / n < 24, f"{peak / n:.1f} bytes per piece at the peak"
    finally:
        store.close()


# -- the fast reading against the plain one ------------------------------------------------------
def _base(sha1: bool = False) -> dict[str, object]:
    files: list[dict[str, object]] = [
        {"path": "a.bin", "size": 2 * PS + 1, "sha256": _hex(100), "pieces": [_hex(1), _hex(2), _hex(3)]},
        {"path": "b/c.bin", "size": 0, "sha256": _hex(101), "pieces": []},
        {"path": "d.bin", "size": PS, "sha256": None, "pieces": [_hex(4)]},
    ]
    if sha1:
        for f in files:
            f["sha1"] = [_sha1(k) for k in range(len(f["pieces"]))]  # type: ignore[arg-type]
    else:
        files.append({"path": "e.bin", "size": 5 * PS, "sha256": _hex(102), "pieces": None})
    return {
        "format": "dsmirror-manifest",
        "version": 1,
        "name": "fast-and-plain",
        "piece_size": PS,
        "files": files,
        "meta": {"source": "test", "list": [_hex(7)]},
    }


_H = _hex(9)
EDITS: dict[str, Callable[[str], str]] = {
    "as is": lambda t: t,
    "spaces between hashes": lambda t: t.replace('","', '", "'),
    "new lines between hashes": lambda t: t.replace('","', '",\n  "'),
    "space after the bracket": lambda t: t.replace('"pieces":[', '"pieces": [ '),
    "space inside a hash": lambda t: t.replace(_hex(2)[:10], _hex(2)[:9] + " "),
    "comma inside a hash": lambda t: t.replace(_hex(2)[:10], _hex(2)[:9] + ","),
    "quote inside a hash": lambda t: t.replace(_hex(2)[:10], _hex(2)[:9] + '"'),
    "upper-case hash": lambda t: t.replace(_hex(2), _hex(2).upper()),
    "short hash": lambda t: t.replace(_hex(2), _hex(2)[:-1]),
    "escaped hash": lambda t: t.replace(_hex(2), "\\u0061" + _hex(2)[1:]),
    "empty string among hashes": lambda t: t.replace(f'["{_hex(1)}"', f'["","{_hex(1)}"'),
    "a list in the hashes": lambda t: t.replace(f'["{_hex(1)}"', f'[["{_hex(1)}"]'),
    "pieces twice": lambda t: t.replace('{"path":"a.bin",', f'{{"path":"a.bin","pieces":["{_H}"],'),
    "pieces in meta": lambda t: t.replace('"source":"test"', f'"pieces":["{_H}"],"source":"test"'),
    "pieces in a string": lambda t: t.replace('"source":"test"', f'"source":"\\"pieces\\":[\\"{_H}\\"]"'),
    "pieces in an escaped key": lambda t: t.replace(
        '"source":"test"', f'"x\\"pieces":["{_H}"],"source":"test"'
    ),
    "sha1 in the pieces": lambda t: t.replace(f'["{_hex(1)}"', f'[{{"sha1":["{_sha1(1)}"]}},"{_hex(1)}"', 1),
    "sha1 on one file": lambda t: t.replace('"sha256":null', f'"sha1":["{_sha1(1)}"],"sha256":null'),
    "a NaN elsewhere": lambda t: t.replace('"version":1', '"version":NaN'),
    "NaN in a string": lambda t: t.replace('"source":"test"', '"source":"NaN"'),
    "Infinity": lambda t: t.replace(f'"piece_size":{PS}', '"piece_size":Infinity'),
    "vertical tab": lambda t: t.replace('","', '"\x0b,"'),
    "cut short": lambda t: t[:-1],
    "byte-order mark": lambda t: "\ufeff" + t,
    "one hash too many": lambda t: t.replace(f'["{_hex(4)}"]', f'["{_hex(4)}","{_H}"]'),
    "one hash too few": lambda t: t.replace(f'"{_hex(3)}"', "").replace(f'{_hex(2)}",]', f'{_hex(2)}"]'),
}


def _outcome(parse: Callable[[bytes], Manifest], data: bytes) -> tuple[object, ...]:
    try:
        m = parse(data)
    except ManifestError as exc:
        return ("refused", exc.message)
    return ("read", m, m.sha256, m.canonical_bytes)


@pytest.mark.parametrize("sha1", [False, True], ids=["sha256", "with-sha1"])
@pytest.mark.parametrize("layout", ["canonical", "indented", "spaced"])
@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_the_fast_reading_accepts_and_refuses_what_the_plain_one_does(
    edit: str, layout: str, sha1: bool
) -> None:
    doc = _base(sha1)
    text = {
        "canonical": json.dumps(doc, sort_keys=True, separators=(",", ":")),
        "indented": json.dumps(doc, indent=2),
        "spaced": json.dumps(doc),
    }[layout]
    for data in (EDITS[edit](text).encode(), EDITS[edit](text).encode("utf-16")):
        fast = _outcome(parse_manifest, data)
        plain = _outcome(lambda d: mf._parse_plain(d, None), data)
        assert fast == plain


@pytest.mark.parametrize("sha1", [False, True], ids=["sha256", "with-sha1"])
def test_the_fast_reading_is_taken_for_plain_lists(sha1: bool) -> None:
    for text in (
        json.dumps(_base(sha1), sort_keys=True, separators=(",", ":")),
        json.dumps(_base(sha1), indent=1),
    ):
        m = mf._parse_listed(text.encode())
        assert m is not None and m == mf._parse_plain(text.encode(), None)
        assert isinstance(m.files[0].pieces, PieceHashes)
        assert m.files[0].sha1 == (bytes.fromhex(_sha1(0) + _sha1(1) + _sha1(2)) if sha1 else None)


def test_canonical_bytes_are_json_dumps_of_the_dict() -> None:
    """The chunked writer gives the bytes ``json.dumps(to_dict())`` gives, odd values included."""
    files = (
        FileEntry("ünï/cødé €.bin", 3 * PS, _hex(1), (_hex(2), _hex(3), _hex(4))),
        FileEntry("empty", 0, _hex(5), ()),
        FileEntry("none.bin", 9000 * PS, _hex(6), NoPieceHashes(9000)),
        FileEntry("signed.bin", PS, "", (_hex(7),)),
        FileEntry("not-hex.bin", PS, _hex(8), ("not a hash",)),  # kept as given: the parser refuses it
        FileEntry("many.bin", 10_000 * PS, _hex(9), tuple(_hex(k) for k in range(10_000))),
    )
    meta = {"z": [1, 2.5, None, True], "a": {"é": "\u2028", "b": '\\"quoted"'}}
    for m in (
        Manifest("n\u00e9me", PS, files, {"btih": "a" * 40, "btmh": "b" * 64}, meta),
        Manifest("x", PS, ()),
        Manifest("x", PS, files[:1] + files[3:4], None, {}),
    ):
        want = json.dumps(m.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert m.canonical_bytes == want
        assert m.sha256 == hashlib.sha256(want).hexdigest()
    with_sha1 = Manifest("s", PS, (FileEntry("a", 2 * PS, _hex(1), (_hex(2), _hex(3)), bytes(range(40))),))
    want = json.dumps(with_sha1.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert with_sha1.canonical_bytes == want and parse_manifest(want) == with_sha1


def test_piece_hashes_read_as_the_tuple_of_strings() -> None:
    hexes = tuple(_hex(k) for k in range(10_000))
    f = FileEntry("a", len(hexes) * PS, _hex(-1), hexes)
    p = f.pieces
    assert isinstance(p, PieceHashes) and len(p.raw) == 32 * len(hexes)
    assert p == hexes and hexes == p and list(hexes) == p and p == PieceHashes(p.raw)
    assert p != hexes[:-1] and p != (*hexes[:-1], _hex(-2)) and p != ("",) * len(hexes)
    assert hash(p) == hash(hexes)
    assert tuple(p) == hexes and list(iter(p)) == list(hexes)
    assert p[0] == hexes[0] and p[-1] == hexes[-1] and p.digest(5) == bytes.fromhex(hexes[5])
    assert p[100:300] == hexes[100:300] and isinstance(p[100:300], PieceHashes)
    assert p[::7] == hexes[::7] and p[5:2] == ()
    assert hexes[4321] in p and _hex(-1) not in p and hexes[1].upper() not in p and 5 not in p
    # a digest found only across two pieces is not one of them
    assert (hexes[0][32:] + hexes[1][:32]) not in p
    with pytest.raises(IndexError):
        p[len(hexes)]
    assert FileEntry("a", len(hexes) * PS, _hex(-1), list(hexes)) == f
    # what is not 64 lower-case hex stays as given
    for odd in (("A" * 64,), ("a" * 63,), (" " + "a" * 63,), ("",)):
        assert FileEntry("b", PS, _hex(1), odd).pieces == odd
