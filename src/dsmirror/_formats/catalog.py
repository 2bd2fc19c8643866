"""The catalog: which mirrors exist and which model names (aliases) dsmirror knows.

A catalog is read from one or more YAML files and merged in order, later files overriding
earlier ones (see `load_default_catalog`):

1. the shipped ``dsmirror/data/mirrors.yaml`` (package data),
2. the user's ``$XDG_CONFIG_HOME/dsmirror/mirrors.yaml`` (default ``~/.config/dsmirror/mirrors.yaml``),
3. every ``--mirrors FILE`` given on the command line.

File format (version 1)::

    version: 1                       # required unless the file is empty
    mirrors:                         # optional list
      - name: huggingface            # required, unique, [a-z0-9._-]+
        kind: hf                     # required: http | hf | modelscope | ollama | bittorrent | dsmirror
        url: https://huggingface.co  # required: http(s); kind bittorrent may also use magnet: or udp:
        region: global               # optional short code: global, cn, us, eu, lan, ... (default global)
        official: true               # optional, default false
        priority: 1                  # optional int >= 1; lower is preferred when measurements tie (10)
        weight: 1.0                  # optional number > 0 (1.0)
        max_connections: 8           # optional int 1..64 (8)
        enabled: true                # optional, default true
    models:                          # optional mapping: alias -> where to get it
      "deepseek-r1:7b":              # [a-z0-9][a-z0-9._:-]*; quote keys that contain ':'
        description: DeepSeek-R1-Distill-Qwen-7B
        hf: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B          # [namespace/]name[@revision]
        modelscope: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B  # namespace/name[@revision]
        ollama: library/deepseek-r1:7b                       # [host/][namespace/]name[:tag]
        manifest: https://example.org/r1-7b.manifest.json    # URL or path of a dsmirror piece manifest;
                                                             # a relative path is relative to this file
        manifest_sha256: <64 hex digits>                     # pins the manifest
        magnet: "magnet:?xt=urn:btih:..."
        include: ["*.safetensors", "*.json"]                 # optional globs
        exclude: ["original/*"]                              # optional globs
        signature: https://example.org/r1-7b/model.sig       # URL or path of an OpenSSF model.sig (for
                                                             # hf: default the repo's own model.sig)
        publisher: deepseek                                  # who must have signed it (publishers:)
        require_signature: true                              # no pull without a valid one (false)
    publishers:                      # optional mapping: who signs models (OpenSSF model signing)
      deepseek:                      # [a-z0-9._-]+; give exactly one of key, certificate_chain, identity
        key: keys/deepseek.pub.pem                           # PEM public key (EC); paths are relative
        certificate_chain: [ca.pem]                          # or PEM root/intermediate certificates
        identity: release@example.org                        # or a Sigstore identity, with
        issuer: https://accounts.google.com                  # its OIDC issuer (needs a trust root:
        trust_config: sigstore-trust.json                    # the public one, fetched, or this file)

Every alias needs at least one source (hf, modelscope, ollama, manifest, magnet or signature).
Optional alias fields may be set to ``null`` to drop a value an earlier file gave. An alias's
``publisher`` must be defined in the same file or an earlier one; a later file's publisher of the
same name replaces it whole (a publisher's fields are not inherited).

Overriding: an entry whose name is already defined by an earlier file replaces it, keeping its
place in the order. Fields the overriding entry leaves out are inherited, so a user file can
disable a shipped mirror with just::

    version: 1
    mirrors:
      - name: hf-mirror
        enabled: false

Validation is strict: unknown keys, wrong types, bad values and duplicates raise `CatalogError`
naming the file, the line and the field, e.g.
``mirrors.yaml:12: mirrors[2].kind: unknown kind 'htp' (expected one of http, hf, ...)``.
To know the line of every value the file is *composed* into YAML nodes, which carry their marks,
and only scalars are turned into Python values, one at a time.

Whatever the file holds, reading it raises `CatalogError` and nothing else: nesting too deep for
the YAML composer, numbers too long for Python's ``int``, dates that do not exist, lone surrogates
(``"\ud800"``) in strings. Merge keys are resolved here, not by PyYAML's ``flatten_mapping``,
which copies every merged entry as often as it is merged: a few hundred bytes of ``<<: [*a, *a,
...]`` nested a few levels deep would take minutes and gigabytes. Here each mapping's merged
entries are worked out once, each key kept once.

Documented in docs/formats.md#the-catalog.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, TypeVar, get_args
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import yaml

from dsmirror._core.errors import CatalogError, UsageError
from dsmirror._formats.manifest import FileEntry
from dsmirror._formats.paths import has_surrogates

__all__ = [
    "CATALOG_VERSION",
    "KINDS",
    "Catalog",
    "Mirror",
    "MirrorKind",
    "ModelAlias",
    "Publisher",
    "default_catalog_paths",
    "load_catalog",
    "load_default_catalog",
    "parse_catalog",
    "shipped_catalog_path",
    "user_catalog_path",
]

CATALOG_VERSION: Final = 1

MirrorKind = Literal["http", "hf", "modelscope", "ollama", "bittorrent", "dsmirror"]
KINDS: Final[tuple[MirrorKind, ...]] = get_args(MirrorKind)

DEFAULT_REGION: Final = "global"
DEFAULT_PRIORITY: Final = 10
DEFAULT_WEIGHT: Final = 1.0
DEFAULT_MAX_CONNECTIONS: Final = 8
MAX_CONNECTIONS_LIMIT: Final = 64


@dataclass(frozen=True)
class Mirror:
    """One place that serves model files, e.g. a Hugging Face endpoint or an Ollama registry."""

    name: str
    kind: MirrorKind
    url: str
    region: str = DEFAULT_REGION
    official: bool = False
    #: Lower is preferred when measured speeds tie.
    priority: int = DEFAULT_PRIORITY
    weight: float = DEFAULT_WEIGHT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    enabled: bool = True

    @property
    def host(self) -> str:
        """Lower-cased host name of `url`; empty for a magnet link."""
        return urlsplit(self.url).hostname or ""


@dataclass(frozen=True)
class Publisher:
    """Who signs models: the trust material a ``model.sig`` is checked against (one kind of it).

    Paths are as the catalog file (or the command line) gave them, resolved against its folder.
    """

    name: str
    #: PEM public key (elliptic curve) the signature must verify with.
    key: str | None = None
    #: PEM certificates (roots, intermediates) the signing certificate must chain to.
    certificate_chain: tuple[str, ...] = ()
    #: Sigstore (keyless): the signer's identity (an e-mail, a workflow URL) and its OIDC issuer.
    identity: str | None = None
    issuer: str | None = None
    #: Sigstore trust root (a ClientTrustConfig JSON) instead of the public-good instance's.
    trust_config: str | None = None

    @property
    def method(self) -> Literal["key", "certificate", "sigstore"]:
        return "key" if self.key else "certificate" if self.certificate_chain else "sigstore"

    def problem(self) -> str | None:
        """Why this is not a usable publisher, or None."""
        kinds = [k for k in ("key", "certificate_chain", "identity") if getattr(self, k)]
        if len(kinds) != 1:
            return f"give exactly one of key, certificate_chain, identity (got {', '.join(kinds) or 'none'})"
        if bool(self.identity) != bool(self.issuer):
            return "a Sigstore identity needs its issuer, and an issuer its identity"
        if self.trust_config and not self.identity:
            return "trust_config is for Sigstore identities only"
        return None


@dataclass(frozen=True)
class ModelAlias:
    """A short model name and every way of getting its files."""

    name: str
    description: str | None = None
    #: Hugging Face repo id, ``[namespace/]name[@revision]``.
    hf: str | None = None
    #: ModelScope model id, ``namespace/name[@revision]``.
    modelscope: str | None = None
    #: Ollama model, ``[host/][namespace/]name[:tag]`` (``dsmirror._formats.ollama``).
    ollama: str | None = None
    #: URL or path of a dsmirror piece manifest.
    manifest: str | None = None
    #: Lower-case hex SHA-256 the manifest must have.
    manifest_sha256: str | None = None
    magnet: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    #: URL or path of an OpenSSF model signature (``model.sig``).
    signature: str | None = None
    #: Name of the publisher (``Catalog.publishers``) whose signature counts.
    publisher: str | None = None
    #: Refuse a pull of this alias without a valid signature by ``publisher``.
    require_signature: bool = False


@dataclass(frozen=True)
class Catalog:
    """Mirrors and aliases merged from `sources`, the files they were read from."""

    mirrors: tuple[Mirror, ...] = ()
    models: Mapping[str, ModelAlias] = field(default_factory=lambda: MappingProxyType({}))
    sources: tuple[str, ...] = ()
    publishers: Mapping[str, Publisher] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # Frozen all the way down: a caller's dict or list cannot change the catalog later.
        object.__setattr__(self, "mirrors", tuple(self.mirrors))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "publishers", MappingProxyType(dict(self.publishers)))
        names = [m.name for m in self.mirrors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate mirror names in {names}")
        for key, alias in self.models.items():
            if key != alias.name:
                raise ValueError(f"alias {alias.name!r} is stored under the key {key!r}")

    def mirror(self, name: str) -> Mirror | None:
        """The mirror called `name`, enabled or not."""
        return next((m for m in self.mirrors if m.name == name), None)

    def mirrors_of_kind(self, *kinds: MirrorKind, include_disabled: bool = False) -> tuple[Mirror, ...]:
        """Enabled mirrors of any of `kinds` (all kinds if none given), by priority then file order."""
        chosen = [
            m for m in self.mirrors if (not kinds or m.kind in kinds) and (include_disabled or m.enabled)
        ]
        return tuple(sorted(chosen, key=lambda m: m.priority))

    def alias(self, name: str) -> ModelAlias | None:
        return self.models.get(name)

    def merged(self, other: Catalog) -> Catalog:
        """This catalog overridden by `other`: entries with the same name are replaced in place."""
        overrides = {m.name: m for m in other.mirrors}
        mirrors = [overrides.pop(m.name, m) for m in self.mirrors]
        mirrors.extend(overrides.values())
        return Catalog(
            tuple(mirrors),
            {**self.models, **other.models},
            self.sources + other.sources,
            {**self.publishers, **other.publishers},
        )


def shipped_catalog_path() -> Path:
    """The catalog shipped as package data."""
    # dsmirror is installed as plain files (never imported from a zip), so this is a real path.
    return Path(str(resources.files("dsmirror") / "data" / "mirrors.yaml"))


def user_catalog_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/dsmirror/mirrors.yaml``, whether it exists or not."""
    config_home = env.get("XDG_CONFIG_HOME", "")
    # The XDG base directory spec says to ignore a relative value.
    if not os.path.isabs(config_home):
        home = env.get("HOME")
        config_home = str((Path(home) if home else Path.home()) / ".config")
    return Path(config_home) / "dsmirror" / "mirrors.yaml"


