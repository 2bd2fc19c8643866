"""``dsmirror serve`` as a library call: configuration in, a running server out.

``build_app`` wires the parts — a ``Library`` rescanning the stores, an optional ``PullThrough``
whose completed pulls trigger a rescan, the HTTP app — and ``serve`` runs it in the foreground
(with the bounds on connections of ``_connections``) until SIGINT/SIGTERM, then stops cleanly: the
listening socket closes at once, requests in flight get ``shutdown_timeout`` seconds, pulls in
progress stop with their verified pieces kept on disk (the next request for the same file resumes
them).

Seeding (``seed``): the same process seeds, over BitTorrent, what it serves that has a torrent —
the torrents dsmirror pulls saved (``<dest>/.dsmirror/torrents/*.torrent``: a served folder, an HF
repo folder, the Ollama store) and, for a served folder that is complete and has none, a torrent
made from its manifest (the folder's files were verified against it when indexed). libtorrent
runs in its own thread (``dsmirror._share.seed.seed``); it is stopped with the server.

Proofs: every file served is hashed once, in pieces, in the background, and each model's piece
manifest is published for dsmirror clients (``_proofs``, ``_proof_routes``); what was proven is
kept under ``state_dir`` (the CLI's: ``$XDG_STATE_HOME/dsmirror/serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from dsmirror._fetch.engine import EngineConfig
from dsmirror._formats import hfcache
from dsmirror._formats.manifest import DEFAULT_PIECE_SIZE
from dsmirror._serve._app import STATUS, make_app
from dsmirror._serve._connections import ConnectionLimits
from dsmirror._serve._library import Library, ServeRoots
from dsmirror._serve._proofs import ProofBook
from dsmirror._serve._pullthrough import PullThrough
from dsmirror._serve._runner import serve_until_stopped
from dsmirror._serve._upstream import Upstream

if TYPE_CHECKING:
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._serve._status import Seeding
    from dsmirror._share.seed import SeedTarget

__all__ = ["ServeConfig", "build_app", "serve"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``dsmirror serve`` needs; the CLI builds it from options and ``Settings``."""

    roots: ServeRoots = field(default_factory=ServeRoots)
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    #: Pull what is missing from these mirrors; None: serve only what is on disk.
    upstream: Upstream | None = None
    rescan_interval: float = 30.0
    max_requests: int = 1024
    max_requests_per_client: int = 128
    #: Largest request body accepted (every route is read-only: bodies are never needed).
    client_max_size: int = 64 * 1024
    shutdown_timeout: float = 5.0
    max_parallel_pulls: int = 4
    #: How pull-through jobs run (connections, give-up time); None: PullThrough's defaults.
    pull_engine: EngineConfig | None = None
    #: Piece size of pull-through pulls of files that publish no piece hashes.
    pull_piece_size: int = DEFAULT_PIECE_SIZE
    #: Seed what is served over BitTorrent too (None: no seeding).
    seed: SwarmConfig | None = None
    #: Bounds on connections: header and keep-alive timeouts, slow readers, how many at once.
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Where what the box proved is kept across restarts (``_proofs``); None: in memory only.
    state_dir: Path | None = None


