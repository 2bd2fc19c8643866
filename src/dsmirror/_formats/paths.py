"""Which repository paths are safe: the one rule set for manifests, torrents, catalogs and URLs.

A model's files are named by relative POSIX paths that come from outside (a manifest, a torrent,
a registry's listing, a client's URL). Before such a path is joined to a folder it must be:

- a non-empty string, not absolute (no leading ``/``, no drive letter such as ``C:``);
- free of NUL, other control characters (which would also reach terminals) and backslashes;
- made of components none of which is empty, ``.`` or ``..``;
- outside dsmirror's private folder (``.dsmirror/``, see ``dsmirror._formats.private``).

``path_problem`` says what is wrong (or ``None``); ``validate_relpath`` raises ``ManifestError``
(for files dsmirror reads) and ``check_repo_path`` raises ``ValueError`` (for the server's URLs).

Documented in docs/formats.md#repository-paths.
"""

from __future__ import annotations

import re

from dsmirror._core.errors import ManifestError
from dsmirror._formats.private import PRIVATE_DIR

__all__ = ["check_repo_path", "path_problem", "validate_relpath"]

_DRIVE = re.compile(r"^[A-Za-z]:")


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a safe relative path inside a model folder, or ``None`` if it is."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if "\x00" in path or "\\" in path or any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        return f"{path!r} contains a NUL, control character or backslash"
    if path.startswith("/") or _DRIVE.match(path):
        return f"{path!r} is absolute; paths must be relative"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"{path!r} has an empty, '.' or '..' component"
    if parts[0] == PRIVATE_DIR:
        return f"{path!r} is inside dsmirror's private {PRIVATE_DIR} folder"
    return None


def validate_relpath(path: object, *, where: str = "path") -> str:
    """Return ``path`` if it is safe (see the module docstring); else raise ``ManifestError``."""
    problem = path_problem(path)
    if problem is not None:
        raise ManifestError(f"{where} {problem}")
    assert isinstance(path, str)
    return path


def check_repo_path(path: str) -> str:
    """Return ``path`` if it is safe (see the module docstring); else raise ``ValueError``."""
    problem = path_problem(path)
    if problem is not None:
        raise ValueError(f"unsafe path: {problem}")
    return path
