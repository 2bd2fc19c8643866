"""Where a pull-through pulls from (``Upstream``) and its cache of what the upstream said.

Metadata (an HF revision and its listing, an Ollama manifest) is asked through the same registry
clients ``dsmirror pull`` uses (``dsmirror._resolve.registries``). They block, so they run in a
small thread pool of their own: a hung upstream ties up at most those threads, never the event
loop or the executor that reads files for responses. Concurrent requests for the same key share
one call (single flight); the answer is kept for as long as the caller's ``ttl_of`` says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from dsmirror._formats.catalog import Catalog, Mirror

__all__ = ["Upstream", "UpstreamMetadata"]

T = TypeVar("T")

#: Entries kept before the cache is emptied (a client probing many names cannot grow it forever).
_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class Upstream:
    """The catalog mirrors a pull-through may use, by kind, and the token for official HF hosts."""

    hf: tuple[Mirror, ...] = ()
    ollama: tuple[Mirror, ...] = ()
    http: tuple[Mirror, ...] = ()
    hf_token: str | None = None

    @classmethod
    def from_catalog(cls, catalog: Catalog, *, hf_token: str | None = None) -> Upstream:
        return cls(
            hf=catalog.mirrors_of_kind("hf"),
            ollama=catalog.mirrors_of_kind("ollama"),
            http=catalog.mirrors_of_kind("http"),
            hf_token=hf_token,
        )

    def hf_headers(self, mirror: Mirror) -> dict[str, str]:
        # The token goes to the official Hub only, never to a third-party mirror.
        if self.hf_token and mirror.official:
            return {"Authorization": f"Bearer {self.hf_token}"}
        return {}


@dataclass
class _Cached:
    expires: float
    value: Any


class UpstreamMetadata:
    """Answers of blocking metadata calls, by key: one call at a time per key, cached for a while.

    Use from one event loop. ``close`` stops the threads (calls under way finish on their own).
    """

    def __init__(self, *, max_workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dsmirror-pt-meta")
        self._clock = clock
        self._cache: dict[tuple[str, ...], _Cached] = {}
        self._inflight: dict[tuple[str, ...], asyncio.Future[Any]] = {}

    async def get(self, key: tuple[str, ...], ttl_of: Callable[[T], float], fetch: Callable[[], T]) -> T:
        """``fetch()``'s answer for ``key``: cached, joined if under way, else asked (in a thread)."""
        cached = self._cache.get(key)
        if cached is not None and cached.expires > self._clock():
            value: T = cached.value
            return value
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().run_in_executor(self._pool, fetch)
            self._inflight[key] = fut
            try:
                value = await asyncio.shield(fut)
            finally:
                self._inflight.pop(key, None)
            if len(self._cache) > _MAX_ENTRIES:
                self._cache.clear()
            self._cache[key] = _Cached(self._clock() + ttl_of(value), value)
            return value
        value = await asyncio.shield(fut)
        return value

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
