"""The manifest's own swarm for registry manifests (whole-file SHA-256s only, no piece hashes)."""

from __future__ import annotations

import hashlib

import libtorrent as lt

from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.source import SwarmSource
from dsmirror._fetch.swarm.torrent import check_torrent, derived_torrent, placeholder_hash
from dsmirror._formats.manifest import FileEntry, Manifest, NoPieceHashes

MiB = 1 << 20
PS = 8 * MiB


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _registry_manifest(big_sha: str = _sha("big"), *, name: str = "acme/model") -> Manifest:
    files = (
        FileEntry("model.safetensors", 40 * MiB + 7, big_sha, NoPieceHashes(-(-(40 * MiB + 7) // PS))),
        FileEntry("config.json", 19, _sha("config"), (_sha("config-piece"),)),  # a small file: hashed
        FileEntry("b/extra.safetensors", PS + 3, _sha("extra"), NoPieceHashes(2)),
    )
    return Manifest(name, PS, files)


def test_a_registry_manifest_has_a_derived_torrent_every_machine_computes_alike() -> None:
    m = _registry_manifest()
    t = derived_torrent(m)
    assert t is not None and t.btih and t.derived == m.sha256
    again = derived_torrent(_registry_manifest())
    assert again is not None and again.data == t.data  # the same bytes, so the same info-hash
    pm = check_torrent(m, t)  # the manifest's pieces, file-aligned
    assert all(x >= 0 for x in pm.to_torrent) and pm.pinned
    info = lt.torrent_info(t.data)
    for i, piece in enumerate(m.pieces):
        f = m.files[piece.file_index]
        k = i - m.file_piece_ranges[piece.file_index][0]
        want = bytes.fromhex(piece.sha256)[:20] if piece.sha256 else placeholder_hash(f.sha256, k)
        assert bytes(info.hash_for_piece(pm.to_torrent[i])) == want
    # Placeholders differ per file and per piece, and with the file's digest.
    assert placeholder_hash(_sha("big"), 0) != placeholder_hash(_sha("big"), 1)
    assert placeholder_hash(_sha("big"), 0) != placeholder_hash(_sha("extra"), 0)
    other = derived_torrent(_registry_manifest(_sha("another revision")))
    assert other is not None and other.btih != t.btih


def test_no_derived_torrent_without_any_digest() -> None:
    files = (FileEntry("model.bin", 3 * PS, "", NoPieceHashes(3)),)  # nothing to check it by
    assert derived_torrent(Manifest("x", PS, files)) is None
    empty = (FileEntry("empty.txt", 0, hashlib.sha256(b"").hexdigest(), ()),)
    assert derived_torrent(Manifest("x", PS, empty)) is None


def test_blame_bans_who_sent_bad_pieces_of_files_without_piece_hashes() -> None:
    """``SwarmSource.blame``: a peer that sent a piece proven bad alone is banned at once, one of
    several senders at its second strike; the banned peers' other pieces are named for fetching
    again; the bans themselves happen in the swarm's thread (``_take_blame``)."""
    m = _registry_manifest()
    t = derived_torrent(m)
    assert t is not None
    sw = SwarmSource(m, config=SwarmConfig(listen="127.0.0.1:0", lsd=False), torrent=t)
    try:
        assert sw.trusting and sw.map is not None
        a, b, c = "10.0.0.9", "10.0.0.5", "10.0.0.4"
        sw._sent_by.update({1: frozenset({a}), 2: frozenset({a, b}), 3: frozenset({b, c}), 7: frozenset({b})})
        assert sw.blame([2]) == []  # two senders: a strike each, nobody banned yet
        assert sw.blame([1]) == [2]  # a sent a bad piece alone: banned; its other piece goes again
        assert sw.blame([3]) == [2, 7]  # b's second strike: banned (c has one)
        assert sorted(sw.session._banned) == []  # not yet: the run thread bans
        events: list[object] = []

        class _Broker:
            def emit(self, ev: object) -> None:
                events.append(ev)

            def is_verified(self, i: int) -> bool:
                return False

        sw._peer_have = bytearray(m.num_pieces)
        sw._have = bytearray(t.num_pieces)
        sw._take_blame(_Broker())  # type: ignore[arg-type]
        assert sorted(sw.session._banned) == sorted([a, b])
        assert {sw.map.to_torrent[i] for i in (1, 2, 3)} <= sw._tainted  # nobody gets them from us
        assert sum("banned peer" in str(ev) for ev in events) == 2
    finally:
        sw.session.close()
