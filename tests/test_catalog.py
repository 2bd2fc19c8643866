"""Tests for the mirror/alias catalog (`dsmirror._formats.catalog`); pure and offline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dsmirror._core.errors import CatalogError, InputError
from dsmirror._formats.catalog import (
    KINDS,
    Catalog,
    Mirror,
    ModelAlias,
    default_catalog_paths,
    load_catalog,
    load_default_catalog,
    parse_catalog,
    shipped_catalog_path,
    user_catalog_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA = "ab" * 32

# Every field set, so that each error case below is a one-line change of a valid document.
VALID = f"""\
version: 1
mirrors:
  - name: alpha
    kind: http
    url: https://alpha.example/models/
  - name: beta
    kind: hf
    url: https://beta.example:8443
    region: cn
    official: true
    priority: 2
    weight: 0.5
    max_connections: 4
    enabled: false
  - name: swarm
    kind: bittorrent
    url: udp://tracker.example:6969
models:
  "demo:1b":
    description: Demo 1B
    hf: org/demo-1b@main
    modelscope: org/demo-1b
    ollama: library/demo:1b
    manifest: https://alpha.example/demo-1b.manifest.json
    manifest_sha256: {SHA.upper()}
    magnet: "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"
    include: ["*.safetensors", "*.json"]
    exclude: ["original/*"]
  demo:
    hf: demo
"""


def parse(text: str, base: Catalog | None = None) -> Catalog:
    return parse_catalog(text, "test.yaml", base=base)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- the shipped catalog ---------------------------------------------------------------------

SHIPPED_ALIASES = {
    "deepseek-r1:1.5b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "library/deepseek-r1:1.5b"),
    "deepseek-r1:7b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "library/deepseek-r1:7b"),
    "deepseek-r1:8b": ("deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "library/deepseek-r1:8b"),
    "deepseek-r1:14b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "library/deepseek-r1:14b"),
    "deepseek-r1:32b": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "library/deepseek-r1:32b"),
    "deepseek-r1:70b": ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "library/deepseek-r1:70b"),
    "deepseek-r1": ("deepseek-ai/DeepSeek-R1", "library/deepseek-r1:671b"),
    "deepseek-r1:671b": ("deepseek-ai/DeepSeek-R1", "library/deepseek-r1:671b"),
    "deepseek-v3": ("deepseek-ai/DeepSeek-V3", "library/deepseek-v3"),
}


def test_shipped_catalog_has_the_official_mirrors() -> None:
    catalog = load_catalog(shipped_catalog_path())
    expected = {
        "huggingface": ("hf", "https://huggingface.co", "global", True),
        "hf-mirror": ("hf", "https://hf-mirror.com", "cn", False),
        "modelscope": ("modelscope", "https://www.modelscope.cn", "cn", True),
        "ollama": ("ollama", "https://registry.ollama.ai", "global", True),
    }
    for name, (kind, url, region, official) in expected.items():
        mirror = catalog.mirror(name)
        assert mirror is not None, name
        assert (mirror.kind, mirror.url, mirror.region, mirror.official) == (kind, url, region, official)
        assert mirror.enabled
    assert catalog.sources == (str(shipped_catalog_path()),)


@pytest.mark.parametrize("name", SHIPPED_ALIASES)
def test_shipped_catalog_has_the_deepseek_aliases(name: str) -> None:
    alias = load_catalog(shipped_catalog_path()).alias(name)
    assert alias is not None
    hf, ollama = SHIPPED_ALIASES[name]
    assert (alias.hf, alias.modelscope, alias.ollama) == (hf, hf, ollama)
    assert alias.description


def test_shipped_catalog_has_no_other_aliases() -> None:
    assert set(load_catalog(shipped_catalog_path()).models) == set(SHIPPED_ALIASES)


def test_top_level_copy_is_identical_to_the_shipped_file() -> None:
    assert (REPO_ROOT / "mirrors.yaml").read_bytes() == shipped_catalog_path().read_bytes()


def test_shipped_file_is_package_data() -> None:
    assert shipped_catalog_path() == REPO_ROOT / "src" / "dsmirror" / "data" / "mirrors.yaml"


# -- parsing ---------------------------------------------------------------------------------


def test_valid_document_parses_with_defaults_and_normalisation() -> None:
    catalog = parse(VALID)
    assert catalog.sources == ("test.yaml",)
    alpha, beta, swarm = catalog.mirrors
    assert alpha == Mirror("alpha", "http", "https://alpha.example/models/")
    assert (alpha.region, alpha.official, alpha.priority, alpha.weight) == ("global", False, 10, 1.0)
    assert (alpha.max_connections, alpha.enabled) == (8, True)
    assert beta == Mirror("beta", "hf", "https://beta.example:8443", "cn", True, 2, 0.5, 4, False)
    assert (alpha.host, beta.host, swarm.host) == ("alpha.example", "beta.example", "tracker.example")
    demo = catalog.alias("demo:1b")
    assert demo is not None
    assert demo.manifest_sha256 == SHA  # upper-case hex is accepted and stored lower-case
    assert demo.include == ("*.safetensors", "*.json")
    assert demo.exclude == ("original/*",)
    assert catalog.alias("demo") == ModelAlias("demo", hf="demo")
    assert catalog.alias("missing") is None


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_is_an_empty_catalog(text: str) -> None:
    assert parse(text) == Catalog(sources=("test.yaml",))


def test_null_sections_are_empty() -> None:
    catalog = parse("version: 1\nmirrors:\nmodels:\n")
    assert (catalog.mirrors, dict(catalog.models)) == ((), {})


def test_magnet_mirror_has_no_host() -> None:
    text = "version: 1\nmirrors:\n  - {name: s, kind: bittorrent, url: 'magnet:?xt=urn:btih:abc'}\n"
    (mirror,) = parse(text).mirrors
    assert mirror.host == ""


def test_yaml_anchors_and_merge_keys_are_understood() -> None:
    text = """\
