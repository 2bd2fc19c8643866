"""``dsmirror torrent create|show|check``: torrents whose pieces are a manifest's pieces."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsmirror._core.units import format_bytes
from dsmirror.cli._app import TorrentFormatOpt, app, console

if TYPE_CHECKING:
    from dsmirror._fetch.swarm.torrent import Torrent
    from dsmirror._formats.manifest import Manifest

# ``.._torrent`` loads libtorrent: it is imported by the commands that use it, not at start-up.

torrent_app = typer.Typer(help="Make and check torrents of manifests (BitTorrent v1 or hybrid v1+v2).")
app.add_typer(torrent_app, name="torrent")


def make_torrent(
    manifest: Manifest, folder: Path, output: Path, torrent_format: str, *, verify: bool, trackers: list[str]
) -> tuple[Manifest, Torrent]:
    """Write the torrent of ``manifest`` and return the manifest recording its info-hashes."""
    from dsmirror._fetch.swarm.torrent import create_torrent, with_torrent_hashes

    t = create_torrent(manifest, folder, format=torrent_format, verify=verify, trackers=trackers)
    t.write(output)
    console.print(
        f"{output}: {t.format} torrent, {t.num_pieces} pieces of {format_bytes(t.piece_size)}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(t.manifest_fields().items())),
        highlight=False,
    )
    console.print(t.magnet, highlight=False, soft_wrap=True)
    return with_torrent_hashes(manifest, [t]), t


@torrent_app.command("create")
def create(
    manifest: Annotated[Path, typer.Argument(help="The model's manifest.")],
    folder: Annotated[Path, typer.Argument(help="Folder holding the model's files.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .torrent.")],
    torrent_format: TorrentFormatOpt = "hybrid",
    tracker: Annotated[list[str] | None, typer.Option("--tracker", help="Announce URL (repeatable).")] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Do not check the folder against the manifest first.")
    ] = False,
    update_manifest: Annotated[
        bool,
        typer.Option(
            "--update-manifest",
            help="Record the torrent's info-hashes in MANIFEST (this changes the manifest's SHA-256).",
        ),
    ] = False,
) -> None:
    """Make a torrent whose pieces are exactly the manifest's pieces, and print its magnet link."""
    from dsmirror._fetch.swarm.torrent import TORRENT_FORMATS
    from dsmirror._formats.manifest import load_manifest

    if torrent_format not in TORRENT_FORMATS:
        from dsmirror._core.errors import UsageError

        raise UsageError(f"--torrent-format must be one of {', '.join(TORRENT_FORMATS)}")
    m = load_manifest(manifest)
    recorded, _ = make_torrent(
        m, folder, output, torrent_format, verify=not no_verify, trackers=tracker or []
    )
    if update_manifest and recorded.sha256 != m.sha256:
        recorded.write(manifest)
        console.print(f"{manifest}: records the info-hashes; sha256 {recorded.sha256}", highlight=False)


@torrent_app.command("show")
def show(torrent: Annotated[Path, typer.Argument(help="A .torrent file.")]) -> None:
    """Print a torrent's info-hashes, magnet link and files."""
    from dsmirror._fetch.swarm.torrent import load_torrent

    t = load_torrent(torrent)
    for label, value in (
        ("name", t.name),
        ("format", t.format),
        ("btih", t.btih or "-"),
        ("btmh", t.btmh or "-"),
        ("pieces", f"{t.num_pieces} of {format_bytes(t.piece_size)}"),
        ("total", format_bytes(t.total_size)),
    ):
        console.print(f"{label:<11} {value}", highlight=False)
    console.print(f"magnet      {t.magnet}", highlight=False, soft_wrap=True)
    for f in t.content_files:
        console.print(f"  {f.size:>14}  {f.path}", highlight=False)


@torrent_app.command("check")
def check(
    torrent: Annotated[Path, typer.Argument(help="A .torrent file.")],
    manifest: Annotated[Path, typer.Argument(help="The manifest it should carry.")],
) -> None:
    """Check that a torrent carries a manifest's pieces (same piece size, file-aligned; pinned hashes)."""
    from dsmirror._fetch.swarm.torrent import check_torrent, load_torrent
    from dsmirror._formats.manifest import load_manifest

    t = load_torrent(torrent)
    m = load_manifest(manifest)
    pm = check_torrent(m, t)
    lacks = f"; lacks {len(pm.missing_files)} of the manifest's files" if pm.missing_files else ""
    pinned = "the manifest records its info-hash" if pm.pinned else "the manifest records no info-hash of it"
    console.print(
        f"ok: {t.format} torrent {t.btih or t.btmh} carries {m.name}'s pieces; {pinned}{lacks}",
        highlight=False,
    )