def default_catalog_paths(env: Mapping[str, str]) -> list[Path]:
    """The shipped catalog, then the user's catalog if it exists."""
    paths = [shipped_catalog_path()]
    user = user_catalog_path(env)
    if user.exists():
        paths.append(user)
    return paths


def load_default_catalog(
    env: Mapping[str, str], extra: Sequence[Path] = (), replace: bool = False
) -> Catalog:
    """Merge the default catalogs and then `extra` (``--mirrors FILE``), later files overriding.

    With `replace`, only `extra` is read: nothing shipped, nothing from the user's config.
    """
    paths = list(extra) if replace else [*default_catalog_paths(env), *extra]
    catalog = Catalog()
    for path in paths:
        catalog = catalog.merged(load_catalog(path, base=catalog))
    return catalog


def load_catalog(path: Path, *, base: Catalog | None = None) -> Catalog:
    """Read and validate one catalog file.

    Entries that override an entry of `base` may leave fields out; they are inherited.
    Relative manifest paths are resolved against the file's directory.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CatalogError("no such file", file=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise CatalogError(f"not UTF-8 text ({exc.reason})", file=str(path)) from exc
    except OSError as exc:
        raise CatalogError(f"cannot read: {exc.strerror or exc}", file=str(path)) from exc
    return parse_catalog(text, str(path), base=base, relative_to=path.absolute().parent)


def parse_catalog(
    text: str, file: str, *, base: Catalog | None = None, relative_to: Path | None = None
) -> Catalog:
    """Validate catalog `text`; `file` names it in errors and in `Catalog.sources`.

    `base` and `relative_to` are as for `load_catalog`; without `relative_to`, manifest paths
    are kept as written.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except RecursionError:
        raise CatalogError("invalid YAML: nested too deeply", file=file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise CatalogError(
            f"invalid YAML: {exc.problem or exc.context}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="check the indentation, and quote values that contain ': ' or start with a symbol",
        ) from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"invalid YAML: {exc}", file=file) from exc
    finally:
        loader.dispose()
    try:
        return _Parser(file, loader, base or Catalog(), relative_to).catalog(root)
    except RecursionError:  # merge keys merging merges, thousands deep
        raise CatalogError("invalid YAML: merge keys nested too deeply", file=file) from None


