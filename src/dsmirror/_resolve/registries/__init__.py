"""Registries: Hugging Face endpoints, ModelScope and Ollama registries, and the catalog's aliases.

Their resolvers (``dsmirror._resolve.resolve.RESOLVERS`` names them, in ``alias``)::

    hf       hf://org/repo[@revision]                 -> hf.plan_hf (with an alias's ModelScope copy;
                                                        metadata through hub.list_hf_repo)
    ollama   ollama://[host[:port]/][ns/]name[:tag]   -> ollama.plan_ollama (names: _formats.ollama)
    alias    a catalog model name                     -> whichever of the above its entry and --format pick

Each resolver turns a reference into a ``PullPlan``: a manifest pinned to registry digests, one
source per mirror (plus local copies), the destination of ``--format`` and the step that finishes
the install (HF cache snapshot and refs, Ollama manifest); see ``dsmirror._install``.
"""

from dsmirror._resolve.registries.alias import resolve_alias, resolve_hf, resolve_ollama
from dsmirror._resolve.registries.hf import HfFile, HfListing, plan_hf, select_files
from dsmirror._resolve.registries.hub import list_hf_repo
from dsmirror._resolve.registries.modelscope import list_modelscope, parse_modelscope_id, plan_modelscope
from dsmirror._resolve.registries.ollama import (
    OllamaName,
    fetch_ollama_manifest,
    parse_ollama_manifest,
    parse_ollama_name,
    plan_ollama,
)

__all__ = [
    "HfFile",
    "HfListing",
    "OllamaName",
    "fetch_ollama_manifest",
    "list_hf_repo",
    "list_modelscope",
    "parse_modelscope_id",
    "parse_ollama_manifest",
    "parse_ollama_name",
    "plan_hf",
    "plan_modelscope",
    "plan_ollama",
    "resolve_alias",
    "resolve_hf",
    "resolve_ollama",
    "select_files",
]
