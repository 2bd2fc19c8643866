"""``dsmirror manifest create|show|export|sign``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dsmirror._core.errors import UsageError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._core.units import format_bytes, parse_size
from dsmirror.cli._app import TorrentFormatOpt, app, console, err_console
from dsmirror.cli._torrent_cmd import make_torrent

manifest_app = typer.Typer(help="Create, inspect, export and sign piece manifests.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")


@manifest_app.command("create")
def create(
    folder: Annotated[Path, typer.Argument(help="Folder holding the model files.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the manifest JSON.")],
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: folder name).")] = None,
    piece_size: Annotated[str, typer.Option("--piece-size", help="Piece size, a power of two.")] = "8MiB",
    torrent: Annotated[
        Path | None,
        typer.Option("--torrent", help="Also write the torrent of these pieces (see `torrent create`)."),
    ] = None,
    torrent_format: TorrentFormatOpt = "hybrid",
    no_sha1: Annotated[
        bool,
        typer.Option(
            "--no-sha1",
            help="Leave out each piece's BitTorrent SHA-1 (for dsmirror releases older than it; "
            "their LAN swarm cannot check pieces before sharing them).",
        ),
    ] = False,
) -> None:
    """Hash a folder into a manifest (SHA-256 of every file and every piece, and each piece's
    BitTorrent v1 SHA-1, so that the machines of a LAN check pieces before they share them)."""
    from dsmirror._verify.tree import create_manifest
    from dsmirror.cli._progress import ByteProgress

    size = parse_size(piece_size)
    with ByteProgress(err_console, f"hash {folder}", None) as progress:
        m = create_manifest(folder, name=name, piece_size=size, on_bytes=progress.advance, sha1=not no_sha1)
    if torrent is not None:  # the manifest records the torrent's info-hashes
        m, _ = make_torrent(m, folder, torrent, torrent_format, verify=False, trackers=[])
    m.write(output)
    console.print(
        f"{output}: {len(m.files)} files, {format_bytes(m.total_size)}, {m.num_pieces} pieces; "
        f"sha256 {m.sha256}",
        highlight=False,
    )


@manifest_app.command("show")
def show(
    manifest: Annotated[Path, typer.Argument(help="Manifest file.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a manifest's identity and files."""
    from dsmirror._formats.manifest import load_manifest

    m = load_manifest(manifest)
    if json_out:
        console.print_json(json.dumps(m.to_dict() | {"manifest_sha256": m.sha256}))
        return
    console.print(
        f"name        {m.name}\nsha256      {m.sha256}\npiece size  {format_bytes(m.piece_size)}",
        highlight=False,
    )
    console.print(
        f"total       {format_bytes(m.total_size)} in {len(m.files)} files, {m.num_pieces} pieces",
        highlight=False,
    )
    for f in m.files:
        console.print(f"  {f.sha256[:16]}  {f.size:>14}  {f.path}", highlight=False)


@manifest_app.command("export")
def export(
    manifest: Annotated[Path, typer.Argument(help="Manifest file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the exported file.")],
    mirrors: Annotated[
        list[Path],
        typer.Option("--mirrors", help="Catalog file(s) (YAML) whose mirrors of kind http serve the files."),
    ],
    meta4: Annotated[
        bool, typer.Option("--meta4", help="Write Metalink v4 (RFC 5854), e.g. for aria2c.")
    ] = False,
) -> None:
    """Export a manifest for other clients: its pieces, digests and mirror URLs."""
    from dsmirror._formats.catalog import Catalog, load_catalog
    from dsmirror._formats.manifest import load_manifest
    from dsmirror._formats.metalink import to_meta4

    if not meta4:
        raise UsageError(
            "choose the format to export", hint="add --meta4 (Metalink v4, the only format so far)"
        )
    m = load_manifest(manifest)
    catalog = Catalog()
    for path in mirrors:
        catalog = catalog.merged(load_catalog(path, base=catalog))
    plain = catalog.mirrors_of_kind("http")
    if not plain:
        raise UsageError(
            f"no enabled mirror of kind http in {', '.join(map(str, mirrors))}",
            hint="a Metalink client fetches plain URLs: list a mirror with 'kind: http'",
        )
    atomic_write_bytes(output, to_meta4(m, plain))
    console.print(
        f"{output}: Metalink v4, {len(m.files)} files, {m.num_pieces} pieces, {len(plain)} mirror(s)",
        highlight=False,
    )


@manifest_app.command("sign")
def sign(
    folder: Annotated[Path, typer.Argument(help="Folder holding the model files.")],
    key: Annotated[Path, typer.Option("--key", metavar="PEM", help="Private key (EC P-256/384/521, PEM).")],
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert", metavar="PEM", help="Sign with this certificate of --key (certificate signing)."
        ),
    ] = None,
    cert_chain: Annotated[
        list[Path] | None,
        typer.Option(
            "--cert-chain", metavar="PEM", help="Certificates from --cert's issuer up to a root (repeatable)."
        ),
    ] = None,
    shards: Annotated[
        bool,
        typer.Option(
            "--shards", help="One digest per piece of every file (checked as pieces land), not per file."
        ),
    ] = False,
    piece_size: Annotated[
        str | None,
        typer.Option("--piece-size", help="Shard (piece) size with --shards, a power of two (8MiB)."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Where to write it (default FOLDER/model.sig).")
    ] = None,
) -> None:
    """Write an OpenSSF model signature (model.sig) of a folder, signed by a key or a certificate."""
    from dsmirror._verify.signature import sign_model  # the model-signing library, only here

    out = output or folder / "model.sig"
    signed = sign_model(
        folder,
        out,
        key=key,
        cert=cert,
        cert_chain=tuple(cert_chain or ()),
        shards=shards,
        piece_size=parse_size(piece_size) if piece_size else None,
    )
    how = f"{signed.num_resources} shards of {format_bytes(signed.shard_size or 0)}" if shards else "per file"
    by = "certificate" if cert else "key"
    console.print(
        f"{out}: {len(signed.files)} files signed {how} by {by}; subject sha256 {signed.subject_sha256}",
        highlight=False,
    )
