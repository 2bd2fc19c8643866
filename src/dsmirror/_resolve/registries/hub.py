"""Hugging Face endpoints' metadata, through huggingface_hub: pin a revision, list its files, bounded.

For ``hf://org/repo[@revision]`` on every HF-compatible endpoint (huggingface.co, hf-mirror.com, a
LAN dsmirror server, ...), in catalog order; for each step the first endpoint that answers wins:

1. Pin the revision to its 40-hex commit (``HfApi.model_info``, ``GET /api/models/{repo}/revision/{rev}``).
2. List the files at that commit (``GET /api/models/{repo}/tree/{commit}?recursive=True``, paged by
   ``Link: rel=next``, as ``HfApi.list_repo_tree`` does): path, size, git blob id, and for LFS files
   the SHA-256 of the content (``dsmirror._formats.hf.HfListing``).

Bounded in time
    Every metadata request has a timeout (``PullOptions.metadata_timeout``, 15 s by default) and is
    not retried: an endpoint that accepts the connection and never answers costs that long, then the
    next endpoint is asked. huggingface_hub 2.x cannot be told this per call for everything: its
    shared httpx2 client has no timeout, ``list_repo_tree`` takes none, and its pagination retries a
    timed-out request five times with back-off. ``set_client_factory`` would change the client of
    every huggingface_hub call in the process (the user's own included) and still not help, since the
    tree pages are requested with an explicit ``timeout=None``. So ``model_info`` gets ``timeout=``,
    and the tree pages are requested with huggingface_hub's own ``http_backoff`` (no retries, a
    timeout), headers (``build_hf_headers``), error mapping (``hf_raise_for_status``) and ``RepoFile``
    parsing: only the route is written here.

The token (``HF_TOKEN`` or huggingface_hub's stored token) is sent only to mirrors marked
``official`` in the catalog (huggingface.co); a tree page's next link must stay on the endpoint that
answered, so neither the headers nor the token follow a link elsewhere.

huggingface_hub builds a telemetry user agent that may fetch ``{HF_ENDPOINT}/api/agent-harnesses``
from the endpoint fixed at import time, not from the endpoint a call names. dsmirror switches that
telemetry off (``constants.HF_HUB_DISABLE_TELEMETRY``) before its first call, so it talks to the
catalog's endpoints only.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from dsmirror._core.errors import NoSourceError
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.hf import HfFile, HfListing

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["MAX_TREE_PAGES", "METADATA_TIMEOUT", "list_hf_repo"]

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: A tree listing that has not ended after this many pages is refused (a ``next`` link loop).
MAX_TREE_PAGES = 10_000
#: ``PullOptions.metadata_timeout``'s default, for callers of ``list_hf_repo``.
METADATA_TIMEOUT = 15.0


_telemetry_lock = threading.Lock()


def _token_for(mirror: Mirror, token: str | None) -> str | bool:
    """The token for requests to ``mirror``: only an official endpoint gets it (``False``: none)."""
    return token if token and mirror.official else False


def _no_telemetry() -> None:
    """Before huggingface_hub builds request headers: see the module docstring."""
    from huggingface_hub import constants

    with _telemetry_lock:
        constants.HF_HUB_DISABLE_TELEMETRY = True


def _api(mirror: Mirror, token: str | None) -> HfApi:
    from huggingface_hub import HfApi

    _no_telemetry()
    return HfApi(endpoint=mirror.url.rstrip("/"), token=_token_for(mirror, token), library_name="dsmirror")


def _is_a(exc: BaseException, *names: str) -> bool:
    """By class name: huggingface_hub raises httpx2's (2.x), httpx's (1.x) or requests' (0.x) errors."""
    return any(c.__name__ in names for c in type(exc).__mro__)