_T = TypeVar("_T")

_MIRROR_NAME: Final = re.compile(r"[a-z0-9._-]+")
_ALIAS_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._:-]*")
_REGION: Final = re.compile(r"[A-Za-z0-9._-]+")
_REPO_PART: Final = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REVISION: Final = r"(?:@[A-Za-z0-9._/-]+)?"
_HF_REPO: Final = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}{_REVISION}")
_MODELSCOPE_REPO: Final = re.compile(rf"{_REPO_PART}/{_REPO_PART}{_REVISION}")
_SHA256: Final = re.compile(r"[0-9a-fA-F]{64}")
_HAS_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_TOP_KEYS: Final = ("version", "mirrors", "models", "publishers")
_MIRROR_KEYS: Final = tuple(f.name for f in fields(Mirror))
_ALIAS_KEYS: Final = tuple(f.name for f in fields(ModelAlias) if f.name != "name")  # name is the key
_ALIAS_SOURCES: Final = ("hf", "modelscope", "ollama", "manifest", "magnet", "signature")
_PUBLISHER_KEYS: Final = tuple(f.name for f in fields(Publisher) if f.name != "name")  # name is the key
_WEB_SCHEMES: Final = ("http", "https")
_BITTORRENT_SCHEMES: Final = ("http", "https", "magnet", "udp")
_QUOTE_HINT: Final = (
    "YAML reads unquoted yes/no/on/off/true/false as booleans and digits as numbers; quote it"
)

