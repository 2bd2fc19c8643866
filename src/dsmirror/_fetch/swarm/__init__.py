"""The BitTorrent swarm source (libtorrent is imported only by the modules that need it)."""
