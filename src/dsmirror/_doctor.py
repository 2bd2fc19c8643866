"""``dsmirror doctor``: why downloads are slow or fail from *this* machine, and what to do about it.

The checks follow the path a download takes, so the first one that fails says where it breaks:

Per catalog mirror (all mirrors at once, each step bounded by its own timeout)
    DNS resolution -> TCP connect -> TLS handshake (certificate verified, never skipped; a bad
    certificate is reported as such) -> one small HTTP request for status, time to first byte and
    the server's ``Date`` -> then, one mirror after the other so they do not share the link, a
    short throughput sample (at most ``sample_bytes`` or ``sample_seconds``). With a REF the request
    and the sample go to the model's largest file through the same URL mapping a pull uses;
    without, to the mirror's URL. DNS, TCP and TLS are measured directly; the HTTP request goes
    through the proxy the environment names, as a pull does.

This machine
    proxy variables, clock skew against the servers' ``Date`` headers (signed CDN URLs and TLS
    fail on a wrong clock), free disk where the model goes (against its size with a REF), whether
    the BitTorrent listen port can be bound and whether LAN discovery (LSD) is on, and whether the
    Ollama store and the Hugging Face cache are writable.

``advise`` turns a report into concrete lines ("hf-mirror.com answers 3x faster than
huggingface.co from here: use --region cn"); it is a pure function of the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import os
import shutil
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dsmirror._core.errors import DsmirrorError
from dsmirror._core.settings import Settings
from dsmirror._core.units import format_bytes, format_rate
from dsmirror._formats.catalog import Catalog, Mirror

__all__ = ["DoctorConfig", "DoctorReport", "MirrorCheck", "advise", "run_doctor"]

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")
USER_AGENT = "dsmirror-doctor/0.1"
#: Bodies smaller than this say nothing about throughput.
_MIN_SAMPLE = 64 << 10
#: Free space wanted beyond the model's size (the store keeps 64 MiB; room for temp files).
_DISK_MARGIN = 256 << 20
#: Below this much free space, warn even without a REF (the DeepSeek distills are 1-30+ GB).
_LOW_DISK = 10 << 30
_SKEW_LIMIT = 60.0


@dataclass(frozen=True)
class DoctorConfig:
    dns_timeout: float = 3.0
    connect_timeout: float = 3.0
    tls_timeout: float = 5.0
    http_timeout: float = 8.0  # to the response headers
    sample_bytes: int = 4 << 20
    sample_seconds: float = 2.0
    deadline: float = 25.0  # for all mirror checks together


@dataclass(frozen=True)
class MirrorCheck:
    name: str
    kind: str
    url: str  # what was requested (the mirror URL, or the model's largest file there)
    host: str
    port: int
    region: str
    official: bool
    #: ok, slow, dns-failed, refused, unreachable, timeout, bad-cert, tls-error, http-error, skipped
    status: str = "skipped"
    addresses: tuple[str, ...] = ()
    dns: float | None = None  # seconds
    connect: float | None = None
    tls: float | None = None
    tls_version: str | None = None
    http_status: int | None = None
    ttfb: float | None = None  # request sent -> response headers
    redirect: str | None = None  # Location host, if the mirror redirects (CDN)
    rate: float | None = None  # bytes/s over the sample
    sampled: int = 0
    skew: float | None = None  # local clock minus the server's Date, seconds
    via_proxy: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class DiskCheck:
    path: str  # the folder checked (nearest existing parent of the destination)
    free: int
    needed: int | None  # the model's size, with a REF


@dataclass(frozen=True)
class StoreCheck:
    what: str  # "Ollama store", "Hugging Face cache"
    path: str
    exists: bool
    writable: bool
    detail: str = ""


@dataclass(frozen=True)
class TorrentCheck:
    listen: str
    port: int
    tcp_ok: bool
    udp_ok: bool
    lsd: bool
    dht: bool
    detail: str = ""


@dataclass(frozen=True)
class DoctorReport:
    ref: str | None
    model: str | None
    model_size: int | None
    mirrors: tuple[MirrorCheck, ...]
    proxies: Mapping[str, str]  # variable -> value with credentials removed
    clock_skew: float | None  # median over the servers that sent a Date
    disk: DiskCheck | None
    stores: tuple[StoreCheck, ...]
    torrent: TorrentCheck | None
    seconds: float
    notes: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- mirrors ---------------------------------------------------------------------------------------
def _redact(url: str) -> str:
    p = urlsplit(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    if p.username:
        netloc = "***@" + netloc
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def _in_thread(fn: Callable[[], Any], timeout: float) -> Any:
    """Run ``fn`` in a daemon thread; its result, or TimeoutError (the thread is abandoned)."""
    box: list[Any] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=run, daemon=True, name="dsmirror-doctor")
    t.start()
    t.join(timeout)
    if err:
        raise err[0]
    if not box:
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    return box[0]


def _proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy httpx would use for ``url`` (from the environment), redacted."""
    scheme = urlsplit(url).scheme
    host = urlsplit(url).hostname or ""
    getters = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    no_proxy = getters.get("no_proxy", "")
    if no_proxy and _bypassed(host, no_proxy):
        return None
    proxy = getters.get(f"{scheme}_proxy") or getters.get("all_proxy")
    return _redact(proxy) if proxy else None


