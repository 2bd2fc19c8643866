"""Serving model files over the Hugging Face, Ollama and ModelScope protocols.

Used for loopback test registries and as the core of ``dsmirror serve`` (a LAN mirror that
unmodified ``huggingface_hub`` and Ollama clients can use). The modules, top down (each imports
only modules below it)::

    _server             ``dsmirror serve`` as a library call: wires the parts, runs, seeds
    _runner             an app in a thread of its own (tests, embedding), or in the foreground
    _connections        which connections are kept: timeouts, bounds, slow readers, rejects logged
    _app                the aiohttp app: one dispatcher (limits, token, read-only, rescan on a miss)
      _status_routes      the status page (``static/``: HTML, script, style), its JSON, /metrics
      _status             the status document: models held, traffic, pulls, seeding, errors, history
      _metrics            the status document in the Prometheus text format
      _errors             recent errors, each with one line of advice (a logging handler)
      _ms_routes          ModelScope-like routes over the Hugging Face repos
      _hf_routes          the Hugging Face Hub API and resolve routes
      _oci_routes         the /v2 registry API (the OCI distribution spec's pull side)
        _ollama_routes    Ollama models as registry repositories (names, tags, blobs)
      _folder_routes      dsmirror's /dsmirror/ routes of served manifest folders
      _proof_routes       the box's proof: piece manifests of served models, and their headers
      _send               sending bytes: sendfile, injected faults, files still being pulled
      _ranges             Range and conditional requests against the content etag
      _http               error replies carried as exceptions, JSON, repo paths from URLs
    _pullthrough        pulling what is missing from upstream, once, verified, as it lands
      _hf_pullthrough     the Hugging Face side (pull's HF listing; into the HF cache)
      _ollama_pullthrough the Ollama side (pull's manifest client; into the Ollama store)
      _pulljob            PullJob, one file's pull shared by every request, and the JobBoard
      _upstream           the upstream mirrors and the cache of what they said
    _proofs             every served file hashed once in pieces: the piece manifests it proves
    _library            the index kept in step with the disk (rescans)
    _index              ModelIndex: what is served, as the routes look it up
      _folder_index       plain folders described by a dsmirror manifest
      _ollama_index       Ollama models: the Ollama store read in place
      _hf_index           HF repos: a folder, or the HF cache read in place
      _digests            every file hashed once (DigestCache)
"""

from dsmirror._serve._app import STATS, STATUS, make_app
from dsmirror._serve._connections import ConnectionLimits
from dsmirror._serve._digests import DigestCache
from dsmirror._serve._folder_index import ManifestFolder, index_manifest_folder
from dsmirror._serve._hf_index import LFS_MIN_SIZE, HfRepo, ServedFile, index_hf_cache
from dsmirror._serve._index import ModelIndex
from dsmirror._serve._library import IndexSource, Library, ServeRoots, StaticIndex
from dsmirror._serve._ollama_index import OllamaLayer, OllamaModel, index_ollama_store
from dsmirror._serve._proofs import FileProof, ProofBook
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
    "STATUS",
    "ByteRange",
    "ConnectionLimits",
    "DigestCache",
    "FileProof",
    "HfRepo",
    "IndexSource",
    "Library",
    "ManifestFolder",
    "ModelIndex",
    "OllamaLayer",
    "OllamaModel",
    "ProofBook",
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
