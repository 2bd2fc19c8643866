"""Share: seeding installed models to the LAN over BitTorrent (``dsmirror seed``, ``pull --seed``)."""
