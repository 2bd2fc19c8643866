"""Verify: hashing pieces and files against what a manifest or registry publishes."""
