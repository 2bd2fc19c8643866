"""Serving model files over the Hugging Face, Ollama and ModelScope protocols.

Used for loopback test registries and as the core of ``dsmirror serve`` (a LAN mirror that
unmodified ``huggingface_hub`` and Ollama clients can use). ``_index`` decides what is
served, filled by ``_hf_index``, ``_ollama_index`` and ``_folder_index`` (which do all disk
hashing, through ``_digests``); ``_library`` keeps it in step with the disk; ``_app`` answers
HTTP, dispatching to one module per protocol (``_hf_routes``, ``_ms_routes``, ``_ollama_routes``,
``_folder_routes``) over ``_send``/``_ranges`` (bytes, Range, conditional requests);
``_pullthrough`` pulls what is missing from upstream; ``_server`` wires them for
``dsmirror serve``; ``_runner`` runs an app in a thread (tests, embedding).
"""

from dsmirror._serve._app import STATS, make_app
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._folder_index import ManifestFolder, index_manifest_folder
from dsmirror._serve._hf_index import LFS_MIN_SIZE, HfRepo, ServedFile, index_hf_cache
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._library import IndexSource, Library, ServeRoots, StaticIndex
from dsmirror._serve._ollama_index import OllamaLayer, OllamaModel, index_ollama_store
from dsmirror._serve._pulljob import PullJob
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._ranges import ByteRange, RangeNotSatisfiable, parse_range
from dsmirror._serve._runner import ServerThread, run_forever
from dsmirror._serve._send import ServeFaults, ServeStats
from dsmirror._serve._server import ServeConfig, build_app, serve
from dsmirror._serve._upstream import Upstream

__all__ = [
    "LFS_MIN_SIZE",
    "STATS",
    "ByteRange",
    "DigestCache",
    "HfRepo",
    "IndexSource",
    "Library",
    "ManifestFolder",
    "ModelIndex",
    "OllamaLayer",
    "OllamaModel",
    "PullJob",
    "PullThrough",
    "RangeNotSatisfiable",
    "ServeConfig",
    "ServeFaults",
    "ServeRoots",
    "ServeStats",
    "ServedFile",
    "ServerThread",
    "StaticIndex",
    "Upstream",
    "build_app",
    "index_hf_cache",
    "index_manifest_folder",
    "index_ollama_store",
    "make_app",
    "parse_range",
    "run_forever",
    "serve",
]