# A mapping's entries by key: (key node, value node), so errors can point at either.
_Entries = dict[str, tuple[yaml.Node, yaml.Node]]
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_INT_TAG: Final = "tag:yaml.org,2002:int"


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _url_problem(url: str, kind: MirrorKind) -> str | None:
    """Why `url` cannot be the URL of a mirror of `kind`, or None if it can."""
    if any(c.isspace() for c in url):
        return f"URL {url!r} contains whitespace"
    parts = urlsplit(url)
    allowed = _BITTORRENT_SCHEMES if kind == "bittorrent" else _WEB_SCHEMES
    if parts.scheme not in allowed:
        what = f"scheme {parts.scheme!r}" if parts.scheme else "a URL without a scheme"
        return f"{what} is not allowed for kind {kind!r} (expected {', '.join(allowed)}): {url!r}"
    if parts.scheme == "magnet":
        return None if "xt" in parse_qs(parts.query) else f"magnet link without xt=: {url!r}"
    if not parts.hostname:
        return f"URL {url!r} has no host"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        return f"URL {url!r} has an invalid port"
    return None


class _Parser:
    """Walks the composed node tree of one file and builds a `Catalog` from it."""

    def __init__(self, file: str, loader: yaml.SafeLoader, base: Catalog, relative_to: Path | None) -> None:
        self.file = file
        self.loader = loader
        self.base = base
        self.relative_to = relative_to
        #: This file's publishers, once read (aliases may name them).
        self.publishers: dict[str, Publisher] = {}
        #: Every entry of a mapping, merged ones included, by id of its node (see ``merged``).
        self._all_entries: dict[int, _Entries] = {}
        self._merging: set[int] = set()

    def error(self, node: yaml.Node, field: str, message: str, hint: str | None = None) -> CatalogError:
        return CatalogError(message, file=self.file, line=_line(node), field=field or None, hint=hint)

    # -- document -----------------------------------------------------------------------------

    def catalog(self, root: yaml.Node | None) -> Catalog:
        if root is None or _is_null(root):
            return Catalog(sources=(self.file,))
        top = self.entries(root, "", _TOP_KEYS)
        if "version" not in top:
            raise self.error(
                root, "version", "missing required key 'version'", hint=f"add 'version: {CATALOG_VERSION}'"
            )
        version = self.integer(top["version"][1], "version")
        if version != CATALOG_VERSION:
            raise self.error(
                top["version"][1],
                "version",
                f"unsupported catalog version {version} (this dsmirror reads version {CATALOG_VERSION})",
                hint="upgrade dsmirror, or write the file in the version it reads",
            )
        mirrors = self.mirrors(top["mirrors"][1]) if "mirrors" in top else ()
        # Before the models: an alias's publisher must be defined here or in an earlier file.
        self.publishers = self.publisher_map(top["publishers"][1]) if "publishers" in top else {}
        models = self.models(top["models"][1]) if "models" in top else {}
        return Catalog(mirrors, models, (self.file,), self.publishers)

    def mirrors(self, node: yaml.Node) -> tuple[Mirror, ...]:
        if _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "mirrors", f"expected a list of mirrors, got {self.describe(node)}")
        seen: dict[str, int] = {}
        mirrors = []
        for index, item in enumerate(node.value):
            where = f"mirrors[{index}]"
            entries = self.entries(item, where, _MIRROR_KEYS)
            mirror = self.mirror(item, entries, where)
            if mirror.name in seen:
                raise self.error(
                    entries["name"][1],
                    f"{where}.name",
                    f"duplicate mirror name {mirror.name!r}",
                    hint=f"it is already defined at line {seen[mirror.name]}",
                )
            seen[mirror.name] = _line(entries["name"][1])
            mirrors.append(mirror)
        return tuple(mirrors)

    def mirror(self, node: yaml.Node, entries: _Entries, where: str) -> Mirror:
        if "name" not in entries:
            raise self.error(node, f"{where}.name", "missing required key 'name'")
        name = self.matching(entries["name"][1], f"{where}.name", _MIRROR_NAME, "[a-z0-9._-]+")
        inherited = self.base.mirror(name)
        if inherited is None:
            for key in ("kind", "url"):
                if key not in entries:
                    raise self.error(
                        node,
                        f"{where}.{key}",
                        f"missing required key {key!r}",
                        hint=f"no earlier catalog defines a mirror {name!r} to inherit it from",
                    )
        # Only read when `inherited` is None, and then "kind" and "url" are present.
        template = inherited or Mirror(name, "http", "")

        def get(key: str, parse: Callable[[yaml.Node, str], _T], default: _T) -> _T:
            return parse(entries[key][1], f"{where}.{key}") if key in entries else default

        kind = get("kind", self.kind, template.kind)
        url = get("url", self.string, template.url)
        problem = _url_problem(url, kind)
        if problem:
            # An inherited URL can only be wrong because this entry changed the kind.
            key = "url" if "url" in entries else "kind"
            raise self.error(entries[key][1], f"{where}.{key}", problem)
        return Mirror(
            name=name,
            kind=kind,
            url=url,
            region=get("region", self.region, template.region),
            official=get("official", self.boolean, template.official),
            priority=get("priority", self.bounded(1, None), template.priority),
            weight=get("weight", self.positive_number, template.weight),
            max_connections=get(
                "max_connections", self.bounded(1, MAX_CONNECTIONS_LIMIT), template.max_connections
            ),
            enabled=get("enabled", self.boolean, template.enabled),
        )

    def models(self, node: yaml.Node) -> dict[str, ModelAlias]:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, "models", f"expected a mapping of aliases, got {self.describe(node)}")
        models = {}
        for name, (key_node, value_node) in self.entries(node, "models").items():
            where = f"models[{name!r}]"
            if not _ALIAS_NAME.fullmatch(name):
                raise self.error(
                    key_node, where, f"invalid alias name {name!r} (expected [a-z0-9][a-z0-9._:-]*)"
                )
            models[name] = self.alias(name, key_node, value_node, where)
        return models

    def alias(self, name: str, key_node: yaml.Node, node: yaml.Node, where: str) -> ModelAlias:
        entries = self.entries(node, where, _ALIAS_KEYS)
        template = self.base.alias(name) or ModelAlias(name)

        def get(key: str, parse: Callable[[yaml.Node, str], _T], default: _T) -> _T:
            return parse(entries[key][1], f"{where}.{key}") if key in entries else default

        def optional(parse: Callable[[yaml.Node, str], str]) -> Callable[[yaml.Node, str], str | None]:
            return lambda n, f: None if _is_null(n) else parse(n, f)

        def pattern(regex: re.Pattern[str], expected: str) -> Callable[[yaml.Node, str], str]:
            return lambda n, f: self.matching(n, f, regex, expected)

        alias = ModelAlias(
            name=name,
            description=get("description", optional(self.string), template.description),
            hf=get("hf", optional(pattern(_HF_REPO, "[namespace/]name[@revision]")), template.hf),
            modelscope=get(
                "modelscope",
                optional(pattern(_MODELSCOPE_REPO, "namespace/name[@revision]")),
                template.modelscope,
            ),
            ollama=get("ollama", optional(self.ollama_model), template.ollama),
            manifest=get("manifest", optional(self.manifest), template.manifest),
            manifest_sha256=get("manifest_sha256", optional(self.sha256), template.manifest_sha256),
            magnet=get("magnet", optional(self.magnet), template.magnet),
            include=get("include", self.globs, template.include),
            exclude=get("exclude", self.globs, template.exclude),
            signature=get("signature", optional(self.manifest), template.signature),
            publisher=get("publisher", optional(self.publisher_name), template.publisher),
            require_signature=get("require_signature", self.boolean, template.require_signature),
        )
        if alias.require_signature and not alias.publisher:
            at = entries["require_signature"][1] if "require_signature" in entries else key_node
            raise self.error(
                at,
                f"{where}.require_signature",
                "require_signature needs a publisher",
                hint="name the publisher whose signature counts: publisher: NAME (see publishers:)",
            )
        if not any((alias.hf, alias.modelscope, alias.ollama, alias.manifest, alias.magnet, alias.signature)):
            raise self.error(
                key_node,
                where,
                f"alias {name!r} has no source",
                hint=f"give at least one of {', '.join(_ALIAS_SOURCES)}",
            )
        return alias

    def publisher_map(self, node: yaml.Node) -> dict[str, Publisher]:
        if _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(
                node, "publishers", f"expected a mapping of publishers, got {self.describe(node)}"
            )
        out = {}
        for name, (key_node, value_node) in self.entries(node, "publishers").items():
            where = f"publishers[{name!r}]"
            if not _MIRROR_NAME.fullmatch(name):
                raise self.error(key_node, where, f"invalid publisher name {name!r} (expected [a-z0-9._-]+)")
            out[name] = self.publisher(name, value_node, where)
        return out

    def publisher(self, name: str, node: yaml.Node, where: str) -> Publisher:
        entries = self.entries(node, where, _PUBLISHER_KEYS)

        def get(key: str, parse: Callable[[yaml.Node, str], _T], default: _T) -> _T:
            return parse(entries[key][1], f"{where}.{key}") if key in entries else default

        publisher = Publisher(
            name=name,
            key=get("key", self.local_path, None),
            certificate_chain=get("certificate_chain", self.local_paths, ()),
            identity=get("identity", self.string, None),
            issuer=get("issuer", self.string, None),
            trust_config=get("trust_config", self.local_path, None),
        )
        problem = publisher.problem()
        if problem:
            raise self.error(node, where, problem)
        return publisher

    def publisher_name(self, node: yaml.Node, field: str) -> str:
        value = self.matching(node, field, _MIRROR_NAME, "[a-z0-9._-]+")
        if value not in self.publishers and value not in self.base.publishers:
            raise self.error(
                node,
                field,
                f"no publisher {value!r} is defined",
                hint="define it under publishers: in this file or an earlier one",
            )
        return value

    def local_path(self, node: yaml.Node, field: str) -> str:
        """A path of a local file; a relative one is relative to this file."""
        value = self.string(node, field)
        if _HAS_SCHEME.match(value):
            raise self.error(node, field, f"expected the path of a local file, got the URL {value!r}")
        if self.relative_to is not None and not Path(value).is_absolute():
            return str(self.relative_to / value)
        return value

    def local_paths(self, node: yaml.Node, field: str) -> tuple[str, ...]:
        """One path, or a list of them."""
        if not isinstance(node, yaml.SequenceNode):
            return (self.local_path(node, field),)
        return tuple(self.local_path(item, f"{field}[{i}]") for i, item in enumerate(node.value))

    # -- structure ----------------------------------------------------------------------------

    def entries(self, node: yaml.Node, where: str, allowed: Sequence[str] | None = None) -> _Entries:
        """The string-keyed entries of mapping `node`; rejects duplicate and unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, where, f"expected a mapping, got {self.describe(node)}")
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.scalar(key_node, where)
            if not isinstance(key, str):
                raise self.error(key_node, where, f"expected a string key, got {self.describe(key_node)}")
            field = f"{where}[{key!r}]" if allowed is None else _join(where, key)
            if key in entries:
                raise self.error(
                    key_node,
                    field,
                    f"duplicate key {key!r}",
                    hint=f"it is already given at line {_line(entries[key][0])}",
                )
            if allowed is not None and key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                raise self.error(
                    key_node,
                    field,
                    f"unknown key {key!r}",
                    hint=f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}",
                )
            entries[key] = (key_node, value_node)
        # YAML merge keys ('<<: *anchor') supply the keys the mapping does not give itself.
        for key, entry in self.merged(node, where).items():
            if key in entries:
                continue
            if allowed is not None and key not in allowed:
                raise self.error(entry[0], _join(where, key), f"unknown key {key!r} (merged with '<<')")
            entries[key] = entry
        return entries

    def merged(self, node: yaml.MappingNode, where: str) -> _Entries:
        """The entries the merge keys of ``node`` bring (as PyYAML's ``flatten_mapping`` orders them:
        of ``<<: [a, b]`` a's win over b's, and a later ``<<`` over an earlier one)."""
        out: _Entries = {}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            if isinstance(value_node, yaml.MappingNode):
                subs = [value_node]
            elif isinstance(value_node, yaml.SequenceNode) and all(
                isinstance(sub, yaml.MappingNode) for sub in value_node.value
            ):
                subs = value_node.value
            else:
                raise self.error(
                    value_node, where, "invalid merge: expected a mapping or list of mappings for merging"
                )
            for sub in reversed(subs):
                out.update(self.all_entries(sub, where))
        return out

    def all_entries(self, node: yaml.MappingNode, where: str) -> _Entries:
        """Every string-keyed entry of ``node``, merged ones included (later ones win); worked out
        once per node, however often it is merged."""
        done = self._all_entries.get(id(node))
        if done is not None:
            return done
        if id(node) in self._merging:
            raise self.error(node, where, "invalid merge: a mapping merges itself")
        self._merging.add(id(node))
        out = self.merged(node, where)
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                key = self.scalar(key_node, where)
                if isinstance(key, str):
                    out[key] = (key_node, value_node)
        self._merging.discard(id(node))
        self._all_entries[id(node)] = out
        return out

    def scalar(self, node: yaml.Node, field: str) -> object:
        if not isinstance(node, yaml.ScalarNode):
            return node  # described by `describe`; never a valid scalar value
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(node, field, f"invalid value: {getattr(exc, 'problem', None) or exc}") from exc
        except ValueError as exc:  # a date that does not exist; an int longer than Python reads
            why = f"a number of {len(node.value)} characters is too long" if node.tag == _INT_TAG else exc
            raise self.error(node, field, f"invalid value: {why}") from None

    def describe(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        value = self.scalar(node, "")
        if value is None:
            return "null"
        if isinstance(value, bool):
            return f"boolean {node.value}"
        if isinstance(value, int | float):
            return f"number {node.value}"
        if isinstance(value, str):
            return f"string {value!r}"
        return f"{type(value).__name__} {node.value}"

    def mistyped(self, node: yaml.Node, field: str, expected: str) -> CatalogError:
        value = self.scalar(node, field)
        hint = None
        if expected == "a string" and isinstance(value, bool | int | float):
            hint = _QUOTE_HINT
        elif expected in ("a number", "an integer") and isinstance(value, str):
            if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
                hint = "remove the quotes"
            elif _looks_like_float(value):
                hint = "YAML 1.1 reads an exponent only with a decimal point and a sign: write 1.0e+3, 1.0e-9"
        return self.error(node, field, f"expected {expected}, got {self.describe(node)}", hint=hint)

    # -- values -------------------------------------------------------------------------------

    def string(self, node: yaml.Node, field: str) -> str:
        value = self.scalar(node, field)
        if not isinstance(value, str):
            raise self.mistyped(node, field, "a string")
        if not value.strip():
            raise self.error(node, field, "must not be empty")
        if has_surrogates(value):
            raise self.error(node, field, f"{value!r} is not valid Unicode (a lone surrogate)")
        return value

    def matching(self, node: yaml.Node, field: str, regex: re.Pattern[str], expected: str) -> str:
        value = self.string(node, field)
        if not regex.fullmatch(value):
            raise self.error(node, field, f"invalid value {value!r} (expected {expected})")
        return value

    def ollama_model(self, node: yaml.Node, field: str) -> str:
        """An Ollama model name as ``dsmirror._formats.ollama`` reads it; its repository lower case."""
        from dsmirror._formats.ollama import parse_ollama_name  # a catalog of mirrors needs none

        value = self.string(node, field)
        try:
            name = parse_ollama_name(value)
        except UsageError:
            name = None
        repo = f"{name.host}/{name.namespace}/{name.name}" if name else ""
        if name is None or repo != repo.lower():
            raise self.error(
                node, field, f"invalid value {value!r} (expected [host/][namespace/]name[:tag], lower case)"
            )
        return value

    def boolean(self, node: yaml.Node, field: str) -> bool:
        value = self.scalar(node, field)
        if not isinstance(value, bool):
            raise self.mistyped(node, field, "true or false")
        return value

    def integer(self, node: yaml.Node, field: str) -> int:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.mistyped(node, field, "an integer")
        return value

    def bounded(self, low: int, high: int | None) -> Callable[[yaml.Node, str], int]:
        def parse(node: yaml.Node, field: str) -> int:
            value = self.integer(node, field)
            if value < low or (high is not None and value > high):
                expected = f">= {low}" if high is None else f"{low}..{high}"
                raise self.error(node, field, f"{value} is out of range (expected {expected})")
            return value

        return parse

    def positive_number(self, node: yaml.Node, field: str) -> float:
        value = self.scalar(node, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.mistyped(node, field, "a number")
        if not (math.isfinite(value) and value > 0):
            raise self.error(node, field, f"{node.value} is out of range (expected a finite number > 0)")
        return float(value)

    def kind(self, node: yaml.Node, field: str) -> MirrorKind:
        value = self.string(node, field)
        for kind in KINDS:
            if value == kind:
                return kind
        close = difflib.get_close_matches(value, KINDS, n=1)
        raise self.error(
            node,
            field,
            f"unknown kind {value!r} (expected one of {', '.join(KINDS)})",
            hint=f"did you mean {close[0]!r}?" if close else None,
        )

    def region(self, node: yaml.Node, field: str) -> str:
        return self.matching(node, field, _REGION, "a short code such as global, cn, us, eu or lan")

    def manifest(self, node: yaml.Node, field: str) -> str:
        value = self.string(node, field)
        if _HAS_SCHEME.match(value):
            scheme = urlsplit(value).scheme
            if scheme not in _WEB_SCHEMES or not urlsplit(value).hostname:
                raise self.error(
                    node, field, f"invalid manifest URL {value!r} (expected http(s)://host/... or a path)"
                )
            return value
        if self.relative_to is not None and not Path(value).is_absolute():
            return str(self.relative_to / value)
        return value

    def sha256(self, node: yaml.Node, field: str) -> str:
        return self.matching(node, field, _SHA256, "64 hex digits").lower()

    def magnet(self, node: yaml.Node, field: str) -> str:
        value = self.string(node, field)
        parts = urlsplit(value)
        if parts.scheme != "magnet" or "xt" not in parse_qs(parts.query):
            raise self.error(node, field, f"invalid magnet link {value!r} (expected magnet:?xt=...)")
        return value

    def globs(self, node: yaml.Node, field: str) -> tuple[str, ...]:
        if _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(
                node,
                field,
                f"expected a list of globs, got {self.describe(node)}",
                hint='write a list, e.g. ["*.safetensors", "*.json"]',
            )
        return tuple(self.string(item, f"{field}[{i}]") for i, item in enumerate(node.value))


def plain_url_for(base: str) -> Callable[[FileEntry], str]:
    """Plain mirror of kind ``http``: the mirror's URL joined with the file's relative path."""
    if not base.endswith("/"):
        base += "/"

    def url_for(file: FileEntry) -> str:
        return urljoin(base, quote(file.path))

    return url_for
