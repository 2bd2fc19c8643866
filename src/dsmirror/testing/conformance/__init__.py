"""Conformance suites: the contracts of dsmirror's kinds of source, as checks anyone can run.

In the spirit of trio's ``trio.testing.check_one_way_stream``: whoever implements a kind of source
calls one public function with a *factory* that builds that source over a given set of files,
and the suite runs every rule of the interface's contract against what the factory builds. It
raises :class:`ConformanceFailure` (an ``AssertionError``) listing each rule that broke and the
case that broke it, or returns a :class:`ConformanceReport` of what it checked. Every source
dsmirror ships runs these suites in ``tests/test_conformance.py``; a new kind of source (a LAN
peer, another registry) is ready when it passes them too::

    def make_source(files: Mapping[str, bytes]) -> Source:   # manifest path -> content
        ...                                                   # serve them, return a source

    check_source(make_source)

The suites, each with its contract in its module's docstring:

- :func:`check_source` (``_source``): a stream source (:class:`dsmirror._fetch.source.Source`):
  HTTP mirrors, Hugging Face / ModelScope / Ollama registries, bytes held in memory; with
  :class:`ServerFault` for the ways a server behind it misbehaves.
- :func:`check_local_reuse` (``_reuse``): local reuse (``dsmirror._fetch.reuse``), which is no
  Source -- it fills the store from files on this machine before the engine starts -- but hands
  on pieces all the same, and promises the same: never a wrong byte.
- :func:`check_piece_source` (``_swarm``): a piece source (the engine's ``SwarmSource``: a
  BitTorrent swarm), which takes work from the scheduler and hands whole pieces to the engine.

Test data is generated, like torf's boundary tests: sizes exactly on, one below and one above the
piece size and the read sizes, empty and one-byte files, some in sub-folders; the same seed gives
the same bytes on every machine.
"""

from dsmirror.testing.conformance._common import ConformanceFailure, ConformanceReport
from dsmirror.testing.conformance._reuse import ReuseFill, check_local_reuse
from dsmirror.testing.conformance._source import (
    RETRY_AFTER,
    FaultySourceFactory,
    ServerFault,
    SourceFactory,
    check_source,
)
from dsmirror.testing.conformance._swarm import PieceSourceFactory, check_piece_source

__all__ = [
    "RETRY_AFTER",
    "ConformanceFailure",
    "ConformanceReport",
    "FaultySourceFactory",
    "PieceSourceFactory",
    "ReuseFill",
    "ServerFault",
    "SourceFactory",
    "check_local_reuse",
    "check_piece_source",
    "check_source",
]
