"""Test tools for dsmirror and for code built on it: real servers to download from on loopback.

- :class:`MirrorServer`: an HTTP mirror with a shared bandwidth cap, latency, outages and
  :class:`Faults` (corruption, resets, stalls, HTML pages, bad ranges, error statuses, signed
  redirects), all changeable while it serves;
- :func:`write_random_tree`: deterministic pseudo-random files to serve, with their digests.
"""

from dsmirror.testing.mirror import Faults, MirrorServer, write_random_tree

__all__ = ["Faults", "MirrorServer", "write_random_tree"]