def _bypassed(host: str, no_proxy: str) -> bool:
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")))):
            return True
    return False


@dataclass
class _Probe:
    """Mutable state of one mirror's checks; frozen into a MirrorCheck at the end."""

    check: MirrorCheck
    updates: dict[str, Any] = field(default_factory=dict)
    client: httpx.Client | None = None
    # A check that overran the deadline is abandoned, not stopped: it may still set fields.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, **kw: Any) -> None:
        with self.lock:
            self.updates.update(kw)

    def get(self, key: str) -> Any:
        with self.lock:
            return self.updates.get(key)

    def result(self) -> MirrorCheck:
        with self.lock:
            return dataclasses.replace(self.check, **self.updates)


def _first_checks(p: _Probe, cfg: DoctorConfig, env: Mapping[str, str]) -> None:
    """DNS, TCP, TLS and one small request; sets status unless everything worked."""
    c = p.check
    try:
        t0 = time.monotonic()
        infos = _in_thread(
            lambda: socket.getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM), cfg.dns_timeout
        )
        addrs = list(dict.fromkeys(info[4] for info in infos))
        p.set(dns=time.monotonic() - t0, addresses=tuple(str(a[0]) for a in addrs))
    except TimeoutError:
        p.set(status="dns-failed", error=f"no DNS answer for {c.host} within {cfg.dns_timeout:.0f} s")
        return
    except OSError as exc:
        p.set(status="dns-failed", error=f"cannot resolve {c.host}: {exc.strerror or exc}")
        return
    sock: socket.socket | None = None
    last: str | None = None
    status = "unreachable"
    for addr in addrs[:3]:
        family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(cfg.connect_timeout)
        t0 = time.monotonic()
        try:
            s.connect(addr)
        except ConnectionRefusedError:
            s.close()
            status, last = "refused", f"{addr[0]} port {c.port} refuses connections"
            continue
        except TimeoutError:
            s.close()
            status, last = (
                "timeout",
                f"no TCP answer from {addr[0]}:{c.port} within {cfg.connect_timeout:.0f} s",
            )
            continue
        except OSError as exc:
            s.close()
            last = f"cannot connect to {addr[0]}:{c.port}: {exc.strerror or exc}"
            continue
        p.set(connect=time.monotonic() - t0)
        sock = s
        break
    if sock is None:
        p.set(status=status, error=last)
        return
    try:
        if urlsplit(c.url).scheme == "https":
            ctx = ssl.create_default_context()  # verifies the chain and the host name, always
            sock.settimeout(cfg.tls_timeout)
            t0 = time.monotonic()
            try:
                tls = ctx.wrap_socket(sock, server_hostname=c.host)
            except ssl.SSLCertVerificationError as exc:
                p.set(status="bad-cert", error=f"certificate not trusted: {exc.verify_message or exc.reason}")
                return
            except ssl.SSLError as exc:
                p.set(status="tls-error", error=f"TLS handshake failed: {exc.reason or exc}")
                return
            except TimeoutError:
                p.set(status="timeout", error=f"TLS handshake took over {cfg.tls_timeout:.0f} s")
                return
            except OSError as exc:
                p.set(status="tls-error", error=f"TLS handshake failed: {exc.strerror or exc}")
                return
            p.set(tls=time.monotonic() - t0, tls_version=tls.version())
            sock = tls
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    _http_check(p, cfg, env)


