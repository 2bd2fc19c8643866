"""``dsmirror verify MANIFEST DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dsmirror._core.errors import VerifyFailed
from dsmirror._core.units import format_bytes
from dsmirror.cli._app import app, console, err_console


@app.command("verify")
def verify(
    manifest: Annotated[Path, typer.Argument(help="Manifest file.")],
    folder: Annotated[Path, typer.Argument(help="Folder with the model files.")],
) -> None:
    """Check every piece and file of a folder against a manifest; exit 3 on any mismatch."""
    from dsmirror._formats.manifest import load_manifest
    from dsmirror._verify.tree import verify_tree
    from dsmirror.cli._progress import ByteProgress

    m = load_manifest(manifest)
    with ByteProgress(err_console, f"verify {m.name}", m.total_size) as progress:
        r = verify_tree(m, folder, on_bytes=progress.advance)
    for p in r.missing_files:
        console.print(f"missing     {p}", highlight=False)
    for p in r.wrong_size:
        console.print(f"wrong size  {p}", highlight=False)
    for piece in r.bad_pieces:
        console.print(
            f"bad piece   {piece.index} ({piece.path} "
            f"bytes {piece.offset}-{piece.offset + piece.length - 1})",
            highlight=False,
        )
    for p in r.bad_files:
        console.print(f"bad file    {p}", highlight=False)
    if not r.ok:
        n = len(r.missing_files) + len(r.wrong_size) + len({p.path for p in r.bad_pieces} | set(r.bad_files))
        raise VerifyFailed(
            f"{n} of {len(m.files)} files do not match {manifest}",
            bad_pieces=[p.index for p in r.bad_pieces],
            bad_files=sorted(set(r.missing_files + r.wrong_size + r.bad_files)),
        )
    console.print(f"ok: {len(m.files)} files, {format_bytes(r.checked_bytes)} verified", highlight=False)