def _why(exc: BaseException, timeout: float) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RevisionNotFoundError):
        return "revision not found"
    if isinstance(exc, GatedRepoError):
        return "gated repository: accept its terms on the Hub and set HF_TOKEN"
    if isinstance(exc, RepositoryNotFoundError):
        return "repository not found (or private: set HF_TOKEN)"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return f"HTTP {status}"
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if _is_a(exc, "TimeoutException", "Timeout", "TimeoutError"):
        return f"no answer within {timeout:g} s"
    if _is_a(exc, "ConnectError", "ConnectionError"):
        return f"cannot connect: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _to_file(entry: Any) -> HfFile:
    path, size, blob_id = entry.path, entry.size, entry.blob_id
    if not isinstance(path, str) or not isinstance(size, int) or size < 0 or not isinstance(blob_id, str):
        raise ValueError(f"malformed tree entry {entry!r}")
    lfs = entry.lfs
    sha256 = None
    if lfs is not None:
        sha256 = str(lfs.sha256).lower()
        if not _HEX64.match(sha256) or lfs.size != size:
            raise ValueError(f"malformed LFS entry for {path}")
    return HfFile(path, size, blob_id.lower(), sha256)


#: ``http_backoff`` arguments for one attempt: an error is raised at once, without the warning it
#: logs before a retry, and without its ``close_session()`` of the process-wide client on a connect
#: error (as huggingface_hub's own metadata HEAD does when it wants a fast fallback).
_NO_RETRY: dict[str, Any] = {"max_retries": 0, "retry_on_exceptions": (), "retry_on_status_codes": ()}


def _list_tree(mirror: Mirror, repo_id: str, commit: str, token: str | None, timeout: float) -> list[HfFile]:
    """The files at ``commit``, as ``HfApi.list_repo_tree(recursive=True)`` lists them, but bounded.

    Each page is one request with ``timeout`` and no retry (see "Bounded in time" above).
    """
    from huggingface_hub import RepoFile

    # Public names, exported lazily (mypy cannot see them).
    from huggingface_hub.utils import (  # type: ignore[attr-defined]
        build_hf_headers,
        hf_raise_for_status,
        http_backoff,
    )

    _no_telemetry()
    headers = build_hf_headers(token=_token_for(mirror, token), library_name="dsmirror")
    url: str | None = f"{mirror.url.rstrip('/')}/api/models/{repo_id}/tree/{quote(commit, safe='')}"
    params: dict[str, Any] | None = {"recursive": True, "expand": False}
    files: list[HfFile] = []
    for _ in range(MAX_TREE_PAGES):
        if url is None:
            return files
        resp = http_backoff("GET", url, params=params, headers=headers, timeout=timeout, **_NO_RETRY)
        hf_raise_for_status(resp)
        page = resp.json()
        if not isinstance(page, list):
            raise ValueError(f"the tree listing is not a list ({type(page).__name__})")
        for item in page:
            if item.get("type") == "file":  # not "directory"
                files.append(_to_file(RepoFile(**item)))  # type: ignore[no-untyped-call]
        url, params = resp.links.get("next", {}).get("url"), None  # the next link holds the query
        if url is not None and urlsplit(url).netloc != urlsplit(mirror.url).netloc:
            # The headers (and an official endpoint's token) must not follow a link elsewhere.
            raise ValueError(f"the tree listing's next page is on another host ({urlsplit(url).netloc})")
    raise ValueError(f"the tree listing did not end after {MAX_TREE_PAGES} pages")


def list_hf_repo(
    mirrors: Sequence[Mirror],
    repo_id: str,
    revision: str,
    *,
    token: str | None,
    timeout: float = METADATA_TIMEOUT,
) -> HfListing:
    """Pin ``revision`` and list the repo's files, from the first of ``mirrors`` that answers.

    ``timeout`` bounds each request: an endpoint that does not answer in time is skipped.
    """
    problems: list[str] = []
    for m in mirrors:
        try:
            commit = revision.lower() if _HEX40.match(revision.lower()) else None
            if commit is None:
                info = _api(m, token).model_info(repo_id, revision=revision, timeout=timeout)
                commit = str(info.sha or "").lower()
                if not _HEX40.match(commit):
                    raise ValueError(f"the endpoint gave no commit id for {revision!r} ({info.sha!r})")
            files = tuple(_list_tree(m, repo_id, commit, token, timeout))
        except Exception as exc:  # huggingface_hub, httpx2 and parsing errors alike: try the next one
            problems.append(f"{m.name}: {_why(exc, timeout)}")
            continue
        return HfListing(repo_id, revision, commit, files, m.name, tuple(problems))
    raise NoSourceError(
        f"cannot resolve hf://{repo_id}@{revision}: " + "; ".join(problems or ["no endpoint"]),
        hint="check the repo id and revision, the network, and the hf mirrors (--mirrors, --only)",
    )
