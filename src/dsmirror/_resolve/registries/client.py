"""Small pieces shared by the registry resolvers: bounded metadata GETs and repo-style ``url_for``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dsmirror._core.clock import Clock
from dsmirror._core.errors import SourceError, SourceNotFound, SourceUnavailable
from dsmirror._fetch.metadata import METADATA_LIMIT, Metadata, MetadataSession
from dsmirror._formats.manifest import FileEntry

__all__ = ["METADATA_LIMIT", "Metadata", "RepoURLs", "describe", "get_metadata"]


def get_metadata(
    url: str,
    *,
    source: str,
    accept: str | None = None,
    timeout: float = 30.0,
    limit: int = METADATA_LIMIT,
    clock: Clock | None = None,
) -> Metadata:
    """GET a small metadata document; raise the most specific SourceError unless it is a 200.

    Bounded: at most ``limit`` bytes (decoded), and ``timeout`` seconds for the whole exchange,
    redirects included (``dsmirror._fetch.metadata``). No credentials are ever sent: the
    registries' metadata routes used here are public.
    """
    with MetadataSession(
        source=source, timeout=timeout, headers={"Accept": accept} if accept else None, clock=clock
    ) as session:
        doc = session.get(url, limit=limit)
    if doc.status == 404:
        raise SourceNotFound("HTTP 404: not found", source=source, url=url)
    if doc.status != 200:
        raise SourceUnavailable(f"HTTP {doc.status}", source=source, url=url)
    return doc


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