version: 1
mirrors:
  - &lan {name: lan1, kind: dsmirror, url: "http://10.0.0.1:8080", region: lan, max_connections: 2}
  - <<: *lan
    name: lan2
    url: http://10.0.0.2:8080
models:
  a: &src {hf: org/a}
  b: *src
"""
    catalog = parse(text)
    lan2 = catalog.mirror("lan2")
    assert lan2 == Mirror("lan2", "dsmirror", "http://10.0.0.2:8080", region="lan", max_connections=2)
    assert catalog.alias("b") == ModelAlias("b", hf="org/a")


def test_relative_manifest_path_is_relative_to_the_catalog_file(tmp_path: Path) -> None:
    text = "version: 1\nmodels:\n  a: {manifest: manifests/a.json}\n  b: {manifest: /abs/b.json}\n"
    catalog = load_catalog(write(tmp_path / "conf" / "m.yaml", text))
    assert catalog.models["a"].manifest == str(tmp_path / "conf" / "manifests" / "a.json")
    assert catalog.models["b"].manifest == "/abs/b.json"
    assert parse(text).models["a"].manifest == "manifests/a.json"


# -- validation errors -----------------------------------------------------------------------

# (line of VALID to change, what to put there, field named by the error, part of the message).
# The error must point at the changed line; a replacement of several lines points at its last.
ONE_LINE_ERRORS = [
    ("version: 1", "version: 2", "version", "unsupported catalog version 2"),
    ("version: 1", "version: '1'", "version", "expected an integer, got string '1'"),
    ("mirrors:", "mirorrs:", "mirorrs", "unknown key 'mirorrs'"),
    ("  - name: beta", "  - name: Beta!", "mirrors[1].name", "invalid value 'Beta!'"),
    ("  - name: beta", "  - name: 12", "mirrors[1].name", "expected a string, got number 12"),
    ("  - name: beta", "  - name: alpha", "mirrors[1].name", "duplicate mirror name 'alpha'"),
    ("  - name: beta", "  - name: ''", "mirrors[1].name", "must not be empty"),
    ("    kind: hf", "    kind: htp", "mirrors[1].kind", "unknown kind 'htp' (expected one of http, hf,"),
    ("    kind: hf", "    kind: [hf]", "mirrors[1].kind", "expected a string, got a list"),
    ("    kind: hf", "    kind: bittorrent", None, None),  # https is fine for a tracker too
    ("    url: https://beta.example:8443", "    url: ftp://beta.example", "mirrors[1].url", "scheme 'ftp'"),
    ("    url: https://beta.example:8443", "    url: beta.example", "mirrors[1].url", "without a scheme"),
    ("    url: https://beta.example:8443", "    url: https://", "mirrors[1].url", "has no host"),
    ("    url: https://beta.example:8443", "    url: https://b.example:99999", "mirrors[1].url", "port"),
    ("    url: https://beta.example:8443", "    url: https://b.example/a b", "mirrors[1].url", "whitespace"),
    ("    url: https://beta.example:8443", "    url: 'magnet:?xt=urn:btih:ab'", "mirrors[1].url", "'magnet'"),
    ("    url: udp://tracker.example:6969", "    url: 'magnet:?dn=x'", "mirrors[2].url", "without xt="),
    ("    region: cn", "    region: no", "mirrors[1].region", "expected a string, got boolean no"),
    ("    region: cn", "    region: c n", "mirrors[1].region", "invalid value 'c n'"),
    ("    official: true", "    official: 'yes'", "mirrors[1].official", "expected true or false"),
    ("    priority: 2", "    priority: 0", "mirrors[1].priority", "0 is out of range (expected >= 1)"),
    ("    priority: 2", "    priority: 1.5", "mirrors[1].priority", "expected an integer, got number 1.5"),
    ("    priority: 2", "    priority: true", "mirrors[1].priority", "expected an integer, got boolean"),
    ("    priority: 2", "    prio: 2", "mirrors[1].prio", "unknown key 'prio'"),
    ("    weight: 0.5", "    weight: 0", "mirrors[1].weight", "out of range"),
    ("    weight: 0.5", "    weight: -1.0", "mirrors[1].weight", "out of range"),
    ("    weight: 0.5", "    weight: .inf", "mirrors[1].weight", "out of range"),
    ("    weight: 0.5", "    weight: .nan", "mirrors[1].weight", "out of range"),
    ("    weight: 0.5", "    weight: heavy", "mirrors[1].weight", "expected a number, got string"),
    ("    max_connections: 4", "    max_connections: 65", "mirrors[1].max_connections", "(expected 1..64)"),
    ("    enabled: false", "    enabled: null", "mirrors[1].enabled", "expected true or false, got null"),
    ("    region: cn", "    region: cn\n    region: eu", "mirrors[1].region", "duplicate key 'region'"),
    ('  "demo:1b":', '  "Demo 1b":', "models['Demo 1b']", "invalid alias name 'Demo 1b'"),
    ('  "demo:1b":', "  1.5:", "models", "expected a string key, got number 1.5"),
    ("  demo:", '  "demo:1b":', "models['demo:1b']", "duplicate key 'demo:1b'"),
    ("    description: Demo 1B", "    description: [a]", "models['demo:1b'].description", "got a list"),
    ("    hf: org/demo-1b@main", "    hf: org/demo 1b", "models['demo:1b'].hf", "invalid value"),
    ("    hf: org/demo-1b@main", "    hf: a/b/c", "models['demo:1b'].hf", "[namespace/]name[@revision]"),
    ("    modelscope: org/demo-1b", "    modelscope: demo-1b", "models['demo:1b'].modelscope", "namespace/"),
    ("    ollama: library/demo:1b", "    ollama: a/b/c/d", "models['demo:1b'].ollama", "[namespace/]name"),
    ("    ollama: library/demo:1b", "    ollama: library/Demo", "models['demo:1b'].ollama", "lower case"),
    ("    manifest: https://alpha.example/demo-1b.manifest.json", "    manifest: ftp://x/m.json",
     "models['demo:1b'].manifest", "invalid manifest URL"),
    (f"    manifest_sha256: {SHA.upper()}", f"    manifest_sha256: {SHA[:63]}",
     "models['demo:1b'].manifest_sha256", "64 hex digits"),
    (f"    manifest_sha256: {SHA.upper()}", f"    manifest_sha256: {SHA}0",
     "models['demo:1b'].manifest_sha256", "64 hex digits"),
    (f"    manifest_sha256: {SHA.upper()}", f"    manifest_sha256: {'g' * 64}",
     "models['demo:1b'].manifest_sha256", "64 hex digits"),
    ('    magnet: "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567"',
     "    magnet: https://x.example/t.torrent", "models['demo:1b'].magnet", "invalid magnet link"),
    ('    include: ["*.safetensors", "*.json"]', '    include: "*.json"', "models['demo:1b'].include",
     "expected a list of globs"),
    ('    include: ["*.safetensors", "*.json"]', '    include: ["*.json", 3]',
     "models['demo:1b'].include[1]", "expected a string, got number 3"),
    ('    exclude: ["original/*"]', '    exclude: [""]', "models['demo:1b'].exclude[0]", "must not be empty"),
    ('    exclude: ["original/*"]', '    excludes: ["original/*"]', "models['demo:1b'].excludes",
     "unknown key 'excludes'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    ONE_LINE_ERRORS,
    ids=[f"{case[2]}:{case[1].strip()[:30]}" for case in ONE_LINE_ERRORS],
)
def test_error_names_file_line_and_field(old: str, new: str, field: str | None, message: str | None) -> None:
    lines = VALID.splitlines()
    assert lines.count(old) == 1, f"{old!r} must be exactly one line of VALID"
    index = lines.index(old)
    text = "\n".join([*lines[:index], new, *lines[index + 1 :]]) + "\n"
    if field is None or message is None:
        parse(text)
        return
    with pytest.raises(CatalogError) as info:
        parse(text)
    error = info.value
    # A replacement of several lines (a duplicate key) is reported at its last line.
    expected_line = index + new.count("\n") + 1
    assert (error.file, error.line, error.field) == ("test.yaml", expected_line, field)
    assert message in error.message
    assert error.message.startswith(f"test.yaml:{expected_line}: {field}: ")
    assert isinstance(error, InputError) and error.exit_code == 7


# (document, line, field, part of the message): errors that are not a one-line change.
DOCUMENT_ERRORS = [
    ("mirrors: []\n", 1, "version", "missing required key 'version'"),
    ("- a\n- b\n", 1, None, "expected a mapping, got a list"),
    ("version: 1\nmirrors: {a: 1}\n", 2, "mirrors", "expected a list of mirrors, got a mapping"),
    ("version: 1\nmodels: [a]\n", 2, "models", "expected a mapping of aliases, got a list"),
    (
        "version: 1\nmirrors:\n  - name: x\n    kind: http\n",
        3,
        "mirrors[0].url",
        "missing required key 'url'",
    ),
    ("version: 1\nmirrors:\n  - kind: http\n", 3, "mirrors[0].name", "missing required key 'name'"),
    ("version: 1\nmirrors:\n  - https://x.example\n", 3, "mirrors[0]", "expected a mapping, got string"),
    ("version: 1\nmirrors:\n  - <<: {prio: 1}\n    name: x\n", 3, "mirrors[0].prio", "unknown key 'prio'"),
    ("version: 1\nmodels:\n  a: {hf: !custom x}\n", 3, "models['a'].hf", "invalid value"),
    ("version: 1\nversion: 1\n", 2, "version", "duplicate key 'version'"),
    ("version: 1\nmodels:\n  demo: org/demo\n", 3, "models['demo']", "expected a mapping, got string"),
    ("version: 1\nmodels:\n  demo:\n    hf: null\n", 3, "models['demo']", "alias 'demo' has no source"),
    ("version: 1\nmodels:\n  demo: {description: D}\n", 3, "models['demo']", "has no source"),
    ("version: 1\nmodels:\n  demo:\n", 3, "models['demo']", "expected a mapping, got null"),
    # YAML syntax errors: the line is YAML's problem mark.
    ("version: 1\nmirrors:\n  - name: a\n   kind: http\n", 4, None, "invalid YAML"),
    ("version: 1\nmodels: [a,\n", 3, None, "invalid YAML"),
    ("version: 1\nmirrors: a: b\n", 2, None, "invalid YAML: mapping values are not allowed here"),
    ("version: 1\nmirrors:\n\t- x\n", 3, None, "invalid YAML"),
    ("version: 1\n---\nversion: 1\n", 2, None, "invalid YAML: but found another document"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), DOCUMENT_ERRORS)
def test_document_error_names_line_and_field(text: str, line: int, field: str | None, message: str) -> None:
    with pytest.raises(CatalogError) as info:
        parse(text)
    assert (info.value.file, info.value.line, info.value.field) == ("test.yaml", line, field)
    assert message in info.value.message


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "url", ["http://h.example", "https://h.example:1/x", "magnet:?xt=urn:btih:ab", "udp://t.example:1"]
)
def test_url_schemes_by_kind(kind: str, url: str) -> None:
    text = f"version: 1\nmirrors:\n  - {{name: m, kind: {kind}, url: '{url}'}}\n"
    if url.startswith(("http:", "https:")) or kind == "bittorrent":
        assert parse(text).mirrors[0].url == url
    else:
        with pytest.raises(CatalogError, match="is not allowed for kind") as info:
            parse(text)
        assert (info.value.line, info.value.field) == (3, "mirrors[0].url")


# Each bounded field just inside and just outside its limits.
BOUNDARIES = [
    ("priority", "1", True),
    ("priority", "0", False),
    ("priority", "-1", False),
    ("priority", "1000000", True),
    ("max_connections", "1", True),
    ("max_connections", "0", False),
    ("max_connections", "64", True),
    ("max_connections", "65", False),
    ("weight", "1.0e-9", True),
    ("weight", "0.0", False),
    ("weight", "1", True),
    ("weight", "1.0e+300", True),
]


@pytest.mark.parametrize(("key", "value", "ok"), BOUNDARIES)
def test_bounded_fields(key: str, value: str, ok: bool) -> None:
    text = (
        f"version: 1\nmirrors:\n  - name: m\n    kind: http\n    url: https://m.example\n    {key}: {value}\n"
    )
    if ok:
        assert getattr(parse(text).mirrors[0], key) == type(getattr(Mirror("m", "http", "x"), key))(value)
    else:
        with pytest.raises(CatalogError, match="out of range") as info:
            parse(text)
        assert (info.value.line, info.value.field) == (6, f"mirrors[0].{key}")


@pytest.mark.parametrize("length", [63, 64, 65])
def test_manifest_sha256_length(length: int) -> None:
    text = f"version: 1\nmodels:\n  a:\n    manifest: m.json\n    manifest_sha256: '{'0' * length}'\n"
    if length == 64:
        assert parse(text).models["a"].manifest_sha256 == "0" * 64
    else:
        with pytest.raises(CatalogError) as info:
            parse(text)
        assert (info.value.line, info.value.field) == (5, "models['a'].manifest_sha256")


def test_exponent_without_a_decimal_point_is_explained() -> None:
    # YAML 1.1, which PyYAML implements, reads 1e-3 as a string.
    with pytest.raises(CatalogError, match="expected a number, got string '1e-3'") as info:
        parse("version: 1\nmirrors:\n  - {name: m, kind: http, url: 'https://m', weight: 1e-3}\n")
    assert info.value.hint is not None and "1.0e-9" in info.value.hint


def test_quoted_number_hints_at_removing_the_quotes() -> None:
    with pytest.raises(CatalogError, match="expected an integer, got string '1'") as info:
        parse("version: '1'\n")
    assert info.value.hint == "remove the quotes"


def test_unknown_key_hint_suggests_the_close_match() -> None:
    with pytest.raises(CatalogError) as info:
        parse("version: 1\nmirrors:\n  - {name: m, kind: http, url: 'https://m', max_conections: 2}\n")
    assert info.value.hint == "did you mean 'max_connections'?"


def test_boolean_where_a_string_is_expected_hints_at_quoting() -> None:
    with pytest.raises(CatalogError) as info:
        parse("version: 1\nmirrors:\n  - {name: m, kind: http, url: 'https://m', region: no}\n")
    assert info.value.hint is not None and "quote" in info.value.hint


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such file") as info:
        load_catalog(tmp_path / "missing.yaml")
    assert info.value.file == str(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("version: 1\nmodels: {a: {description: caf\xe9, hf: a}}\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not UTF-8"):
        load_catalog(bad)
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path)


# -- merging ---------------------------------------------------------------------------------

BASE = """\
version: 1
mirrors:
  - {name: a, kind: hf, url: "https://a.example", official: true, priority: 3}
  - {name: b, kind: http, url: "https://b.example"}
  - {name: c, kind: ollama, url: "https://c.example", priority: 1}
