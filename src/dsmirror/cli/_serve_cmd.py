"""``dsmirror serve``: a verified LAN mirror for unmodified ``hf`` and ``ollama`` clients."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dsmirror._core.errors import UsageError
from dsmirror.cli._app import MirrorsOpt, NoDefaultCatalogOpt, app, err_console

if TYPE_CHECKING:
    from dsmirror._fetch.swarm.config import SwarmConfig


def _parse_folder(spec: str) -> tuple[Path, Path]:
    manifest, sep, folder = spec.partition(":")
    if not sep or not manifest or not folder:
        raise UsageError(f"--folder {spec!r}: expected MANIFEST:DIR", hint="e.g. --folder r1.json:/models/r1")
    return Path(manifest), Path(folder)


def _swarm_config(listen: str | None) -> SwarmConfig:
    from dsmirror._fetch.swarm.config import SwarmConfig

    return SwarmConfig(listen=listen, seed=True)


@app.command("serve")
def serve_cmd(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; only this machine unless you say so.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")
    ] = 8080,
    hf_cache: Annotated[
        Path | None, typer.Option("--hf-cache", help="Hugging Face cache to serve (default: HF_HUB_CACHE).")
    ] = None,
    ollama_models: Annotated[
        Path | None,
        typer.Option("--ollama-models", help="Ollama store to serve (default: OLLAMA_MODELS)."),
    ] = None,
    folder: Annotated[
        list[str] | None,
        typer.Option("--folder", help="MANIFEST:DIR, a folder of files a dsmirror manifest describes."),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="DSMIRROR_SERVE_TOKEN", help="Require 'Authorization: Bearer T'."),
    ] = None,
    upstream: Annotated[
        bool,
        typer.Option("--upstream", help="Pull what is missing from the catalog's mirrors, verified."),
    ] = False,
    mirrors: MirrorsOpt = None,
    no_default_catalog: NoDefaultCatalogOpt = False,
    rescan: Annotated[
        float,
        typer.Option("--rescan", min=0, help="Seconds between rescans of the stores (0: on a miss only)."),
    ] = 30.0,
    seed: Annotated[
        bool, typer.Option("--seed", help="Also seed over BitTorrent what is served and has a torrent.")
    ] = False,
    listen: Annotated[
        str | None, typer.Option("--listen", help="HOST:PORT for BitTorrent (with --seed).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
) -> None:
    """Serve installed models over the Hugging Face, Ollama and dsmirror protocols (read-only)."""
    from dsmirror._formats.manifest import load_manifest
    from dsmirror._serve import ServeConfig, ServeRoots, Upstream, serve
    from dsmirror.cli._app import load_catalog_from_options

    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings, catalog = load_catalog_from_options(mirrors, no_default_catalog)
    folders = []
    for spec in folder or ():
        manifest_path, root = _parse_folder(spec)
        if not root.is_dir():
            raise UsageError(f"--folder {spec!r}: {root} is not a folder")
        folders.append((load_manifest(manifest_path), root))
    config = ServeConfig(
        roots=ServeRoots(
            hf_cache=hf_cache or settings.hf_cache,
            ollama_models=ollama_models or settings.ollama_models,
            folders=tuple(folders),
        ),
        host=host,
        port=port,
        token=token,
        upstream=Upstream.from_catalog(catalog, hf_token=settings.hf_token) if upstream else None,
        rescan_interval=rescan,
        seed=_swarm_config(listen) if seed else None,
        state_dir=settings.state_dir / "serve",
    )
    if host not in ("127.0.0.1", "::1", "localhost") and token is None:
        err_console.print(f"dsmirror: serving on {host} without --token: anyone who can reach it can read")

    def ready(url: str) -> None:
        # One line on stdout, flushed: scripts (and the tests) read the URL from it.
        print(f"dsmirror serve: listening on {url}", flush=True)
        if not quiet:
            roots = config.roots
            err_console.print(f"  HF cache:     {roots.hf_cache}", highlight=False)
            err_console.print(f"  Ollama store: {roots.ollama_models}", highlight=False)
            for m, root in roots.folders:
                err_console.print(f"  folder:       {root} ({m.name})", highlight=False)
            if config.upstream is not None:
                names = [
                    m.name for m in (*config.upstream.hf, *config.upstream.ollama, *config.upstream.http)
                ]
                err_console.print(f"  upstream:     {', '.join(names) or '(no mirrors)'}", highlight=False)
            err_console.print(f"  use it with:  HF_ENDPOINT={url} hf download ORG/NAME", highlight=False)
            status = f"{url}/  (JSON: {url}/dsmirror/status, Prometheus: {url}/metrics)"
            err_console.print(f"  status page:  {status}", highlight=False)

    serve(config, on_ready=ready)
