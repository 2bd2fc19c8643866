"""Advice: a doctor report turned into concrete lines, most useful first.

("hf-mirror.com answers 3x faster than huggingface.co from here: use --region cn".) ``advise`` is
a pure function of the report.
"""

from __future__ import annotations

from collections.abc import Sequence

from dsmirror._core.units import format_bytes, format_rate
from dsmirror._doctor.report import DoctorReport, MirrorCheck

__all__ = ["advise"]

#: Free space wanted beyond the model's size (the store keeps 64 MiB; room for temp files).
_DISK_MARGIN = 256 << 20
#: Below this much free space, warn even without a REF (the DeepSeek distills are 1-30+ GB).
_LOW_DISK = 10 << 30
_SKEW_LIMIT = 60.0


def _label(c: MirrorCheck, checks: Sequence[MirrorCheck]) -> str:
    """The host name when it tells the mirrors apart (as users know them), else the mirror name."""
    same = [o for o in checks if o.host == c.host]
    return c.host if len(same) == 1 and c.host else c.name


def advise(r: DoctorReport) -> list[str]:
    """Concrete advice lines for a report, most useful first."""
    checks = list(r.mirrors)
    reachable = [c for c in checks if c.status in ("ok", "slow")]
    probed = [c for c in checks if c.status != "skipped"]
    out: list[str] = []
    if probed and not reachable:
        out.append(
            "no mirror answered from here: check the network, DNS and the proxy variables "
            "(HTTPS_PROXY, NO_PROXY)"
        )
    out += _speed(reachable, checks)
    out += [line for c in checks if (line := _failure(c)) is not None]
    out += _proxies(r)
    out += _clock(r)
    out += _disk(r)
    out += _stores(r)
    out += _torrent(r)
    return out


def _speed(reachable: Sequence[MirrorCheck], checks: Sequence[MirrorCheck]) -> list[str]:
    """The best mirror against each clearly slower one: by throughput, else by first byte."""
    out: list[str] = []
    rated = sorted((c for c in reachable if c.rate), key=lambda c: -(c.rate or 0.0))
    if len(rated) >= 2:
        best = rated[0]
        for other in rated[1:]:
            assert best.rate and other.rate
            ratio = best.rate / other.rate
            if ratio < 2:
                continue
            out.append(
                f"{_label(best, checks)} answers {ratio:.0f}x faster than {_label(other, checks)} from here "
                f"({format_rate(best.rate)} vs {format_rate(other.rate)}): {_how(best, other)}"
            )
    elif len(reachable) >= 2:
        timed = sorted((c for c in reachable if c.ttfb), key=lambda c: c.ttfb or 0.0)
        if len(timed) >= 2 and (timed[-1].ttfb or 0) >= 3 * (timed[0].ttfb or 0) > 0:
            b, w = timed[0], timed[-1]
            ratio = (w.ttfb or 0) / (b.ttfb or 1)
            out.append(
                f"{_label(b, checks)} answers {ratio:.0f}x faster than {_label(w, checks)} from here "
                f"(first byte after {(b.ttfb or 0) * 1000:.0f} vs {(w.ttfb or 0) * 1000:.0f} ms): "
                f"{_how(b, w)}"
            )
    return out


def _how(best: MirrorCheck, other: MirrorCheck) -> str:
    """How to pull from ``best`` rather than ``other``."""
    if best.region != other.region and best.region != "global":
        return f"use --region {best.region}"
    return f"use --only {best.name}, or --exclude {other.name}"


def _failure(c: MirrorCheck) -> str | None:
    """What a failed check of ``c`` means, and what to do; None if it did not fail."""
    where = f"{c.name} ({c.host}:{c.port})"
    if c.status == "dns-failed":
        return f"{where}: {c.error}; check DNS (/etc/resolv.conf) or use another mirror"
    if c.status == "refused":
        return (
            f"{where} refuses connections: down, or a firewall rejects it; pulls skip it "
            f"(or --exclude {c.name})"
        )
    if c.status in ("unreachable", "timeout"):
        return (
            f"{where}: {c.error}; blocked or down — pulls fall back to other mirrors (or --exclude {c.name})"
        )
    if c.status == "bad-cert":
        return (
            f"{where}: TLS {c.error}. Something may intercept TLS (a proxy, a captive portal); if your "
            "organisation uses its own CA, point SSL_CERT_FILE at it. dsmirror never turns "
            "certificate checks off"
        )
    if c.status == "tls-error":
        return f"{where}: {c.error}; a middlebox may block TLS to this host"
    if c.status == "http-error":
        return f"{where}: {c.error}"
    return None


def _proxies(r: DoctorReport) -> list[str]:
    return [
        f"{var}={val} is set: HTTP requests and pulls go through it (DNS/TCP/TLS above are direct)"
        for var, val in r.proxies.items()
        if var.upper() != "NO_PROXY"
    ]


def _clock(r: DoctorReport) -> list[str]:
    if r.clock_skew is None or abs(r.clock_skew) <= _SKEW_LIMIT:
        return []
    return [
        f"this clock is {r.clock_skew:+.0f} s off the servers' Date headers: signed download URLs and "
        "TLS certificates can be refused; sync it (timedatectl set-ntp true, or chrony)"
    ]


def _disk(r: DoctorReport) -> list[str]:
    d = r.disk
    if d is None:
        return []
    if d.needed is not None and d.free < d.needed + _DISK_MARGIN:
        return [
            f"only {format_bytes(d.free)} free in {d.path} for a {format_bytes(d.needed)} "
            "model: free some space or choose another --dest"
        ]
    if d.needed is None and d.free < _LOW_DISK:
        return [f"only {format_bytes(d.free)} free in {d.path}; models need 1 to 30+ GB"]
    return []


def _stores(r: DoctorReport) -> list[str]:
    out = []
    for s in r.stores:
        if not s.writable:
            flag = "--format ollama" if s.what.startswith("Ollama") else "--format hf"
            env = "OLLAMA_MODELS" if s.what.startswith("Ollama") else "HF_HUB_CACHE"
            out.append(
                f"cannot write to the {s.what} {s.path} ({s.detail}): {flag} will fail; fix the "
                f"permissions or set {env}"
            )
    return out


def _torrent(r: DoctorReport) -> list[str]:
    t = r.torrent
    if t is None or (t.tcp_ok and t.udp_ok):
        return []
    return [
        f"BitTorrent cannot listen on {t.listen} ({t.detail}): another client holds the port; pulls "
        "take the next free one, or set --listen HOST:PORT"
    ]