models:
  x: {description: X, hf: org/x, ollama: library/x:1b}
  y: {hf: org/y}
"""


def test_merged_replaces_by_name_in_place_and_appends_new_entries() -> None:
    base = parse(BASE)
    other = Catalog(
        (Mirror("d", "http", "https://d.example"), Mirror("b", "http", "https://b2.example")),
        {"y": ModelAlias("y", magnet="magnet:?xt=urn:btih:ab"), "z": ModelAlias("z", hf="org/z")},
        ("other.yaml",),
    )
    merged = base.merged(other)
    assert [m.name for m in merged.mirrors] == ["a", "b", "c", "d"]
    assert merged.mirror("b") == Mirror("b", "http", "https://b2.example")
    assert list(merged.models) == ["x", "y", "z"]
    assert merged.models["y"] == ModelAlias("y", magnet="magnet:?xt=urn:btih:ab")  # whole entry replaced
    assert merged.sources == ("test.yaml", "other.yaml")
    assert base.mirror("b") == Mirror("b", "http", "https://b.example")  # base is unchanged


def test_override_file_inherits_what_it_leaves_out() -> None:
    base = parse(BASE)
    override = f"""\
version: 1
mirrors:
  - name: a
    enabled: false
  - name: c
    url: https://c2.example
models:
  x:
    ollama: null
    manifest: https://m.example/x.json
    manifest_sha256: {SHA}
