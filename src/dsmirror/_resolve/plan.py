"""What a pull is asked to do and what it will do: ``PullOptions`` (from the command line) and
``PullPlan`` (what a resolver made of a REF: manifest, sources, destination, install step).

These types live below the resolvers and the orchestrator (``dsmirror._pull``) so that resolvers
never import the code that runs their plans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dsmirror._core.errors import UsageError
from dsmirror._core.settings import Settings
from dsmirror._fetch.engine import SwarmSource
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.source import Source
from dsmirror._fetch.swarm.config import SwarmConfig
from dsmirror._formats.catalog import Catalog, Mirror, Publisher, plain_url_for
from dsmirror._formats.manifest import Manifest
from dsmirror._journal.store import Store
from dsmirror._resolve.ref import Ref
from dsmirror._schedule.info import SourceInfo

if TYPE_CHECKING:
    from dsmirror._fetch.swarm.only import SwarmOnlyPull

__all__ = [
    "PREFER",
    "PullOptions",
    "PullPlan",
    "Resolver",
    "SignaturePolicy",
    "http_sources",
    "select_mirrors",
    "source_info",
]

PREFER = ("auto", "mirror", "official", "p2p")


@dataclass(frozen=True)
class SignaturePolicy:
    """Which OpenSSF model signature (``model.sig``) vouches for a pull (``dsmirror._resolve.signature``).

    From ``--signature-key`` / ``--signature-cert-chain`` / ``--signature-identity`` (required), or
    from the catalog alias of the model (``signature:``, ``publisher:``, ``require_signature:``).
    """

    #: Whose signature counts; None: nobody's is known, so a model.sig found is not used.
    publisher: Publisher | None = None
    #: URL or path of the signature; None: the model's own (a Hugging Face repo's model.sig).
    location: str | None = None
    #: Refuse the pull unless a signature by ``publisher`` verified (exit 3).
    required: bool = False


@dataclass(frozen=True)
class PullOptions:
    dest: Path | None = None
    format: str = "dir"  # dir | hf | ollama
    manifest_sha256: str | None = None
    max_rate: float | None = None
    #: --min-rate: the speed floor of the whole pull (bytes/s); below it for 10 s, sources in
    #: back-off are retried at once and the slowest connection is replaced (see the scheduler).
    min_rate: float | None = None
    connections: int | None = None  # per source; default: the catalog's max_connections
    max_total_connections: int = 32
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    region: str | None = None
    prefer: str = "auto"
    include: tuple[str, ...] = ()
    exclude_files: tuple[str, ...] = ()
    stall_timeout: float = 20.0
    give_up_after: float = 120.0
    #: Seconds to wait for a registry's metadata (revision, file listing, manifest) before trying
    #: the next endpoint of the catalog.
    metadata_timeout: float = 15.0
    dry_run: bool = False  # print what would be reused and fetched from where; fetch nothing
    reuse: bool = True  # copy pieces already on this machine before fetching (see _reuse)
    reuse_from: tuple[Path, ...] = ()  # more folders to look in (--reuse-from)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)  # --torrent, --peer, --listen, --seed, --no-p2p
    signature: SignaturePolicy | None = None  # --signature-*; resolve() adds the catalog's


@dataclass
class PullPlan:
    manifest: Manifest
    sources: list[Source]
    dest: Path
    #: Runs after every file is verified and in place (e.g. write the Ollama manifest last).
    after_install: Callable[[Store], None] | None = None
    notes: list[str] = field(default_factory=list)
    #: BitTorrent swarms of the model (see ``_resolve.swarm.attach_swarm``), sources like the others.
    swarms: list[SwarmSource] = field(default_factory=list)
    #: A magnet or .torrent no manifest describes: the plan runs this instead of the engine, and
    #: ``manifest`` only names the model (its files are known once peers sent the torrent).
    swarm_only: SwarmOnlyPull | None = None
    #: Who signed the manifest, when a model.sig verified (see ``SignaturePolicy``).
    signed_by: str | None = None


Resolver = Callable[[Ref, Catalog, Settings, PullOptions], PullPlan]


def select_mirrors(catalog: Catalog, kinds: Sequence[str], options: PullOptions) -> list[Mirror]:
    """Catalog mirrors of ``kinds`` after --only / --exclude."""
    mirrors = [m for m in catalog.mirrors_of_kind() if m.kind in kinds]
    known = {m.name for m in catalog.mirrors}
    for name in (*options.only, *options.exclude):
        if name not in known:
            raise UsageError(f"no mirror called {name!r} in the catalog", hint="see `dsmirror sources REF`")
    if options.only:
        mirrors = [m for m in mirrors if m.name in options.only]
    return [m for m in mirrors if m.name not in options.exclude]


def source_info(m: Mirror, options: PullOptions) -> SourceInfo:
    return SourceInfo(
        name=m.name,
        kind=m.kind,
        host=m.host,
        region=m.region,
        official=m.official,
        priority=m.priority,
        max_connections=options.connections or m.max_connections,
    )


def http_sources(catalog: Catalog, options: PullOptions) -> list[Source]:
    """Plain mirrors (kind http, and LAN dsmirror servers' plain-file routes)."""
    return [
        HttpSource(source_info(m, options), plain_url_for(m.url), stall_timeout=options.stall_timeout)
        for m in select_mirrors(catalog, ("http",), options)
    ]
