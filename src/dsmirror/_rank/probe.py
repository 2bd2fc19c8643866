"""The source resolver: probe every candidate briefly, rank by expected contribution, remember.

Ranking
    A source is worth what it adds to the finishing time of the pull. For a source delivering
    ``rate`` bytes/s after ``ttfb`` seconds of latency per request, with requests sized to last
    ``span_seconds`` (what the scheduler does), the effective rate is
    ``rate * span_seconds / (span_seconds + ttfb)``: a far mirror loses a little for its latency, a
    slow one loses a lot for its rate. ``--prefer`` and ``--region`` multiply the score of matching
    sources (they still fall back to the others); failing, corrupt and missing sources rank last.
    Ties go to the catalog's ``priority``.

Probes
    Each probe is one real piece fetched with one Range request (bounded in bytes, at most
    ``max_bytes``, and in seconds: the answer must begin within ``max_wait`` and the sample stops
    after ``max_seconds``; a server that drips or never answers is cut at their sum, sockets and
    all, see ``dsmirror._fetch.transport``):
    it measures connect time, time to first byte and throughput, checks the file is there with the
    manifest's size, and — when the piece hash is published — that the bytes are right. Probes run
    concurrently. In a pull the scheduler's first assignment to an unmeasured source is exactly such
    a piece, so probing costs no wasted bytes there.

Experience
    What was measured per source and host is kept in ``<state dir>/sources.json`` as a decaying
    average (half-life one day, forgotten after a week), so the next pull starts from experience and
    a fresh measurement corrects it. Format::

        {"version": 1,
         "sources": {"<name> <host>": {"rate": <bytes/s per connection>, "ttfb": <seconds>,
                                       "at": <unix time of the last update>}}}

Documented in docs/formats.md#experience-sourcesjson.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from dsmirror._core.errors import BadResponse, DsmirrorError, SourceNotFound
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._fetch.http import HttpSource
from dsmirror._fetch.source import Source
from dsmirror._fetch.transport import Deadline, bounded
from dsmirror._formats.manifest import Manifest

__all__ = ["Experience", "Probe", "probe_sources", "rank"]

HALF_LIFE = 86400.0
FORGET_AFTER = 7 * 86400.0


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str
    region: str
    official: bool
    priority: int
    status: str  # ok, slow, failing, corrupt, missing
    connect: float | None = None  # seconds
    ttfb: float | None = None  # seconds from request to first body byte
    rate: float | None = None  # bytes/s over the sample
    sampled: int = 0  # bytes read
    error: str | None = None
    prior_rate: float | None = None  # remembered from earlier pulls
    score: float = 0.0
    rank: int = 0


class Experience:
    """Per-source measurements remembered across pulls (see the module docstring)."""

    def __init__(self, path: Path, *, now: float | None = None) -> None:
        self.path = path
        self.now = time.time() if now is None else now
        self.data: dict[str, dict[str, float]] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            raw = json.loads(path.read_bytes())
            for k, v in raw.get("sources", {}).items():
                if self.now - float(v["at"]) < FORGET_AFTER:
                    self.data[k] = {"rate": float(v["rate"]), "ttfb": float(v["ttfb"]), "at": float(v["at"])}

    @staticmethod
    def key(name: str, host: str) -> str:
        return f"{name} {host}"

    def get(self, name: str, host: str) -> dict[str, float] | None:
        return self.data.get(self.key(name, host))

    def update(self, name: str, host: str, rate: float, ttfb: float) -> None:
        if rate <= 0:
            return
        k = self.key(name, host)
        old = self.data.get(k)
        if old:
            w = 0.5 ** ((self.now - old["at"]) / HALF_LIFE) * 0.5  # the new sample weighs at least half
            rate = w * old["rate"] + (1 - w) * rate
            ttfb = w * old["ttfb"] + (1 - w) * ttfb
        self.data[k] = {"rate": rate, "ttfb": ttfb, "at": self.now}

    def save(self) -> None:
        body = {"version": 1, "sources": self.data}
        with contextlib.suppress(DsmirrorError):
            atomic_write_bytes(self.path, json.dumps(body, sort_keys=True, indent=1).encode())


def _connect_time(url: str, timeout: float) -> float | None:
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    t0 = time.monotonic()
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return time.monotonic() - t0
    except OSError:
        return None


def probe_source(
    source: Source,
    manifest: Manifest,
    *,
    max_bytes: int = 8 << 20,
    max_seconds: float = 4.0,
    max_wait: float = 5.0,
) -> Probe:
    """Fetch one real piece (bounded, see Probes above) from ``source`` and measure it."""
    info = source.info
    base = Probe(info.name, info.kind, info.region, info.official, info.priority, "failing")
    files = [f for f in manifest.files if f.size and source.has_file(f)]
    if not files:
        return replace(base, status="missing", error="has none of the model's files")
    f = max(files, key=lambda f: f.size)
    fi = manifest.files.index(f)
    piece = manifest.pieces[manifest.file_piece_ranges[fi][0]]
    length = min(piece.length, max_bytes)
    connect = _connect_time(source.url_for(f), 5.0) if isinstance(source, HttpSource) else None
    t0 = time.monotonic()
    ttfb: float | None = None
    got = 0
    h = hashlib.sha256()
    try:
        with (
            bounded(Deadline(max_wait + max_seconds)),
            source.open_range(f, piece.offset, piece.offset + length - 1) as chunks,
        ):
            for chunk in chunks:
                if ttfb is None:
                    ttfb = time.monotonic() - t0
                got += len(chunk)
                h.update(chunk)
                if time.monotonic() - t0 > max_seconds:
                    break
    except SourceNotFound as exc:
        return replace(base, status="missing", connect=connect, error=str(exc))
    except BadResponse as exc:
        status = "missing" if "bytes at this source" in str(exc) else "failing"
        return replace(base, status=status, connect=connect, error=str(exc))
    except DsmirrorError as exc:
        return replace(base, status="failing", connect=connect, error=str(exc))
    elapsed = time.monotonic() - t0
    body_time = max(1e-6, elapsed - (ttfb or 0.0))
    rate = got / body_time if got else None
    status = "ok"
    if got == piece.length and piece.sha256 and h.hexdigest() != piece.sha256:
        status = "corrupt"
    return replace(base, status=status, connect=connect, ttfb=ttfb, rate=rate, sampled=got)


def probe_sources(sources: Sequence[Source], manifest: Manifest, **kw: float) -> list[Probe]:
    """Probe all sources concurrently; a probe not done within 30 s in all is left out."""
    results: dict[str, Probe] = {}

    def run(s: Source) -> None:
        results[s.name] = probe_source(s, manifest, **kw)  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in sources]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return [results[s.name] for s in sources if s.name in results]


def score(p: Probe, *, prefer: str = "auto", region: str | None = None, span_seconds: float = 6.0) -> float:
    rate = p.rate if p.rate is not None else (p.prior_rate or 0.0)
    if p.status in ("failing", "corrupt", "missing"):
        return 0.0
    eff = rate * span_seconds / (span_seconds + (p.ttfb or 0.0))
    klass = "p2p" if p.kind == "bittorrent" else ("official" if p.official else "mirror")
    if prefer != "auto" and klass == prefer:
        eff *= 4
    if region and p.region == region:
        eff *= 2
    return eff


def rank(
    probes: Sequence[Probe],
    *,
    prefer: str = "auto",
    region: str | None = None,
    experience: Mapping[str, float] | None = None,
) -> list[Probe]:
    """Order probes best first; set score, rank, and mark clearly slower sources ``slow``."""
    scored = [replace(p, score=score(p, prefer=prefer, region=region)) for p in probes]
    best = max((p.rate or 0.0 for p in scored if p.status == "ok"), default=0.0)
    out = []
    for p in scored:
        if p.status == "ok" and best and (p.rate or 0.0) < best / 4:
            p = replace(p, status="slow")
        out.append(p)
    out.sort(key=lambda p: (-p.score, p.priority, p.name))
    return [replace(p, rank=i + 1) for i, p in enumerate(out)]