"""
    merged = base.merged(parse_catalog(override, "user.yaml", base=base))
    assert merged.mirror("a") == Mirror(
        "a", "hf", "https://a.example", official=True, priority=3, enabled=False
    )
    assert merged.mirror("c") == Mirror("c", "ollama", "https://c2.example", priority=1)
    assert merged.alias("x") == ModelAlias(
        "x", description="X", hf="org/x", manifest="https://m.example/x.json", manifest_sha256=SHA
    )
    assert [m.name for m in merged.mirrors_of_kind()] == ["c", "b"]
    assert [m.name for m in merged.mirrors_of_kind(include_disabled=True)] == ["c", "a", "b"]


def test_override_that_changes_the_kind_rechecks_the_inherited_url() -> None:
    base = parse("version: 1\nmirrors:\n  - {name: t, kind: bittorrent, url: 'udp://t.example:1'}\n")
    with pytest.raises(CatalogError, match="scheme 'udp'") as info:
        parse("version: 1\nmirrors:\n  - name: t\n    kind: http\n", base=base)
    assert (info.value.line, info.value.field) == (4, "mirrors[0].kind")


def test_partial_entry_without_an_earlier_definition_is_incomplete() -> None:
    with pytest.raises(CatalogError, match="missing required key 'kind'") as info:
        parse("version: 1\nmirrors:\n  - {name: nope, enabled: false}\n", base=parse(BASE))
    assert info.value.hint is not None and "nope" in info.value.hint


def test_mirrors_of_kind_filters_and_orders_by_priority() -> None:
    catalog = parse(BASE)
    assert [m.name for m in catalog.mirrors_of_kind("hf", "ollama")] == ["c", "a"]
    assert [m.name for m in catalog.mirrors_of_kind("http")] == ["b"]
    assert catalog.mirrors_of_kind("bittorrent") == ()
    assert catalog.mirror("nope") is None


def test_catalog_is_immutable() -> None:
    models = {"y": ModelAlias("y", hf="org/y")}
    catalog = Catalog((), models)
    models["z"] = ModelAlias("z", hf="org/z")
    assert list(catalog.models) == ["y"]
    with pytest.raises(TypeError):
        catalog.models["z"] = ModelAlias("z")  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.mirrors = ()  # type: ignore[misc]
    with pytest.raises(ValueError, match="duplicate mirror names"):
        Catalog((Mirror("a", "http", "https://a"), Mirror("a", "hf", "https://b")))
    with pytest.raises(ValueError, match="stored under the key"):
        Catalog((), {"b": ModelAlias("a", hf="a")})


# -- default locations -----------------------------------------------------------------------

USER = """\
version: 1
mirrors:
  - {name: hf-mirror, enabled: false}
  - {name: lan, kind: dsmirror, url: "http://192.168.1.5:8080", region: lan, priority: 1}
