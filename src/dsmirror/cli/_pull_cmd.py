"""``dsmirror pull REF``."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsmirror.cli._app import (
    JsonOpt,
    MirrorsOpt,
    NoDefaultCatalogOpt,
    app,
    collector_paused,
    console,
    load_catalog_from_options,
)
from dsmirror.cli._seed_cmd import DhtOpt, ListenOpt, LsdOpt, PeerOpt

if TYPE_CHECKING:
    from dsmirror._resolve.plan import SignaturePolicy

# No ``from __future__ import annotations`` here: typer reads the command's signature twice when
# it builds the command, and string annotations are eval()ed and compile()d each time (typing's
# ForwardRef), every option's: building ``pull`` took 16 ms of its start-up, 3 ms with annotations
# made once, when the function is defined (tests/test_startup.py).

# The library (dsmirror._pull: httpx, the engine, the store) is imported by the command, not by
# this module: ``dsmirror --help`` and the other commands do not load it.


@app.command("pull")
def pull_cmd(
    ref: Annotated[
        str,
        typer.Argument(
            help="Manifest file or URL, model.sig file or URL, hf://org/repo, ollama://name:tag, or an alias."
        ),
    ],
    dest: Annotated[
        Path | None, typer.Option("--dest", "-d", help="Destination folder (format dir).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="dir, hf (Hugging Face cache) or ollama (store).")
    ] = "dir",
    mirrors: MirrorsOpt = None,
    no_default_catalog: NoDefaultCatalogOpt = False,
    manifest_sha256: Annotated[
        str | None, typer.Option("--manifest-sha256", help="Refuse a manifest whose SHA-256 differs.")
    ] = None,
    max_rate: Annotated[str | None, typer.Option("--max-rate", help="Bandwidth cap, e.g. 20MB/s.")] = None,
    min_rate: Annotated[
        str | None,
        typer.Option(
            "--min-rate",
            help="Speed floor for the whole pull, e.g. 5MB/s: below it, retry resting sources "
            "and replace the slowest connection.",
        ),
    ] = None,
    connections: Annotated[
        int | None, typer.Option("--connections", "-x", min=1, max=64, help="Connections per source.")
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Use only this mirror (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Never use this mirror (repeatable; to skip files: --exclude-file)."),
    ] = None,
    include_files: Annotated[
        list[str] | None,
        typer.Option(
            "--include",
            metavar="GLOB",
            help="Fetch only the repo files whose whole path matches GLOB (repeatable; Hugging Face "
            "and ModelScope repos). Anchored, and * also crosses /: '*.json' matches config.json "
            "and sub/x.json, 'json' matches nothing.",
        ),
    ] = None,
    exclude_files: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-file",
            metavar="GLOB",
            help="Skip the repo files whose whole path matches GLOB, e.g. 'original/*' (repeatable; "
            "anchored like --include). --exclude names a mirror, not a file.",
        ),
    ] = None,
    region: Annotated[str | None, typer.Option("--region", help="Prefer mirrors of this region.")] = None,
    prefer: Annotated[str, typer.Option("--prefer", help="auto, mirror, official or p2p.")] = "auto",
    give_up_after: Annotated[
        float, typer.Option("--give-up-after", help="Seconds without any progress before failing.")
    ] = 120.0,
    metadata_timeout: Annotated[
        float,
        typer.Option(
            "--metadata-timeout",
            min=0.1,
            help="Seconds a registry endpoint (revision, file list, manifest) or a manifest URL may "
            "take to answer, in all, before the catalog's next endpoint is asked.",
        ),
    ] = 15.0,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would be reused and fetched from where; fetch nothing."),
    ] = False,
    reuse_from: Annotated[
        list[Path] | None,
        typer.Option("--reuse-from", help="Also reuse pieces found in this folder (repeatable)."),
    ] = None,
    no_reuse: Annotated[
        bool, typer.Option("--no-reuse", help="Do not copy pieces already on this machine.")
    ] = False,
    torrent: Annotated[
        Path | None,
        typer.Option("--torrent", help="The model's .torrent: share pieces with BitTorrent peers."),
    ] = None,
    peer: PeerOpt = None,
    listen: ListenOpt = None,
    lsd: LsdOpt = True,
    dht: DhtOpt = False,
    p2p: Annotated[
        bool, typer.Option("--p2p/--no-p2p", help="Use the model's BitTorrent swarm if it has one.")
    ] = True,
    seed: Annotated[
        bool, typer.Option("--seed", help="Keep seeding the model after the pull (Ctrl-C stops).")
    ] = False,
    signature_key: Annotated[
        Path | None,
        typer.Option(
            "--signature-key", metavar="PEM", help="Require a model.sig signed with this (public) key."
        ),
    ] = None,
    signature_cert_chain: Annotated[
        list[Path] | None,
        typer.Option(
            "--signature-cert-chain",
            metavar="PEM",
            help="Require a model.sig signed by a certificate that chains to these (repeatable).",
        ),
    ] = None,
    signature_identity: Annotated[
        str | None,
        typer.Option(
            "--signature-identity",
            help="Require a Sigstore (keyless) model.sig by this identity, with --signature-issuer. "
            "Needs Sigstore's public trust root (network) unless --signature-trust-config is given.",
        ),
    ] = None,
    signature_issuer: Annotated[
        str | None, typer.Option("--signature-issuer", help="The OIDC issuer of --signature-identity.")
    ] = None,
    signature_trust_config: Annotated[
        Path | None,
        typer.Option(
            "--signature-trust-config",
            metavar="JSON",
            help="Sigstore trust root (a ClientTrustConfig) for --signature-identity: verify offline.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Download a model from every good source at once, verifying every piece; resumable."""
    with collector_paused():
        from dsmirror._core.units import parse_size
        from dsmirror._pull import PullOptions, pull
        from dsmirror.cli._render import print_notes, render_human, render_json
        from dsmirror.cli._seed_cmd import SeedSplit, render_seed, swarm_config

    settings, catalog = load_catalog_from_options(mirrors, no_default_catalog)
    opts = PullOptions(
        dest=dest,
        format=fmt,
        manifest_sha256=manifest_sha256,
        max_rate=parse_size(max_rate) if max_rate else None,
        min_rate=parse_size(min_rate) if min_rate else None,
        connections=connections,
        only=tuple(only or ()),
        exclude=tuple(exclude or ()),
        include=tuple(include_files or ()),
        exclude_files=tuple(exclude_files or ()),
        metadata_timeout=metadata_timeout,
        region=region,
        prefer=prefer,
        give_up_after=give_up_after,
        dry_run=dry_run,
        reuse=not no_reuse,
        reuse_from=tuple(reuse_from or ()),
        swarm=swarm_config(
            listen=listen, peers=peer, lsd=lsd, dht=dht, torrent=torrent, seed_after=seed, enabled=p2p
        ),
        signature=_signature(
            signature_key, signature_cert_chain, signature_identity, signature_issuer, signature_trust_config
        ),
    )
    pulling = pull(ref, catalog=catalog, settings=settings, options=opts)
    if seed:  # seeding comes after the pull (dsmirror._share, above it), libtorrent with it
        from dsmirror._share.seed import seed_after_pull

        split = SeedSplit(seed_after_pull(pulling))
    else:
        split = SeedSplit(pulling)
    events = split.pull_events()
    if json_out:
        render_json(events)
    elif dry_run:
        from dsmirror.cli._dry_run import render_dry_run  # rich.table: only for the dry run

        render_dry_run(print_notes(events, console), console)
    else:
        render_human(events, console)
    render_seed(split.seed_events(), console, json_out=json_out)


def _signature(
    key: Path | None,
    chain: list[Path] | None,
    identity: str | None,
    issuer: str | None,
    trust_config: Path | None,
) -> "SignaturePolicy | None":
    """--signature-*: the publisher whose model.sig the pull requires."""
    from dsmirror._core.errors import UsageError
    from dsmirror._formats.catalog import Publisher
    from dsmirror._resolve.plan import SignaturePolicy

    if not (key or chain or identity or issuer or trust_config):
        return None
    publisher = Publisher(
        "--signature-key" if key else "--signature-cert-chain" if chain else "--signature-identity",
        key=str(key) if key else None,
        certificate_chain=tuple(map(str, chain or ())),
        identity=identity,
        issuer=issuer,
        trust_config=str(trust_config) if trust_config else None,
    )
    if publisher.problem():
        raise UsageError(
            "give one of --signature-key, --signature-cert-chain, --signature-identity (this one with "
            "--signature-issuer, and --signature-trust-config only with it)",
            hint="dsmirror pull --help lists them",
        )
    return SignaturePolicy(publisher, required=True)
