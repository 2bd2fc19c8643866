"""Serving model files over the Hugging Face, Ollama and ModelScope protocols.

Used for loopback test registries and as the core of ``dsmirror serve`` (a LAN mirror that
unmodified ``huggingface_hub`` and Ollama clients can use). ``_index`` decides what is
served (and does all disk hashing, up front); ``_app`` answers HTTP; ``_runner`` runs it.
"""

from dsmirror._serve._app import (
    STATS,
    ByteRange,
    RangeNotSatisfiable,
    ServeFaults,
    ServeStats,
    make_app,
    parse_range,
)
from dsmirror._serve._index import (
    LFS_MIN_SIZE,
    HfRepo,
    ModelIndex,
    OllamaLayer,
    OllamaModel,
    ServedFile,
    index_hf_cache,
    index_ollama_store,
)
from dsmirror._serve._runner import ServerThread, run_forever

__all__ = [
    "LFS_MIN_SIZE",
    "STATS",
    "ByteRange",
    "HfRepo",
    "ModelIndex",
    "OllamaLayer",
    "OllamaModel",
    "RangeNotSatisfiable",
    "ServeFaults",
    "ServeStats",
    "ServedFile",
    "ServerThread",
    "index_hf_cache",
    "index_ollama_store",
    "make_app",
    "parse_range",
    "run_forever",
]
