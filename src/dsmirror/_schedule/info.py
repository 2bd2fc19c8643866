"""What the scheduler knows of a source before measuring it (the resolver fills it in)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SourceInfo"]


@dataclass(frozen=True)
class SourceInfo:
    """What the resolver and the scheduler know about a source before measuring it."""

    name: str
    kind: str  # http, hf, modelscope, ollama, dsmirror, bittorrent
    host: str
    region: str = "global"
    official: bool = False
    priority: int = 10
    max_connections: int = 8

    @property
    def source_class(self) -> str:
        """The class ``--prefer`` speaks of: p2p, official or mirror."""
        if self.kind == "bittorrent":
            return "p2p"
        return "official" if self.official else "mirror"
