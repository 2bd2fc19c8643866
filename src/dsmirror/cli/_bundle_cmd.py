"""``dsmirror export`` and ``dsmirror import``: offline bundles, verified on the way in."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated

import typer

from dsmirror._core.errors import ManifestMismatch, UsageError
from dsmirror._core.units import format_bytes
from dsmirror.cli._app import (
    JsonOpt,
    MirrorsOpt,
    NoDefaultCatalogOpt,
    app,
    console,
    err_console,
    load_catalog_from_options,
)
from dsmirror.cli._console import styled

if TYPE_CHECKING:
    from dsmirror._core.events import Event
    from dsmirror._core.settings import Settings
    from dsmirror._formats.catalog import Catalog

# The bundle code (and rich's progress bars) load in the commands that use them, not at start-up.

ManifestShaOpt = Annotated[
    str | None,
    typer.Option(
        "--manifest-sha256", help="The manifest's SHA-256, from a source you trust; refuse any other."
    ),
]


@app.command("export")
def export_cmd(
    ref: Annotated[
        str,
        typer.Argument(
            help="A manifest file (with --from DIR), a folder dsmirror installed into, "
            "ollama://name:tag (Ollama store) or hf://org/name[@rev] (HF cache)."
        ),
    ],
    output: Annotated[str, typer.Option("-o", "--output", help="The bundle file to write; - for stdout.")],
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from", help="Folder with the files (with a manifest), or the Ollama store / HF cache."
        ),
    ] = None,
    manifest_sha256: ManifestShaOpt = None,
) -> None:
    """Write one plain tar bundle (manifest first, then the files) for an offline machine."""
    from dsmirror._bundle import export_source, write_bundle, write_bundle_file
    from dsmirror.cli._progress import ByteProgress

    settings, _ = load_catalog_from_options(None, True)
    src = export_source(ref, from_dir=from_dir, manifest_sha256=manifest_sha256, settings=settings)
    m = src.manifest
    to_stdout = output == "-"
    if to_stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a bundle to a terminal", hint="redirect it: -o - > model.tar")
    # Progress on stderr: a bar on a terminal, else a line every few seconds (_progress).
    with ByteProgress(err_console, f"export {m.name}", m.total_size) as progress:
        if to_stdout:
            write_bundle(src, sys.stdout.buffer, on_bytes=progress.advance)
            sys.stdout.buffer.flush()
        else:
            write_bundle_file(src, Path(output), on_bytes=progress.advance)
    where = "stdout" if to_stdout else output
    (err_console if to_stdout else console).print(
        f"{where}: bundle of {m.name}, {len(m.files)} files, {format_bytes(m.total_size)}, every piece "
        f"checked; manifest sha256 {m.sha256}",
        highlight=False,
    )


@app.command("import")
def import_cmd(
    source: Annotated[
        str,
        typer.Argument(
            help="A bundle file (- for stdin), or a folder: a model copy, an Ollama store, an HF cache."
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="dir, hf (Hugging Face cache) or ollama (Ollama store).")
    ] = "dir",
    dest: Annotated[
        Path | None,
        typer.Option(
            "--dest", "-d", help="Folder to install into (default: ./NAME, the HF cache, the Ollama store)."
        ),
    ] = None,
    manifest_sha256: ManifestShaOpt = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Manifest of the files in a folder being imported.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="With a copied Ollama store or HF cache: ollama://name:tag or hf://org/name[@rev].",
        ),
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", help="Pin the manifest to this catalog alias's manifest_sha256.")
    ] = None,
    mirrors: MirrorsOpt = None,
    no_default_catalog: NoDefaultCatalogOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Verify every piece of a bundle (or folder) against its manifest, then install it atomically."""
    from dsmirror._bundle import catalog_pins, import_bundle

    settings, catalog = load_catalog_from_options(mirrors, no_default_catalog)
    pin, pinned_by = _pin(catalog, manifest_sha256, alias)
    into = _Into(fmt, dest, pinned_by, catalog_pins(catalog.models), settings)
    path = Path(source)
    if source != "-" and path.is_dir():
        _run(_folder_events(path, model, manifest, pin, into), json_out)
        return
    if model is not None:
        raise UsageError("--model goes with a folder (a copied Ollama store or HF cache)")
    if manifest is not None:
        raise UsageError("--manifest goes with a folder; a bundle carries its own manifest")
    with _bundle_stream(source) as (stream, origin):
        events = import_bundle(
            stream,
            origin=origin,
            fmt=into.fmt,
            dest=into.dest,
            expected_sha256=pin,
            pinned_by=into.pinned_by,
            known=into.known,
            settings=into.settings,
        )
        _run(events, json_out)