def _http_check(p: _Probe, cfg: DoctorConfig, env: Mapping[str, str]) -> None:
    c = p.check
    marks: dict[str, float] = {}

    def trace(name: str, info: Mapping[str, Any]) -> None:
        marks.setdefault(name, time.monotonic())

    p.client = httpx.Client(
        timeout=httpx.Timeout(cfg.http_timeout, connect=cfg.connect_timeout),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        trust_env=True,
    )
    p.set(via_proxy=_proxy_for(c.url, env))
    t0 = time.monotonic()
    try:
        ask = {"Range": "bytes=0-0"}
        with p.client.stream("GET", c.url, headers=ask, extensions={"trace": trace}) as resp:
            sent = marks.get("http11.send_request_headers.started", t0)
            got = marks.get("http11.receive_response_headers.complete", time.monotonic())
            p.set(http_status=resp.status_code, ttfb=max(0.0, got - sent))
            date = resp.headers.get("date")
            if date:
                with contextlib.suppress(TypeError, ValueError):
                    p.set(skew=time.time() - email.utils.parsedate_to_datetime(date).timestamp())
            loc = resp.headers.get("location")
            if resp.status_code in (301, 302, 303, 307, 308) and loc:
                p.set(redirect=urlsplit(str(resp.url.join(loc))).hostname)
            n = 0
            for chunk in resp.iter_raw():
                n += len(chunk)
                if n >= _MIN_SAMPLE:
                    break
    except httpx.ProxyError as exc:
        p.set(status="http-error", error=f"the proxy failed: {exc}")
        return
    except httpx.TimeoutException:
        p.set(status="timeout", error=f"no HTTP answer within {cfg.http_timeout:.0f} s")
        return
    except httpx.HTTPError as exc:
        p.set(status="http-error", error=f"HTTP request failed: {exc}")
        return
    st = int(p.get("http_status"))
    if st >= 500 or st in (401, 403, 407, 429):
        why = {
            401: "needs a token",
            403: "forbidden (blocked, or needs a token)",
            407: "the proxy wants a login",
            429: "rate-limited",
        }.get(st, "server error")
        p.set(status="http-error", error=f"HTTP {st}: {why}")
        return
    p.set(status="ok")


def _sample(p: _Probe, cfg: DoctorConfig) -> None:
    """Throughput: up to sample_bytes or sample_seconds of one Range request (redirects followed)."""
    if p.client is None:
        return
    c = p.check
    headers = {"Range": f"bytes=0-{cfg.sample_bytes - 1}"}
    n = 0
    try:
        with p.client.stream("GET", c.url, headers=headers, follow_redirects=True) as resp:
            if resp.status_code not in (200, 206):
                return
            t0 = time.monotonic()
            for chunk in resp.iter_raw():
                n += len(chunk)
                if n >= cfg.sample_bytes or time.monotonic() - t0 >= cfg.sample_seconds:
                    break
            elapsed = time.monotonic() - t0
    except httpx.HTTPError as exc:
        p.set(error=f"throughput sample failed: {exc}")
        return
    p.set(sampled=n)
    if n >= _MIN_SAMPLE and elapsed > 0:
        p.set(rate=n / elapsed)


def _mirror_check(m: Mirror, url: str) -> MirrorCheck:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return MirrorCheck(m.name, m.kind, url, parts.hostname or "", port, m.region, m.official)


