"""The catalog's mirrors of kind ``bittorrent`` become the swarm's trackers (loopback only)."""

from __future__ import annotations

from pathlib import Path

import libtorrent as lt

from dsmirror import Catalog, Mirror, create_manifest
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._fetch.swarm.session import SwarmSession
from dsmirror._fetch.swarm.torrent import create_torrent
from dsmirror._resolve.swarm import catalog_trackers
from dsmirror.testing import write_random_tree


def test_catalog_trackers_are_announced_to(tmp_path: Path) -> None:
    catalog = Catalog(
        (
            Mirror("office-tracker", "bittorrent", "http://127.0.0.1:9/announce", region="lan"),
            Mirror("swarm-link", "bittorrent", "magnet:?xt=urn:btih:" + "0" * 40),
            Mirror("plain", "http", "http://127.0.0.1:9/models/"),
        )
    )
    assert catalog_trackers(catalog) == ("http://127.0.0.1:9/announce",)

    write_random_tree(tmp_path / "m", {"a.bin": 300_000})
    manifest = create_manifest(tmp_path / "m", piece_size=64 << 10)
    torrent = create_torrent(manifest, tmp_path / "m", format="v1")
    session = SwarmSession(SwarmConfig(listen="127.0.0.1:0", lsd=False, trackers=catalog_trackers(catalog)))
    try:
        atp = lt.add_torrent_params()
        atp.ti = torrent.info()
        atp.save_path = str(tmp_path / "bt")
        handle = session.add_torrent(atp)
        urls = [t["url"] if isinstance(t, dict) else t.url for t in handle.trackers()]
        assert "http://127.0.0.1:9/announce" in urls
    finally:
        session.close()
