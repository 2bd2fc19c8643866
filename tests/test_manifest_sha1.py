"""The manifest's optional ``sha1`` field: the BitTorrent v1 hash of every piece (issue 13 item 5).

Parsing and writing it, manifests without it (unchanged bytes and identity), and what the parser
refuses. The torrent side (a derived torrent with these hashes, libtorrent checking them, a wrong
one) is in tests/test_torrent_sha1.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from dsmirror._core.errors import ManifestError
from dsmirror._formats.manifest import FileEntry, Manifest, parse_manifest

PS = 16 << 10


def _doc(**file_extra: object) -> dict[str, object]:
    data = b"x" * (PS + 5)
    pieces = [hashlib.sha256(data[:PS]).hexdigest(), hashlib.sha256(data[PS:]).hexdigest()]
    f: dict[str, object] = {
        "path": "model.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "pieces": pieces,
    }
    f.update(file_extra)
    return {"format": "dsmirror-manifest", "version": 1, "name": "m", "piece_size": PS, "files": [f]}


def _bytes(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


SHA1 = [hashlib.sha1(b"a").hexdigest(), hashlib.sha1(b"b").hexdigest()]


def test_sha1_parses_to_raw_digests_and_writes_back_the_same_bytes() -> None:
    raw = _bytes(_doc(sha1=SHA1))
    m = parse_manifest(raw)
    assert m.files[0].sha1 == bytes.fromhex("".join(SHA1))
    assert m.has_sha1
    assert m.canonical_bytes == raw  # the identity is sha256sum of the file, as ever
    assert m.sha256 == hashlib.sha256(raw).hexdigest()


def test_a_manifest_without_sha1_is_read_and_written_as_before() -> None:
    raw = _bytes(_doc())
    m = parse_manifest(raw)
    assert m.files[0].sha1 is None and not m.has_sha1
    assert m.canonical_bytes == raw
    assert "sha1" not in m.canonical_bytes.decode()


def test_the_file_digest_learned_later_keeps_sha1() -> None:
    m = parse_manifest(_bytes(_doc(sha1=SHA1)))
    f = m.files[0]
    m2 = Manifest(m.name, m.piece_size, (FileEntry(f.path, f.size, "", f.pieces, f.sha1),))
    assert m2.with_file_sha256(f.path, f.sha256).files[0].sha1 == f.sha1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sha1": SHA1[:1]}, "1 sha1 piece hashes for 2 pieces"),
        ({"sha1": [SHA1[0], SHA1[1].upper()]}, "not 40 lowercase hex"),
        ({"sha1": [SHA1[0], SHA1[1] + "\n"]}, "not 40 lowercase hex"),
        ({"sha1": [SHA1[0], SHA1[1][:39]]}, "not 40 lowercase hex"),
        ({"sha1": [SHA1[0], 7]}, "not 40 lowercase hex"),
        ({"sha1": "".join(SHA1)}, "must be a list"),
        ({"sha1": None}, "must be a list"),
        ({"sha1": SHA1, "pieces": None}, "needs the piece hashes"),
        ({"sha1": SHA1, "pieces": ["", ""]}, "needs the piece hashes"),
        ({"sha2": SHA1}, "needs exactly path, size, sha256, pieces"),
    ],
)
def test_a_bad_sha1_field_is_refused_with_one_clear_message(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(_bytes(_doc(**extra)))


def test_sha1_is_on_every_file_or_on_none() -> None:
    doc = _doc(sha1=SHA1)
    files = doc["files"]
    assert isinstance(files, list)
    files.append({"path": "empty", "size": 0, "sha256": hashlib.sha256(b"").hexdigest(), "pieces": []})
    with pytest.raises(ManifestError, match="every file or for none"):
        parse_manifest(_bytes(doc))
    files[1]["sha1"] = []  # an empty file has no pieces: its list is empty
    assert parse_manifest(_bytes(doc)).has_sha1