def check_mirrors(
    mirrors: Sequence[Mirror],
    *,
    urls: Mapping[str, str] | None = None,
    config: DoctorConfig | None = None,
    env: Mapping[str, str] | None = None,
) -> list[MirrorCheck]:
    """Check every mirror (``urls`` maps a mirror name to the URL to request instead of its own)."""
    cfg = config or DoctorConfig()
    e = dict(os.environ if env is None else env)
    probes: list[_Probe] = []
    for m in mirrors:
        url = (urls or {}).get(m.name, m.url)
        check = _mirror_check(m, url)
        if urlsplit(url).scheme not in ("http", "https"):
            check = dataclasses.replace(check, status="skipped", error="not an HTTP endpoint")
            probes.append(_Probe(check, {"status": "skipped"}))
            continue
        probes.append(_Probe(check))
    deadline = time.monotonic() + cfg.deadline
    threads = []
    for p in probes:
        if p.get("status") == "skipped":
            continue
        t = threading.Thread(target=_first_checks, args=(p, cfg, e), daemon=True, name="dsmirror-doctor")
        t.start()
        threads.append((p, t))
    for p, t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            p.set(status="timeout", error="checks did not finish in time")
    # One after the other, so that the samples do not share (and split) the link.
    for p, t in threads:
        if not t.is_alive() and p.get("status") == "ok" and time.monotonic() < deadline:
            _sample(p, cfg)
    for p in probes:
        if p.client is not None:
            with contextlib.suppress(Exception):
                p.client.close()
    out = [p.result() for p in probes]
    best = max((c.rate or 0.0 for c in out if c.status == "ok"), default=0.0)
    # As the resolver ranks: a quarter of the best mirror's rate or less is "slow".
    return [
        dataclasses.replace(c, status="slow")
        if c.status == "ok" and best and (c.rate or best) < best / 4
        else c
        for c in out
    ]


# -- this machine ------------------------------------------------------------------------------------
def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(dest: Path, needed: int | None) -> DiskCheck:
    where = _existing_parent(dest)
    return DiskCheck(str(where), shutil.disk_usage(where).free, needed)


def check_store(what: str, path: Path) -> StoreCheck:
    """Whether dsmirror could write there (the folder, or the nearest parent it would create it in)."""
    exists = path.is_dir()
    where = path if exists else _existing_parent(path)
    writable = os.access(where, os.W_OK | os.X_OK)
    detail = "" if exists else f"does not exist yet; would be created in {where}"
    if not writable:
        detail = f"no write permission on {where}" if os.access(where, os.F_OK) else f"{where} is missing"
    return StoreCheck(what, str(path), exists, writable, detail)


