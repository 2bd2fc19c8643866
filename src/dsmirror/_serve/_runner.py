"""Running the app: in a background thread (tests, embedding) or in the foreground (the CLI).

Both run it with the bounds on connections of ``_connections`` (``ConnectionLimits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from dsmirror._serve._connections import ConnectionLimits, ServeRunner

__all__ = ["ServerThread", "run_forever", "serve_until_stopped"]

logger = logging.getLogger(__name__)


class ServerThread:
    """An aiohttp app served from a thread with its own event loop.

    ::

        with ServerThread(make_app(index)) as server:
            httpx.get(server.url + "/healthz")

    ``port=0`` picks a free port; ``url`` tells which. ``stop`` waits at most
    ``shutdown_timeout`` seconds for requests in flight (a stalled client cannot hang it).
    ``limits``: the bounds on connections (``ConnectionLimits()`` by default).
    """

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 2.0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self.limits = limits or ConnectionLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"dsmirror-serve-{host}", daemon=True)

    @property
    def port(self) -> int:
        if not self._ready.is_set():
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        runner = ServeRunner(self.app, self.limits, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()


def run_forever(
    app: web.Application, host: str, port: int, *, limits: ConnectionLimits | None = None
) -> None:
    """Serve ``app`` in the foreground until interrupted (SIGINT/SIGTERM)."""
    asyncio.run(serve_until_stopped(app, host, port, limits or ConnectionLimits(), shutdown_timeout=5.0))


async def serve_until_stopped(
    app: web.Application,
    host: str,
    port: int,
    limits: ConnectionLimits,
    *,
    shutdown_timeout: float,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then stop: the listening socket closes at once, requests
    in flight get ``shutdown_timeout`` seconds. ``on_ready(url)`` once listening."""
    runner = ServeRunner(app, limits, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        url = (
            f"http://[{bound_host}]:{bound_port}"
            if ":" in str(bound_host)
            else f"http://{bound_host}:{bound_port}"
        )
        if on_ready is not None:
            on_ready(url)
        await stopping.wait()
        logger.info("stopping")
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
