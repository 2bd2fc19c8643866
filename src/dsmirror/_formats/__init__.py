"""Formats: one owner per format dsmirror reads or writes (see docs/formats.md)."""
