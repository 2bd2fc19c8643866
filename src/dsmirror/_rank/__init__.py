"""Rank: probing sources and remembering what they delivered."""
