"""The one error hierarchy of dsmirror.

This module imports nothing else from the package but ``sizes`` (which imports nothing), so every
module can raise these errors.
Errors carry data (source, url, piece, digests) and a ``retryable`` flag; only the CLI turns
them into a one-line message, a hint and an exit code (``exit_code``).

::

    DsmirrorError                      exit 1
    ├── UsageError                     exit 2   bad command line / unparsable REF
    ├── InputError                     exit 7   a file the user handed us is invalid
    │   ├── ManifestError                       malformed or unsafe manifest
    │   └── CatalogError                        malformed mirrors.yaml (file, line, field)
    ├── IntegrityError                 exit 3   bytes or documents failed their digest
    │   ├── ManifestMismatch                    manifest is not the pinned one
    │   ├── PieceMismatch                       one piece failed (piece, source, digests)
    │   ├── VerifyFailed                        `dsmirror verify` found bad pieces/files
    │   ├── SignatureInvalid                    a model.sig does not verify, does not match the files
    │   │                                       offered, or is required and missing (origin)
    │   └── ImportRejected                      a bundle or folder being imported: truncated,
    │                                           tampered, incomplete (origin, file, piece)
    ├── SourceError                    (retryable unless said otherwise; handled by the scheduler)
    │   ├── SourceUnavailable                   connect/reset/5xx
    │   ├── RateLimited                         429/503, carries retry_after
    │   ├── BadResponse                         HTML page, wrong range, 200 for a Range request
    │   │   └── TooLarge                        a metadata answer past its bound (limit), not read on
    │   ├── Stalled                             no bytes for too long / slower than the floor
    │   ├── SourceNotFound                      the source does not have this file (404)
    │   │   └── AccessDenied                    401/403: credentials missing or refused
    │   └── URLExpired                          signed redirect expired: re-resolve
    ├── NoSourceError                  exit 4   no usable source is left
    ├── StorageError                   exit 5   local disk: full, permission, read-only
    │   ├── DiskFull
    │   └── AlreadyInProgress          exit 6   another dsmirror holds the lock
    └── Interrupted                    exit 130 Ctrl-C / SIGTERM; verified progress is kept
"""

from __future__ import annotations

from dsmirror._core.sizes import format_bytes

__all__ = [
    "AccessDenied",
    "AlreadyInProgress",
    "BadResponse",
    "CatalogError",
    "DiskFull",
    "DsmirrorError",
    "ImportRejected",
    "InputError",
    "IntegrityError",
    "Interrupted",
    "ManifestError",
    "ManifestMismatch",
    "NoSourceError",
    "PieceMismatch",
    "RateLimited",
    "SignatureInvalid",
    "SourceError",
    "SourceNotFound",
    "SourceUnavailable",
    "Stalled",
    "StorageError",
    "TooLarge",
    "URLExpired",
    "UsageError",
    "VerifyFailed",
]


class DsmirrorError(Exception):
    """Root of every error dsmirror raises on purpose."""

    exit_code: int = 1
    retryable: bool = False
    #: A short suggestion for the user ("what to do next"); rendered by the CLI.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(DsmirrorError):
    exit_code = 2


class InputError(DsmirrorError):
    exit_code = 7


class ManifestError(InputError):
    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path


class CatalogError(InputError):
    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or "<catalog>"
        if line is not None:
            where += f":{line}"
        if field:
            where += f": {field}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.file = file
        self.line = line
        self.field = field


class IntegrityError(DsmirrorError):
    exit_code = 3


class ManifestMismatch(IntegrityError):
    def __init__(self, expected: str, actual: str, *, where: str = "manifest") -> None:
        super().__init__(
            f"{where} has SHA-256 {actual}, not the pinned {expected}",
            hint="the manifest changed or the source is not trustworthy; check --manifest-sha256",
        )
        self.expected = expected
        self.actual = actual


class PieceMismatch(IntegrityError):
    retryable = True

    def __init__(
        self,
        piece: int,
        *,
        path: str,
        expected: str,
        actual: str,
        source: str | None = None,
    ) -> None:
        by = f" from {source}" if source else ""
        super().__init__(f"piece {piece} of {path}{by} has SHA-256 {actual[:16]}…, expected {expected[:16]}…")
        self.piece = piece
        self.path = path
        self.expected = expected
        self.actual = actual
        self.source = source


class VerifyFailed(IntegrityError):
    def __init__(self, message: str, *, bad_pieces: list[int], bad_files: list[str]) -> None:
        super().__init__(message)
        self.bad_pieces = bad_pieces
        self.bad_files = bad_files


class SignatureInvalid(IntegrityError):
    """A model signature (``model.sig``) cannot vouch for the pull; nothing was fetched or installed."""

    def __init__(self, message: str, *, origin: str, hint: str | None = None) -> None:
        super().__init__(f"{origin}: {message}", hint=hint)
        self.origin = origin


class ImportRejected(IntegrityError):
    """What is being imported does not match its manifest; nothing was installed under final names."""

    def __init__(
        self,
        message: str,
        *,
        origin: str,
        path: str | None = None,
        piece: int | None = None,
        expected: str | None = None,
        actual: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(
            f"{origin}: {message}",
            hint=hint or "get a good copy of the bundle and import it again; verified pieces are kept",
        )
        self.origin = origin
        self.path = path
        self.piece = piece
        self.expected = expected
        self.actual = actual


class SourceError(DsmirrorError):
    """A failure of one source for one request; the scheduler decides what follows."""

    exit_code = 4
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        url: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.source = source
        self.url = url


class SourceUnavailable(SourceError):
    pass


class RateLimited(SourceError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: str | None) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class BadResponse(SourceError):
    pass


class TooLarge(BadResponse):
    """A metadata answer (manifest, listing) larger than ``limit`` bytes: refused before more is read."""

    def __init__(self, limit: int, *, source: str | None = None, url: str | None = None) -> None:
        super().__init__(f"answer larger than {limit} bytes", source=source, url=url)
        self.limit = limit


class Stalled(SourceError):
    pass


class SourceNotFound(SourceError):
    retryable = False


class AccessDenied(SourceNotFound):
    """HTTP 401/403 from the source itself: it is not asked for the file again (a signed redirect
    target's 403 is ``URLExpired``); when no source is left for a file, authentication failed."""


class URLExpired(SourceError):
    pass


class NoSourceError(DsmirrorError):
    exit_code = 4


class StorageError(DsmirrorError):
    exit_code = 5

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path


class DiskFull(StorageError):
    """Not enough space: ``needed`` bytes (and ``margin`` kept free besides), ``available`` free."""

    def __init__(self, *, path: str, needed: int = 0, available: int = 0, margin: int = 0) -> None:
        kept = f" (and {format_bytes(margin)} kept free)" if margin else ""
        what = (
            f"not enough free space in {path}: need {format_bytes(needed)}{kept}, "
            f"{format_bytes(available)} available"
            if needed
            else f"disk full while writing {path}"
        )
        super().__init__(
            what,
            path=path,
            hint="free some space or choose another --dest; verified pieces are kept",
        )
        self.needed = needed
        self.available = available
        self.margin = margin


class AlreadyInProgress(StorageError):
    exit_code = 6

    def __init__(self, *, path: str, pid: int | None = None) -> None:
        who = f" (pid {pid})" if pid else ""
        super().__init__(
            f"a pull of this model into {path} is already in progress{who}",
            path=path,
            hint="wait for it to finish, or stop it; its verified pieces will be reused",
        )
        self.pid = pid


class Interrupted(DsmirrorError):
    exit_code = 130
