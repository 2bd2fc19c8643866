"""Ollama model names: one parser for ``ollama://`` REFs, catalog ``ollama:`` values and the store.

Generated over every form (``name``, ``name:tag``, ``ns/name:tag``, ``host/ns/name:tag``,
``host:port/ns/name:tag``) x hosts x namespaces x names x tags; pure and offline. The pulls of these
names from a loopback registry are in ``test_registries_ollama.py``.
"""

from __future__ import annotations

import itertools

import pytest
import yaml

from dsmirror._core.errors import CatalogError, UsageError
from dsmirror._formats.catalog import parse_catalog
from dsmirror._formats.ollama import DEFAULT_HOST, OllamaName, parse_ollama_name
from dsmirror._resolve.ref import parse_ref

HOSTS = ["localhost", "registry.example.com", "lan:5000", "127.0.0.1:11434", "registry.ollama.ai"]
NAMESPACES = ["library", "team", "huihui-ai"]
NAMES = ["tiny", "deepseek-r1", "qwen2.5", "a"]
TAGS = ["latest", "7b", "q4_K_M", "1.5b-instruct"]


def _forms() -> list[tuple[str, str, OllamaName]]:
    """(form, text, the name it means) for every combination."""
    out = []
    for name, tag in itertools.product(NAMES, TAGS):
        out.append(("name", name, OllamaName(DEFAULT_HOST, "library", name, "latest")))
        out.append(("name:tag", f"{name}:{tag}", OllamaName(DEFAULT_HOST, "library", name, tag)))
        for ns in NAMESPACES:
            out.append(("ns/name", f"{ns}/{name}", OllamaName(DEFAULT_HOST, ns, name, "latest")))
            out.append(("ns/name:tag", f"{ns}/{name}:{tag}", OllamaName(DEFAULT_HOST, ns, name, tag)))
            for host in HOSTS:
                form = "host:port/ns/name:tag" if ":" in host else "host/ns/name:tag"
                out.append((form, f"{host}/{ns}/{name}:{tag}", OllamaName(host, ns, name, tag)))
                out.append(
                    (form.removesuffix(":tag"), f"{host}/{ns}/{name}", OllamaName(host, ns, name, "latest"))
                )
    return out


FORMS = _forms()
#: The README's hint, and the spelling the old REF parser read as host "library".
HINTS = [
    ("library/deepseek-r1:7b", OllamaName(DEFAULT_HOST, "library", "deepseek-r1", "7b")),
    ("library/tiny:latest", OllamaName(DEFAULT_HOST, "library", "tiny", "latest")),
]
BAD = [
    "a/b/c/d",
    "name:",
    ":tag",
    "-x",
    "ns/-x",
    "ns/name:ta/g",
    "../x:1",
    "host:999999/ns/name",
    "ns/name:tag:more",
    "ns//name",
]


def test_every_form_is_generated() -> None:
    assert {f for f, _, _ in FORMS} >= {
        "name",
        "name:tag",
        "ns/name:tag",
        "host/ns/name:tag",
        "host:port/ns/name:tag",
    }
    assert len(FORMS) > 300


@pytest.mark.parametrize(("form", "text", "want"), FORMS, ids=[t for _, t, _ in FORMS])
def test_the_name_parser(form: str, text: str, want: OllamaName) -> None:
    assert parse_ollama_name(text) == want
    assert parse_ollama_name(f"ollama://{text}") == want
    # What `dsmirror ls` shows and what it lists as the ref read back as the same model.
    assert parse_ollama_name(want.short) == want
    assert parse_ollama_name(f"{want.host}/{want.namespace}/{want.name}:{want.tag}") == want


@pytest.mark.parametrize(("form", "text", "want"), FORMS, ids=[t for _, t, _ in FORMS])
def test_ollama_refs(form: str, text: str, want: OllamaName) -> None:
    ref = parse_ref(f"ollama://{text}")
    assert (ref.kind, ref.ollama) == ("ollama", want)


@pytest.mark.parametrize(("text", "want"), HINTS)
def test_a_namespace_is_not_a_host(text: str, want: OllamaName) -> None:
    assert parse_ref(f"ollama://{text}").ollama == want
    assert parse_ollama_name(text) == want


def test_catalog_values_of_every_form() -> None:
    """One catalog whose aliases name every form; each reads back as the REF of that form does."""
    cases = [(text, want) for _, text, want in FORMS] + HINTS
    models = {f"m{i}": {"ollama": text} for i, (text, _) in enumerate(cases)}
    catalog = parse_catalog(yaml.safe_dump({"version": 1, "models": models}), "test.yaml")
    for i, (text, want) in enumerate(cases):
        alias = catalog.alias(f"m{i}")
        assert alias is not None and alias.ollama == text
        assert parse_ollama_name(alias.ollama) == want == parse_ref(f"ollama://{text}").ollama


@pytest.mark.parametrize("text", BAD)
def test_bad_names_are_refused_everywhere(text: str) -> None:
    with pytest.raises(UsageError):
        parse_ollama_name(text)
    with pytest.raises(UsageError, match="cannot read"):
        parse_ref(f"ollama://{text}")
    doc = yaml.safe_dump({"version": 1, "models": {"m": {"ollama": text}}})
    with pytest.raises(CatalogError, match=r"expected \[host/\]\[namespace/\]name\[:tag\]"):
        parse_catalog(doc, "test.yaml")


@pytest.mark.parametrize("text", ["Library/demo", "team/Demo:1b", "LAN:5000/team/demo"])
def test_catalog_names_are_lower_case(text: str) -> None:
    doc = yaml.safe_dump({"version": 1, "models": {"m": {"ollama": text}}})
    with pytest.raises(CatalogError, match="lower case"):
        parse_catalog(doc, "test.yaml")