def check_torrent(listen: str | None, lsd: bool, dht: bool) -> TorrentCheck:
    """Whether the BitTorrent listen port can be bound (TCP and UDP); LSD/DHT as configured."""
    from dsmirror._fetch.swarm.config import parse_endpoint

    text = listen or "0.0.0.0:6881"
    host, port = parse_endpoint(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    results = []
    details = []
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(family, kind)
        try:
            s.bind((host, port))
            results.append(True)
        except OSError as exc:
            results.append(False)
            details.append(f"{'TCP' if kind == socket.SOCK_STREAM else 'UDP'}: {exc.strerror or exc}")
        finally:
            s.close()
    return TorrentCheck(text, port, results[0], results[1], lsd, dht, "; ".join(details))


def proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in env.items():
        if k.upper() in _PROXY_VARS and v:
            out[k] = v if k.upper() == "NO_PROXY" else _redact(v)
    return out


# -- the whole run -----------------------------------------------------------------------------------
def run_doctor(
    catalog: Catalog,
    settings: Settings,
    *,
    ref: str | None = None,
    dest: Path | None = None,
    config: DoctorConfig | None = None,
    listen: str | None = None,
    lsd: bool | None = None,
    dht: bool | None = None,
) -> DoctorReport:
    """Run every check (bounded in time) and return the report with its advice.

    ``listen``, ``lsd`` and ``dht`` are the BitTorrent settings a pull would use (the swarm's
    defaults when not given).
    """
    from dsmirror._fetch.http import HttpSource
    from dsmirror._fetch.swarm.config import SwarmConfig
    from dsmirror._resolve.plan import PullOptions
    from dsmirror._resolve.resolve import resolve

    swarm = SwarmConfig()

    cfg = config or DoctorConfig()
    t0 = time.monotonic()
    notes: list[str] = []
    model: str | None = None
    size: int | None = None
    urls: dict[str, str] = {}
    target = dest
    if ref is not None:
        try:
            # No swarm: only the HTTP sources' URLs are wanted, and no BitTorrent session is started.
            opts = PullOptions(dest=dest, swarm=SwarmConfig(enabled=False))
            plan = _in_thread(lambda: resolve(ref, catalog, settings, opts), cfg.deadline)
        except TimeoutError:
            notes.append(f"resolving {ref} took over {cfg.deadline:.0f} s; checked the mirrors' own URLs")
        except DsmirrorError as exc:
            notes.append(f"cannot resolve {ref}: {exc.message}")
        else:
            try:
                model, size, target = plan.manifest.name, plan.manifest.total_size, target or plan.dest
                files = [f for f in plan.manifest.files if f.size]
                for s in plan.sources:
                    if isinstance(s, HttpSource) and files:
                        have = [f for f in files if s.has_file(f)]
                        if have:
                            urls[s.name] = s.url_for(max(have, key=lambda f: f.size))
            finally:
                for s in [*plan.sources, *plan.swarms]:
                    with contextlib.suppress(Exception):
                        s.close()
    mirrors = catalog.mirrors_of_kind()
    checks = check_mirrors(mirrors, urls=urls, config=cfg, env=settings.env)
    skews = [c.skew for c in checks if c.skew is not None]
    torrent: TorrentCheck | None = None
    try:
        torrent = check_torrent(
            listen or swarm.listen, swarm.lsd if lsd is None else lsd, swarm.dht if dht is None else dht
        )
    except DsmirrorError as exc:
        notes.append(f"BitTorrent listen address: {exc.message}")
    report = DoctorReport(
        ref=ref,
        model=model,
        model_size=size,
        mirrors=tuple(checks),
        proxies=proxy_env(settings.env),
        clock_skew=statistics.median(skews) if skews else None,
        disk=check_disk(target or Path.cwd(), size),
        stores=(
            check_store("Ollama store", settings.ollama_models),
            check_store("Hugging Face cache", settings.hf_cache),
        ),
        torrent=torrent,
        seconds=time.monotonic() - t0,
        notes=tuple(notes),
    )
    return dataclasses.replace(report, advice=tuple(advise(report)))


# -- advice ------------------------------------------------------------------------------------------
def _label(c: MirrorCheck, checks: Sequence[MirrorCheck]) -> str:
    """The host name when it tells the mirrors apart (as users know them), else the mirror name."""
    same = [o for o in checks if o.host == c.host]
    return c.host if len(same) == 1 and c.host else c.name


def advise(r: DoctorReport) -> list[str]:
    """Concrete advice lines for a report, most useful first."""
    out: list[str] = []
    checks = list(r.mirrors)
    reachable = [c for c in checks if c.status in ("ok", "slow")]
    probed = [c for c in checks if c.status != "skipped"]
    if probed and not reachable:
        out.append(
            "no mirror answered from here: check the network, DNS and the proxy variables "
            "(HTTPS_PROXY, NO_PROXY)"
        )
    # Speed: the best mirror against each clearly slower one.
    rated = sorted((c for c in reachable if c.rate), key=lambda c: -(c.rate or 0.0))
    if len(rated) >= 2:
        best = rated[0]
        for other in rated[1:]:
            assert best.rate and other.rate
            ratio = best.rate / other.rate
            if ratio < 2:
                continue
            how = (
                f"use --region {best.region}"
                if best.region != other.region and best.region != "global"
                else f"use --only {best.name}, or --exclude {other.name}"
            )
            out.append(
                f"{_label(best, checks)} answers {ratio:.0f}x faster than {_label(other, checks)} from here "
                f"({format_rate(best.rate)} vs {format_rate(other.rate)}): {how}"
            )
    elif len(reachable) >= 2:
        timed = sorted((c for c in reachable if c.ttfb), key=lambda c: c.ttfb or 0.0)
        if len(timed) >= 2 and (timed[-1].ttfb or 0) >= 3 * (timed[0].ttfb or 0) > 0:
            b, w = timed[0], timed[-1]
            ratio = (w.ttfb or 0) / (b.ttfb or 1)
            how = (
                f"use --region {b.region}"
                if b.region != w.region and b.region != "global"
                else f"use --only {b.name}, or --exclude {w.name}"
            )
            out.append(
                f"{_label(b, checks)} answers {ratio:.0f}x faster than {_label(w, checks)} from here "
                f"(first byte after {(b.ttfb or 0) * 1000:.0f} vs {(w.ttfb or 0) * 1000:.0f} ms): {how}"
            )
    for c in checks:
        where = f"{c.name} ({c.host}:{c.port})"
        if c.status == "dns-failed":
            out.append(f"{where}: {c.error}; check DNS (/etc/resolv.conf) or use another mirror")
        elif c.status == "refused":
            out.append(
                f"{where} refuses connections: down, or a firewall rejects it; pulls skip it "
                f"(or --exclude {c.name})"
            )
        elif c.status in ("unreachable", "timeout"):
            out.append(
                f"{where}: {c.error}; blocked or down — pulls fall back to other mirrors "
                f"(or --exclude {c.name})"
            )
        elif c.status == "bad-cert":
            out.append(
                f"{where}: TLS {c.error}. Something may intercept TLS (a proxy, a captive portal); if your "
                "organisation uses its own CA, point SSL_CERT_FILE at it. dsmirror never turns "
                "certificate checks off"
            )
        elif c.status == "tls-error":
            out.append(f"{where}: {c.error}; a middlebox may block TLS to this host")
        elif c.status == "http-error":
            out.append(f"{where}: {c.error}")
    for var, val in r.proxies.items():
        if var.upper() != "NO_PROXY":
            out.append(
                f"{var}={val} is set: HTTP requests and pulls go through it (DNS/TCP/TLS above are direct)"
            )
    if r.clock_skew is not None and abs(r.clock_skew) > _SKEW_LIMIT:
        out.append(
            f"this clock is {r.clock_skew:+.0f} s off the servers' Date headers: signed download URLs and "
            "TLS certificates can be refused; sync it (timedatectl set-ntp true, or chrony)"
        )
    if r.disk is not None:
        if r.disk.needed is not None and r.disk.free < r.disk.needed + _DISK_MARGIN:
            out.append(
                f"only {format_bytes(r.disk.free)} free in {r.disk.path} for a {format_bytes(r.disk.needed)} "
                "model: free some space or choose another --dest"
            )
        elif r.disk.needed is None and r.disk.free < _LOW_DISK:
            out.append(f"only {format_bytes(r.disk.free)} free in {r.disk.path}; models need 1 to 30+ GB")
    for s in r.stores:
        if not s.writable:
            flag = "--format ollama" if s.what.startswith("Ollama") else "--format hf"
            env = "OLLAMA_MODELS" if s.what.startswith("Ollama") else "HF_HUB_CACHE"
            out.append(
                f"cannot write to the {s.what} {s.path} ({s.detail}): {flag} will fail; fix the "
                f"permissions or set {env}"
            )
    t = r.torrent
    if t is not None and not (t.tcp_ok and t.udp_ok):
        out.append(
            f"BitTorrent cannot listen on {t.listen} ({t.detail}): another client holds the port; pulls "
            "take the next free one, or set --listen HOST:PORT"
        )
    return out