def build_app(config: ServeConfig) -> tuple[web.Application, Library]:
    """The app serving ``config`` and its library (already scanned once)."""
    library = Library(config.roots)
    # Piece manifests of what is served, for LAN clients (every file hashed once, in the background).
    proofs = ProofBook(piece_size=config.pull_piece_size, state_dir=config.state_dir)
    pullthrough: PullThrough | None = None
    if config.upstream is not None:
        pullthrough = PullThrough(
            config.upstream,
            hf_cache=config.roots.hf_cache,
            ollama_models=config.roots.ollama_models,
            digests=library.digests,
            max_parallel=config.max_parallel_pulls,
            piece_size=config.pull_piece_size,
            engine=config.pull_engine,
        )
    app = make_app(
        library,
        token=config.token,
        pullthrough=pullthrough,
        max_requests=config.max_requests,
        max_requests_per_client=config.max_requests_per_client,
        client_max_size=config.client_max_size,
        proofs=proofs,
    )
    with app[STATUS].errors.installed():  # what the first scan refuses is on the status page too
        library.scan()
    timer: list[asyncio.Task[None]] = []

    async def start(_app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        if config.rescan_interval > 0:
            timer.append(asyncio.ensure_future(library.rescan_every(config.rescan_interval)))
        if pullthrough is not None:
            # A finished pull changes the disk: rescan so the file is served like any other.
            def rescan_soon() -> None:
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(library.refresh()))

            pullthrough.on_installed = rescan_soon

    seeding: list[tuple[threading.Thread, threading.Event]] = []

    async def start_seeding(_app: web.Application) -> None:
        if config.seed is None:
            return
        targets = await asyncio.get_running_loop().run_in_executor(None, _seed_targets, library)
        if not targets:
            logger.warning("--seed: nothing served has a torrent or a complete manifest folder")
            return
        stop_seeding = threading.Event()
        thread = threading.Thread(
            target=_run_seeder,
            args=(targets, config.seed, stop_seeding, app[STATUS].seeding),
            name="dsmirror-seed",
            daemon=True,
        )
        thread.start()
        seeding.append((thread, stop_seeding))

    async def stop(_app: web.Application) -> None:
        for thread, stop_seeding in seeding:
            stop_seeding.set()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 10.0)
        for task in timer:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.on_startup.append(start)
    app.on_startup.append(start_seeding)
    app.on_cleanup.append(stop)
    return app, library


def _seed_targets(library: Library) -> list[SeedTarget]:
    """The torrents of what ``library`` serves (see the module docstring)."""
    from dsmirror._core.errors import DsmirrorError
    from dsmirror._fetch.swarm.torrent import create_torrent
    from dsmirror._share.seed import SeedTarget, seed_targets_in

    targets: list[SeedTarget] = []
    roots = library.roots
    folders = [root for _, root in roots.folders]
    if roots.hf_cache is not None and roots.hf_cache.is_dir():
        folders += hfcache.repo_folders(roots.hf_cache)
    if roots.ollama_models is not None:
        folders.append(roots.ollama_models)
    for folder in folders:
        try:
            targets += seed_targets_in(folder)
        except (OSError, DsmirrorError) as exc:
            logger.warning("--seed: skipping the torrents in %s: %s", folder, exc)
    seeded = {t.folder.resolve() for t in targets}
    for served in library.index.folders:
        if served.root in seeded or len(served.files) != len(served.manifest.files):
            continue
        try:
            targets.append(
                SeedTarget(create_torrent(served.manifest, served.root, verify=False), served.root)
            )
        except (OSError, DsmirrorError) as exc:
            logger.warning("--seed: cannot make a torrent of %s: %s", served.root, exc)
    return targets


def _run_seeder(
    targets: list[SeedTarget], config: SwarmConfig, stop: threading.Event, seeding: Seeding
) -> None:
    from dsmirror._fetch.swarm.config import SeedingStarted
    from dsmirror._share.seed import seed

    try:
        for event in seed(targets, config, stop=stop):
            seeding.observe(event)
            if isinstance(event, SeedingStarted):
                logger.info("seeding %d torrents on port %d", len(event.torrents), event.listen_port)
                for magnet in event.magnets:
                    logger.info("  %s", magnet)
    except Exception:
        logger.exception("seeding stopped")
    finally:
        seeding.clear()


async def _serve(config: ServeConfig, on_ready: Callable[[str], None] | None) -> None:
    app, _ = build_app(config)
    await serve_until_stopped(
        app,
        config.host,
        config.port,
        config.limits,
        shutdown_timeout=config.shutdown_timeout,
        on_ready=on_ready,
    )


def serve(config: ServeConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; ``on_ready(url)`` once listening."""
    asyncio.run(_serve(config, on_ready))
