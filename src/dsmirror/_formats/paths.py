"""Which repository paths are safe: the one rule set for manifests, torrents, catalogs and URLs.

A model's files are named by relative POSIX paths that come from outside (a manifest, a torrent,
a registry's listing, a client's URL). Before such a path is joined to a folder it must be:

- a non-empty string, not absolute (no leading ``/``, no drive letter such as ``C:``);
- free of NUL, other control characters (which would also reach terminals) and backslashes;
- valid Unicode: no lone surrogate (JSON's ``"\ud800"``), which has no UTF-8 and no file name;
- made of components none of which is empty, ``.`` or ``..``;
- outside dsmirror's private folder (``.dsmirror/``, see ``dsmirror._formats.private``).

``path_problem`` says what is wrong (or ``None``); ``validate_relpath`` raises ``ManifestError``
(for files dsmirror reads) and ``check_repo_path`` raises ``ValueError`` (for the server's URLs).

The paths of one model must also fit in one folder on every filesystem (``PathCollisions``): no
path twice, no file that is also a folder (``a`` and ``a/b``), and no two names that differ only in
case or Unicode normalisation (``A`` and ``a/x``; ``é`` as NFC and as NFD), which case-insensitive
(macOS, Windows) or normalisation-insensitive (APFS) filesystems take as one name.

Documented in docs/formats.md#repository-paths.
"""

from __future__ import annotations

import re
import unicodedata

from dsmirror._core.errors import ManifestError
from dsmirror._formats.private import PRIVATE_DIR

__all__ = ["PathCollisions", "check_repo_path", "has_surrogates", "path_problem", "validate_relpath"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (so it cannot be encoded as UTF-8)."""
    return _SURROGATE.search(text) is not None


def path_problem(path: object) -> str | None:
    """Why ``path`` is not a safe relative path inside a model folder, or ``None`` if it is."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if "\x00" in path or "\\" in path or any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        return f"{path!r} contains a NUL, control character or backslash"
    if has_surrogates(path):
        return f"{path!r} is not valid Unicode (a lone surrogate)"
    if path.startswith("/") or _DRIVE.match(path):
        return f"{path!r} is absolute; paths must be relative"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return f"{path!r} has an empty, '.' or '..' component"
    if _fold(parts[0]) == _fold(PRIVATE_DIR):  # also .DSMIRROR: one folder where case is ignored
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


def _fold(name: str) -> str:
    """What a case- and normalisation-insensitive filesystem compares (Unicode canonical caseless)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


class _Node:
    __slots__ = ("children", "is_file", "name")

    def __init__(self, name: str, is_file: bool) -> None:
        self.name = name
        self.is_file = is_file
        self.children: dict[str, _Node] = {}


class PathCollisions:
    """The safe paths of one model, added one by one; ``add`` tells a path that cannot join them.

    A tree of folded components: memory in proportion to the paths' length, whatever their depth.
    """

    def __init__(self) -> None:
        self._root = _Node("", False)

    def add(self, path: str) -> str | None:
        """Record file ``path``; or, if it collides with a path added before, say how (not recorded)."""
        parts = path.split("/")
        node = self._root
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            key = _fold(part)
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(part, last)
            elif child.name != part:
                mine, other = "/".join(parts[: depth + 1]), "/".join([*parts[:depth], child.name])
                of = f"{path!r}: " if mine != path else ""
                if unicodedata.normalize("NFC", mine) == unicodedata.normalize("NFC", other):
                    return f"{of}{mine!a} and {other!a} are one name in two Unicode normalisations"
                return (
                    f"{of}{mine!r} and {other!r} are one name on case- or normalisation-insensitive "
                    "filesystems (macOS, Windows)"
                )
            elif last and child.is_file:
                return f"{path!r} appears twice"
            elif last or child.is_file:
                return f"{'/'.join(parts[: depth + 1])!r} is both a file and a folder"
            node = child
        return None
