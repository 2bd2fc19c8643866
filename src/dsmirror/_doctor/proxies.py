"""The proxies the environment names, as httpx (and so a pull) uses them, with credentials removed."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

__all__ = ["proxy_env", "proxy_for", "redact"]

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def redact(url: str) -> str:
    """``url`` without its credentials, query and fragment."""
    p = urlsplit(url)
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    if p.username:
        netloc = "***@" + netloc
    return urlunsplit((p.scheme, netloc, p.path, "", ""))


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy httpx would use for ``url`` (from the environment), redacted."""
    scheme = urlsplit(url).scheme
    host = urlsplit(url).hostname or ""
    getters = {k.lower(): v for k, v in env.items() if k.lower().endswith("_proxy") and v}
    no_proxy = getters.get("no_proxy", "")
    if no_proxy and _bypassed(host, no_proxy):
        return None
    proxy = getters.get(f"{scheme}_proxy") or getters.get("all_proxy")
    return redact(proxy) if proxy else None


def _bypassed(host: str, no_proxy: str) -> bool:
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")))):
            return True
    return False


def proxy_env(env: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables set in ``env``, redacted."""
    out: dict[str, str] = {}
    for k, v in env.items():
        if k.upper() in _PROXY_VARS and v:
            out[k] = v if k.upper() == "NO_PROXY" else redact(v)
    return out
