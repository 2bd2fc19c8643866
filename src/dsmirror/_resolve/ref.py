"""What the user asks for: parsing the REF of ``dsmirror pull REF``.

./model.manifest.json, /abs/x.json      a dsmirror manifest file
https://host/x.manifest.json            a manifest by URL
./x.torrent, magnet:?xt=...             a torrent (BitTorrent swarm)
./model.sig, https://host/m/model.sig   an OpenSSF model signature (a name ending in .sig)
hf://org/repo[@revision]                a Hugging Face repository (any HF-compatible endpoint)
ollama://[host[:port]/][ns/]name[:tag]  an Ollama registry model, named as ``dsmirror._formats.ollama``
                                        reads it (``library/x`` is namespace/name, not host/name)
deepseek-r1:7b                          an alias from the catalog (mirrors.yaml)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dsmirror._core.errors import UsageError

if TYPE_CHECKING:
    from dsmirror._formats.ollama import OllamaName  # imported for an ollama:// REF only

__all__ = ["Ref", "parse_ref"]

_HF = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class Ref:
    #: manifest-file, manifest-url, signature-file, signature-url, torrent-file, magnet, hf, ollama, alias
    kind: str
    text: str
    path: Path | None = None
    repo: str | None = None  # hf: org/name
    revision: str | None = None  # hf revision
    ollama: OllamaName | None = None  # ollama: the model, as the one Ollama name parser read it


def parse_ref(text: str, *, aliases: frozenset[str] | set[str] = frozenset()) -> Ref:
    if text.startswith("magnet:"):
        return Ref("magnet", text)
    if text.startswith("hf://"):
        m = _HF.match(text)
        if not m:
            raise UsageError(f"cannot read {text!r}", hint="write it like hf://deepseek-ai/DeepSeek-R1@main")
        return Ref("hf", text, repo=m.group("repo"), revision=m.group("rev") or "main")
    if text.startswith("ollama://"):
        from dsmirror._formats.ollama import parse_ollama_name

        try:
            name = parse_ollama_name(text)
        except UsageError as exc:
            hint = "write it like ollama://library/deepseek-r1:7b"
            raise UsageError(f"cannot read {text!r}", hint=hint) from exc
        return Ref("ollama", text, ollama=name)
    if text.startswith(("http://", "https://")):
        return Ref("signature-url" if urlsplit(text).path.endswith(".sig") else "manifest-url", text)
    if text in aliases:
        return Ref("alias", text)
    p = Path(text)
    if p.suffix == ".torrent" and p.is_file():
        return Ref("torrent-file", text, path=p)
    if p.suffix == ".sig" and p.is_file():
        return Ref("signature-file", text, path=p)
    if p.is_file():
        return Ref("manifest-file", text, path=p)
    if p.exists():
        raise UsageError(
            f"{text} is not a file", hint="give a manifest file, a URL, hf://, ollama:// or an alias"
        )
    known = ", ".join(sorted(aliases)[:8])
    raise UsageError(
        f"unknown model or file {text!r}",
        hint=f"give a manifest path, a URL, hf://org/repo, ollama://name:tag or an alias ({known}, ...)"
        if known
        else "give a manifest path, a URL, hf://org/repo, ollama://name:tag",
    )