@dataclass(frozen=True)
class _Into:
    """Where and how an import installs, and who vouches for its manifest."""

    fmt: str
    dest: Path | None
    pinned_by: str | None
    known: Mapping[str, str]  # catalog alias -> its pinned manifest SHA-256
    settings: Settings


def _pin(catalog: Catalog, manifest_sha256: str | None, alias: str | None) -> tuple[str | None, str | None]:
    """The manifest SHA-256 the import must have, and who vouches for it (--manifest-sha256, --alias)."""
    pin = manifest_sha256.lower() if manifest_sha256 else None
    pinned_by = "--manifest-sha256" if pin else None
    if alias is None:
        return pin, pinned_by
    a = catalog.alias(alias)
    if a is None or not a.manifest_sha256:
        raise UsageError(
            f"the catalog has no alias {alias!r} with a manifest_sha256",
            hint="pin the manifest with --manifest-sha256 instead",
        )
    if pin and pin != a.manifest_sha256:
        raise UsageError(f"--manifest-sha256 and the catalog's {alias} disagree")
    return a.manifest_sha256, f"catalog alias {alias}"


def _folder_events(
    path: Path, model: str | None, manifest: Path | None, pin: str | None, into: _Into
) -> Iterator[Event]:
    """The import of folder ``path``: a model of a copied store (``--model``), or the model the
    manifest (``--manifest``, else the one recorded in the folder) describes."""
    from dsmirror._bundle import export_source, folder_manifest, import_folder
    from dsmirror._formats.manifest import load_manifest

    if model is not None:
        # Another machine's store: read the model as export would (blobs checked against
        # their names), then import it like any folder.
        src = export_source(model, from_dir=path, manifest_sha256=pin, settings=into.settings)
        if pin and src.manifest.sha256 != pin:
            raise ManifestMismatch(pin, src.manifest.sha256, where=f"{model} in {path}")
        m, sidecars, files = src.manifest, src.sidecars, src.files
    else:
        m = load_manifest(manifest, expected_sha256=pin) if manifest else folder_manifest(path, pin)
        sidecars, files = None, None
    return import_folder(
        path,
        m,
        fmt=into.fmt,
        dest=into.dest,
        pinned_by=into.pinned_by,
        known=into.known,
        settings=into.settings,
        sidecars=sidecars,
        files=files,
    )


@contextlib.contextmanager
def _bundle_stream(source: str) -> Iterator[tuple[IO[bytes], str]]:
    """The bundle to read, and its name in messages: stdin for ``-``, else the file (closed after)."""
    if source == "-":
        yield sys.stdin.buffer, "<stdin>"
        return
    path = Path(source)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after the events are consumed
    except FileNotFoundError:
        raise UsageError(f"no such bundle or folder: {source}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    with fh:
        yield fh, str(path)


def _run(events: Iterable[Event], json_out: bool) -> None:
    from dsmirror._bundle import BundleOpened
    from dsmirror._core.events import Progress as ProgressEvent
    from dsmirror._core.events import PullFinished
    from dsmirror.cli._progress import ByteProgress
    from dsmirror.cli._render import render_json

    if json_out:
        render_json(events)
        return
    progress: ByteProgress | None = None
    finished: PullFinished | None = None
    with contextlib.ExitStack() as stack:
        for ev in events:
            if isinstance(ev, BundleOpened):
                console.print(
                    styled(ev.name, "bold"),
                    f": {ev.files} files, {format_bytes(ev.total_bytes)}, manifest sha256 "
                    f"{ev.manifest_sha256} -> {ev.dest} ({ev.format})",
                    sep="",
                    highlight=False,
                )
                if ev.pinned_by:
                    console.print(f"manifest pinned by {ev.pinned_by}", highlight=False)
                else:
                    err_console.print(
                        styled("warning:", "yellow"),
                        "the manifest is not pinned: the files are checked against the "
                        "manifest inside, but nothing says that manifest is the one you want. Compare its "
                        "sha256 above with one from a trusted source, or pass --manifest-sha256.",
                        highlight=False,
                    )
                progress = stack.enter_context(ByteProgress(err_console, f"import {ev.name}", ev.total_bytes))
            elif isinstance(ev, ProgressEvent) and progress is not None:
                progress.update(ev.verified_bytes)
            elif isinstance(ev, PullFinished):
                finished = ev
    if finished is not None:
        kept = finished.total_bytes - finished.downloaded_bytes
        console.print(
            styled("imported", "bold green"),
            f"{finished.name} -> {finished.dest}: {len(finished.files)} files "
            f"installed, {format_bytes(finished.total_bytes)} verified "
            f"({format_bytes(finished.downloaded_bytes)} written, {format_bytes(kept)} already present) "
            f"in {finished.seconds:.1f} s",
            highlight=False,
        )
