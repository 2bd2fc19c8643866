"""Running the app: in a background thread (tests, embedding) or in the foreground (the CLI)."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from aiohttp import web

__all__ = ["ServerThread", "run_forever"]


class ServerThread:
    """An aiohttp app served from a thread with its own event loop.

    ::

        with ServerThread(make_app(index)) as server:
            httpx.get(server.url + "/healthz")

    ``port=0`` picks a free port; ``url`` tells which. ``stop`` waits at most
    ``shutdown_timeout`` seconds for requests in flight (a stalled client cannot hang it).
    """

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
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
        runner = web.AppRunner(self.app, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()


def run_forever(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` in the foreground until interrupted (SIGINT/SIGTERM)."""
    web.run_app(app, host=host, port=port, print=None, shutdown_timeout=5.0)
