"""A BitTorrent peer that serves bad bytes: plain libtorrent claiming every piece of a torrent over a
folder it never checks (as trusted resume data over a damaged copy would). Run as a child process:
``python tests/_liar.py TORRENT FOLDER LISTEN [--lsd]``; prints JSON lines, as the CLI's ``--json``
(tests/_lan_hosts.Host reads them): ``{"event": "LiarReady"}`` once it listens, then every second
``{"event": "LiarStatus", "uploaded": BYTES}``.

Used where the pullers' side is under test and the liar must be a real peer speaking the real
protocol (tests/test_torrent_sha1.py, tests/test_lan_faults.py). dsmirror's own seeders do not
serve a piece that fails a checked torrent's hash (libtorrent's seed mode checks each piece before
it first serves it), so they cannot play the liar for a torrent with real piece hashes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

LIAR = str(Path(__file__).resolve())


def main(argv: list[str]) -> None:
    import libtorrent as lt

    torrent, folder, listen = argv[:3]
    lsd = "--lsd" in argv
    ses = lt.session(
        {
            "listen_interfaces": listen,
            "enable_dht": False,
            "enable_lsd": lsd,
            "enable_upnp": False,
            "enable_natpmp": False,
            "enable_outgoing_utp": False,
            "enable_incoming_utp": False,
            "allow_multiple_connections_per_ip": True,
            "disable_hash_checks": True,
        }
    )
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = folder
    fs = atp.ti.layout()
    name = atp.ti.name()
    atp.renamed_files = {
        i: fs.file_path(i)[len(name) + 1 :]
        for i in range(fs.num_files())
        if not fs.file_flags(i) & lt.file_storage.flag_pad_file
    }
    atp.have_pieces = [True] * atp.ti.num_pieces()
    atp.flags |= lt.torrent_flags.no_verify_files
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    h = ses.add_torrent(atp)
    while not ses.is_listening():
        time.sleep(0.05)
    print(json.dumps({"event": "LiarReady"}), flush=True)
    while True:
        time.sleep(1)
        print(json.dumps({"event": "LiarStatus", "uploaded": h.status().total_payload_upload}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
