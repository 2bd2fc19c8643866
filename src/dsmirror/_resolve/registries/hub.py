"""Hugging Face endpoints' metadata: pin a revision, list its files, bounded in bytes and time.

For ``hf://org/repo[@revision]`` on every HF-compatible endpoint (huggingface.co, hf-mirror.com, a
LAN dsmirror server, ...), in catalog order; for each step the first endpoint that answers wins:

1. Pin the revision to its 40-hex commit (``GET /api/models/{repo}/revision/{rev}``, as
   ``HfApi.model_info`` asks it: its ``sha``).
2. List the files at that commit (``GET /api/models/{repo}/tree/{commit}?recursive=True``, paged by
   ``Link: rel=next``, as ``HfApi.list_repo_tree`` does): path, size, git blob id, and for LFS files
   the SHA-256 of the content (``dsmirror._formats.hf.HfListing``).

Bounded
    One endpoint's exchange — the pin and every page of the listing — is one ``MetadataSession``
    (``dsmirror._fetch.metadata``): it ends within ``PullOptions.metadata_timeout`` (15 s by
    default) in all, however the endpoint drips its answers, and its pages hold at most
    ``METADATA_LIMIT`` bytes together (decoded: a gzip bomb costs no more). Nothing is retried: an
    endpoint that accepts the connection and never answers costs that long, then the next
    endpoint is asked. huggingface_hub's own client cannot be bounded so: its shared httpx2 client
    has no timeout, reads each body whole before anything could count it, ``list_repo_tree`` takes
    no timeout and its pagination retries a timed-out request five times with back-off; and
    ``set_client_factory`` would change the client of every huggingface_hub call in the process
    (the user's own included). So the requests are dsmirror's, with huggingface_hub's headers
    (``build_hf_headers``: its user agent, the token) and ``RepoFile`` parsing; refusals are read
    as the Hub signals them (``X-Error-Code``), as ``hf_raise_for_status`` does.

The token (``HF_TOKEN`` or huggingface_hub's stored token) is sent only to mirrors marked
``official`` in the catalog (huggingface.co); a redirect to another host drops it, and a tree
page's next link must stay on the endpoint that answered, so neither the headers nor the token
follow a link elsewhere. ``HF_HUB_OFFLINE`` is honoured: no endpoint is asked.

huggingface_hub builds a telemetry user agent that may fetch ``{HF_ENDPOINT}/api/agent-harnesses``
from the endpoint fixed at import time, not from the endpoint a call names. dsmirror switches that
telemetry off (``constants.HF_HUB_DISABLE_TELEMETRY``) before its first call, so it talks to the
catalog's endpoints only.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from dsmirror._core.errors import AccessDenied, NoSourceError, SourceError, SourceNotFound, SourceUnavailable
from dsmirror._fetch.metadata import METADATA_LIMIT, Metadata, MetadataSession
from dsmirror._formats.catalog import Mirror
from dsmirror._formats.hf import HfFile, HfListing

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


def _session(mirror: Mirror, token: str | None, timeout: float) -> MetadataSession:
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    if constants.HF_HUB_OFFLINE:
        raise SourceUnavailable("HF_HUB_OFFLINE is set", source=mirror.name)
    _no_telemetry()
    headers = build_hf_headers(token=_token_for(mirror, token), library_name="dsmirror")
    return MetadataSession(source=mirror.name, timeout=timeout, headers=headers)


def _refusal(doc: Metadata, source: str) -> SourceError:
    """What a non-2xx answer says, read as ``hf_raise_for_status`` reads the Hub's headers."""
    code = doc.headers.get("x-error-code")
    where = {"source": source, "url": doc.url.split("?", 1)[0]}
    if code == "RevisionNotFound":
        return SourceNotFound("revision not found", **where)
    if code == "GatedRepo":
        return AccessDenied("gated repository: accept its terms on the Hub and set HF_TOKEN", **where)
    invalid_token = doc.headers.get("x-error-message") == "Invalid credentials in Authorization header"
    if code == "RepoNotFound" or (doc.status == 401 and not invalid_token):
        return SourceNotFound("repository not found (or private: set HF_TOKEN)", **where)
    if doc.status in (401, 403):
        return AccessDenied(f"HTTP {doc.status}: access denied (check HF_TOKEN)", **where)
    if doc.status == 404:
        return SourceNotFound("HTTP 404", **where)
    return SourceUnavailable(f"HTTP {doc.status}", **where)


def _get_json(
    session: MetadataSession, url: str, params: dict[str, Any] | None, limit: int
) -> tuple[Any, Metadata]:
    doc = session.get(url, params=params, limit=limit)
    if not 200 <= doc.status < 300:
        raise _refusal(doc, session.source)
    return json.loads(doc.body), doc


def _why(exc: BaseException) -> str:
    if isinstance(exc, SourceError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _pin(session: MetadataSession, mirror: Mirror, repo_id: str, revision: str) -> str:
    """The commit ``revision`` names at ``mirror``."""
    url = f"{mirror.url.rstrip('/')}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    info, _ = _get_json(session, url, None, METADATA_LIMIT)
    sha = info.get("sha") if isinstance(info, dict) else None
    commit = str(sha or "").lower()
    if not _HEX40.match(commit):
        raise ValueError(f"the endpoint gave no commit id for {revision!r} ({sha!r})")
    return commit


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


def _list_tree(session: MetadataSession, mirror: Mirror, repo_id: str, commit: str) -> list[HfFile]:
    """The files at ``commit``, as ``HfApi.list_repo_tree(recursive=True)`` lists them, but bounded:
    every page within the session's deadline, all pages together within ``METADATA_LIMIT`` bytes."""
    from huggingface_hub import RepoFile

    url: str | None = f"{mirror.url.rstrip('/')}/api/models/{repo_id}/tree/{quote(commit, safe='')}"
    params: dict[str, Any] | None = {"recursive": "true", "expand": "false"}
    files: list[HfFile] = []
    budget = METADATA_LIMIT
    for _ in range(MAX_TREE_PAGES):
        if url is None:
            return files
        page, doc = _get_json(session, url, params, budget)
        budget -= len(doc.body)
        if not isinstance(page, list):
            raise ValueError(f"the tree listing is not a list ({type(page).__name__})")
        for item in page:
            if isinstance(item, dict) and item.get("type") == "file":  # not "directory"
                files.append(_to_file(RepoFile(**item)))  # type: ignore[no-untyped-call]
        # The next link holds the query. httpx reads Link headers as the Hub writes them.
        url, params = httpx.Response(doc.status, headers=doc.headers).links.get("next", {}).get("url"), None
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

    ``timeout`` bounds each endpoint's whole exchange: one that does not finish in time is skipped.
    """
    problems: list[str] = []
    for m in mirrors:
        try:
            with _session(m, token, timeout) as session:
                commit = revision.lower() if _HEX40.match(revision.lower()) else None
                if commit is None:
                    commit = _pin(session, m, repo_id, revision)
                files = tuple(_list_tree(session, m, repo_id, commit))
        except (
            Exception
        ) as exc:  # SourceErrors, and malformed answers (parsing errors) alike: try the next one
            problems.append(f"{m.name}: {_why(exc)}")
            continue
        return HfListing(repo_id, revision, commit, files, m.name, tuple(problems))
    raise NoSourceError(
        f"cannot resolve hf://{repo_id}@{revision}: " + "; ".join(problems or ["no endpoint"]),
        hint="check the repo id and revision, the network, and the hf mirrors (--mirrors, --only)",
    )
