"""Small pieces shared by the registry resolvers: metadata GETs and repo-style ``url_for``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from dsmirror._core.errors import BadResponse, SourceError, SourceNotFound, SourceUnavailable, Stalled
from dsmirror._fetch.http import USER_AGENT, shared_ssl_context
from dsmirror._formats.manifest import FileEntry

__all__ = ["Metadata", "RepoURLs", "describe", "get_metadata"]

#: Metadata documents (listings, manifests) larger than this are refused as implausible.
METADATA_LIMIT = 64 << 20


@dataclass(frozen=True)
class Metadata:
    """A metadata document as received."""

    url: str
    body: bytes
    headers: httpx.Headers


def get_metadata(
    url: str,
    *,
    source: str,
    accept: str | None = None,
    timeout: float = 30.0,
    transport: httpx.BaseTransport | None = None,
) -> Metadata:
    """GET a small metadata document; raise the most specific SourceError unless it is a 200.

    No credentials are ever sent: the registries' metadata routes used here are public.
    """
    headers = {"User-Agent": USER_AGENT}
    if accept:
        headers["Accept"] = accept
    body = bytearray()
    try:
        with (
            httpx.Client(
                timeout=timeout,
                follow_redirects=True,
                trust_env=True,
                transport=transport,
                verify=shared_ssl_context() if transport is None else True,
            ) as client,
            client.stream("GET", url, headers=headers) as resp,
        ):
            if resp.status_code == 404:
                raise SourceNotFound("HTTP 404: not found", source=source, url=url)
            if resp.status_code != 200:
                raise SourceUnavailable(f"HTTP {resp.status_code}", source=source, url=url)
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > METADATA_LIMIT:
                    raise BadResponse(f"answer larger than {METADATA_LIMIT} bytes", source=source, url=url)
    except httpx.TimeoutException as exc:
        raise Stalled(f"no answer within {timeout:g} s", source=source, url=url) from exc
    except httpx.HTTPError as exc:
        raise SourceUnavailable(f"cannot connect: {exc}", source=source, url=url) from exc
    return Metadata(str(resp.url), bytes(body), resp.headers)


@dataclass
class RepoURLs:
    """``url_for`` of a repo-style source: manifest path -> repo path -> URL.

    ``allowed`` (manifest paths), when set, is what this source may serve: any other file is refused
    with ``SourceNotFound`` before a request is made, so the scheduler never asks for it again.
    """

    source: str
    template: Callable[[str], str]  # repo path -> URL
    repo_paths: Mapping[str, str]  # manifest path -> repo path
    allowed: frozenset[str] | None = None

    def __call__(self, file: FileEntry) -> str:
        if self.allowed is not None and file.path not in self.allowed:
            raise SourceNotFound(
                f"{file.path} is not served (or not with the pinned digest)", source=self.source
            )
        return self.template(self.repo_paths.get(file.path, file.path))


def describe(exc: SourceError) -> str:
    """One line for a note or an error message: what failed, and where (URLs without their query)."""
    return exc.message + (f" ({exc.url.split('?', 1)[0]})" if exc.url else "")
