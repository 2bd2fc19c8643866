"""Resolve: a REF and the catalog into a plan (manifest, sources, destination, install step)."""
