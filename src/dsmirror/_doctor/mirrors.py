"""Checking each catalog mirror from this machine, along the path a download takes.

DNS -> TCP -> TLS -> one small HTTP request, all mirrors at once, each step bounded by its own
timeout and all of them by ``deadline``; then one throughput sample per mirror, one after the
other. The HTTP steps end by a deadline of their own, however a server drips its answer
(``dsmirror._fetch.transport``), and read bounded bodies only (redirects are followed by hand:
httpx would read a redirect's body whole). The package docstring (``dsmirror._doctor``) tells
what each step measures and why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from dsmirror._doctor.proxies import proxy_for
from dsmirror._doctor.report import DoctorConfig, MirrorCheck
from dsmirror._fetch.transport import Deadline, Sockets, bounded
from dsmirror._formats.catalog import Mirror

__all__ = ["USER_AGENT", "check_mirrors", "in_thread"]

USER_AGENT = "dsmirror-doctor/0.1"
#: Bodies smaller than this say nothing about throughput.
_MIN_SAMPLE = 64 << 10


def in_thread(fn: Callable[[], Any], timeout: float) -> Any:
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
    addrs = _resolve(p, cfg)
    if addrs is None:
        return
    sock = _connect(p, cfg, addrs)
    if sock is None:
        return
    try:
        if urlsplit(p.check.url).scheme == "https":
            tls = _handshake(p, cfg, sock)
            if tls is None:
                return
            sock = tls
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    _http_check(p, cfg, env)


def _resolve(p: _Probe, cfg: DoctorConfig) -> list[Any] | None:
    """The mirror's socket addresses (None: DNS failed, status set)."""
    c = p.check
    try:
        t0 = time.monotonic()
        infos = in_thread(
            lambda: socket.getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM), cfg.dns_timeout
        )
        addrs = list(dict.fromkeys(info[4] for info in infos))
        p.set(dns=time.monotonic() - t0, addresses=tuple(str(a[0]) for a in addrs))
    except TimeoutError:
        p.set(status="dns-failed", error=f"no DNS answer for {c.host} within {cfg.dns_timeout:.0f} s")
        return None
    except OSError as exc:
        p.set(status="dns-failed", error=f"cannot resolve {c.host}: {exc.strerror or exc}")
        return None
    return addrs


def _connect(p: _Probe, cfg: DoctorConfig, addrs: Sequence[Any]) -> socket.socket | None:
    """A TCP connection to one of the first three addresses (None: none answered, status set)."""
    c = p.check
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
        return s
    p.set(status=status, error=last)
    return None


def _handshake(p: _Probe, cfg: DoctorConfig, sock: socket.socket) -> ssl.SSLSocket | None:
    """TLS over ``sock``, the certificate verified (None: it failed, status set)."""
    ctx = ssl.create_default_context()  # verifies the chain and the host name, always
    sock.settimeout(cfg.tls_timeout)
    t0 = time.monotonic()
    try:
        tls = ctx.wrap_socket(sock, server_hostname=p.check.host)
    except ssl.SSLCertVerificationError as exc:
        p.set(status="bad-cert", error=f"certificate not trusted: {exc.verify_message or exc.reason}")
        return None
    except ssl.SSLError as exc:
        p.set(status="tls-error", error=f"TLS handshake failed: {exc.reason or exc}")
        return None
    except TimeoutError:
        p.set(status="timeout", error=f"TLS handshake took over {cfg.tls_timeout:.0f} s")
        return None
    except OSError as exc:
        p.set(status="tls-error", error=f"TLS handshake failed: {exc.strerror or exc}")
        return None
    p.set(tls=time.monotonic() - t0, tls_version=tls.version())
    return tls


def _http_check(p: _Probe, cfg: DoctorConfig, env: Mapping[str, str]) -> None:
    c = p.check
    marks: dict[str, float] = {}

    def trace(name: str, info: Mapping[str, Any]) -> None:
        marks.setdefault(name, time.monotonic())

    p.client = Sockets().arm(
        httpx.Client(
            timeout=httpx.Timeout(cfg.http_timeout, connect=cfg.connect_timeout),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            trust_env=True,
        )
    )
    p.set(via_proxy=proxy_for(c.url, env))
    t0 = time.monotonic()
    try:
        ask = {"Range": "bytes=0-0"}
        with (
            bounded(Deadline(cfg.connect_timeout + cfg.http_timeout)),
            p.client.stream("GET", c.url, headers=ask, extensions={"trace": trace}) as resp,
        ):
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
        with bounded(Deadline(cfg.connect_timeout + cfg.http_timeout + cfg.sample_seconds)):
            request = p.client.build_request("GET", c.url, headers=headers)
            for _ in range(5):
                resp = p.client.send(request, stream=True)
                if resp.next_request is None:
                    break
                resp.close()
                request = resp.next_request
            try:
                if resp.status_code not in (200, 206):
                    return
                t0 = time.monotonic()
                for chunk in resp.iter_raw():
                    n += len(chunk)
                    if n >= cfg.sample_bytes or time.monotonic() - t0 >= cfg.sample_seconds:
                        break
                elapsed = time.monotonic() - t0
            finally:
                resp.close()
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
