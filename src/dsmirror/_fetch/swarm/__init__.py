"""BitTorrent (libtorrent): the swarm as a source of a pull, and pulls from peers alone.

``config``   SwarmConfig and the seeding events (no libtorrent: a ``--no-p2p`` pull loads only this)
``torrent``  .torrent files and magnets, the map between manifest and torrent pieces
``session``  one libtorrent session with dsmirror's settings, and closing sessions safely
``resume``   libtorrent's copy during a pull (``bt/``) and its resume data (``bt.resume``)
``source``   SwarmSource: the swarm beside the mirrors, through the engine's PieceBroker
``only``     SwarmOnlyPull: a magnet or .torrent no manifest describes, from peers alone

Seeding is a layer above the pull: ``dsmirror._share``.
"""