"""


def test_user_catalog_path_follows_xdg(tmp_path: Path) -> None:
    assert user_catalog_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "dsmirror" / "mirrors.yaml"
    home = {"HOME": str(tmp_path)}
    assert user_catalog_path(home) == tmp_path / ".config" / "dsmirror" / "mirrors.yaml"
    # A relative XDG_CONFIG_HOME is invalid and ignored, as the spec says.
    assert user_catalog_path({**home, "XDG_CONFIG_HOME": "rel"}) == user_catalog_path(home)


def test_default_paths_include_the_user_file_only_if_it_exists(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert default_catalog_paths(env) == [shipped_catalog_path()]
    user = write(tmp_path / "dsmirror" / "mirrors.yaml", USER)
    assert default_catalog_paths(env) == [shipped_catalog_path(), user]


def test_default_catalog_merges_shipped_user_and_extra_files(tmp_path: Path) -> None:
    user = write(tmp_path / "config" / "dsmirror" / "mirrors.yaml", USER)
    extra = write(tmp_path / "team.yaml", "version: 1\nmirrors:\n  - {name: lan, priority: 2}\n")
    catalog = load_default_catalog({"XDG_CONFIG_HOME": str(tmp_path / "config")}, [extra])
    assert catalog.sources == (str(shipped_catalog_path()), str(user), str(extra))
    hf_mirror = catalog.mirror("hf-mirror")
    assert hf_mirror is not None and not hf_mirror.enabled and hf_mirror.url == "https://hf-mirror.com"
    assert "hf-mirror" not in [m.name for m in catalog.mirrors_of_kind("hf")]
    assert catalog.mirror("lan") == Mirror("lan", "dsmirror", "http://192.168.1.5:8080", "lan", priority=2)
    assert catalog.alias("deepseek-r1:7b") is not None


def test_replace_reads_only_the_extra_files(tmp_path: Path) -> None:
    write(tmp_path / "dsmirror" / "mirrors.yaml", USER)
    only = write(tmp_path / "only.yaml", BASE)
    catalog = load_default_catalog({"XDG_CONFIG_HOME": str(tmp_path)}, [only], replace=True)
    assert catalog.sources == (str(only),)
    assert [m.name for m in catalog.mirrors] == ["a", "b", "c"]
    assert load_default_catalog({}, replace=True) == Catalog()


def test_later_extra_file_errors_name_that_file(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", BASE)
    bad = write(tmp_path / "bad.yaml", "version: 1\nmirrors:\n  - {name: a, kind: htp}\n")
    with pytest.raises(CatalogError) as info:
        load_default_catalog({}, [good, bad], replace=True)
    assert (info.value.file, info.value.line, info.value.field) == (str(bad), 3, "mirrors[0].kind")
