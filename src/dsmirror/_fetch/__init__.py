"""Fetch: sources (HTTP mirrors, local copies, BitTorrent swarm) and the engine that runs them."""
