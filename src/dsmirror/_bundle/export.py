"""Writing a bundle: stream the manifest, the sidecars and every file into one tar.

Every file is checked against the manifest as it is read (``_CheckedReader``), so exporting a
damaged copy fails naming the file and the piece; ``write_bundle_file`` writes to a temporary
name and renames, so there is never a half bundle under the final name. The format is drawn in
``dsmirror._bundle.format``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dsmirror._bundle.format import CHUNK, FILES_PREFIX, MANIFEST_MEMBER, SIDECAR_PREFIX, tar_member
from dsmirror._bundle.sources import ExportSource
from dsmirror._core.errors import StorageError, VerifyFailed
from dsmirror._core.fsutil import fsync_dir, storage_errors
from dsmirror._formats.manifest import Manifest

__all__ = ["write_bundle", "write_bundle_file"]


class _CheckedReader(io.RawIOBase):
    """Reads one file for the tar writer and checks its pieces against the manifest on the way.

    Exporting a damaged local copy fails (naming the file and piece) instead of producing a bundle
    that every importer would reject.
    """

    def __init__(
        self, fh: IO[bytes], manifest: Manifest, fi: int, local: Path, on_bytes: Callable[[int], None] | None
    ):
        self.fh = fh
        self.m = manifest
        self.fi = fi
        self.local = local
        self.on_bytes = on_bytes
        self.rng = manifest.file_piece_ranges[fi]
        self.k = 0  # piece of the file being read
        self.at = 0  # bytes of it read
        self.h = hashlib.sha256()
        self.whole = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            chunk = self.fh.read(CHUNK if n < 0 else min(CHUNK, n - len(out)))
            if not chunk:
                break
            out += chunk
            self._account(memoryview(chunk))
        if self.on_bytes and out:
            self.on_bytes(len(out))
        return bytes(out)

    def _account(self, mv: memoryview) -> None:
        f = self.m.files[self.fi]
        self.whole.update(mv)
        while mv:
            if self.k >= len(self.rng):
                raise StorageError(f"{self.local} grew while being exported", path=str(self.local))
            piece = self.m.pieces[self.rng[self.k]]
            take = min(len(mv), piece.length - self.at)
            self.h.update(mv[:take])
            self.at += take
            mv = mv[take:]
            if self.at == piece.length:
                got = self.h.hexdigest()
                if piece.sha256 and got != piece.sha256:
                    raise VerifyFailed(
                        f"{self.local}: piece {piece.index} of {f.path} (bytes {piece.offset}-"
                        f"{piece.offset + piece.length - 1}) does not match the manifest; not exporting "
                        "a damaged copy",
                        bad_pieces=[piece.index],
                        bad_files=[f.path],
                    )
                self.k += 1
                self.at = 0
                self.h = hashlib.sha256()
                if self.k == len(self.rng) and self.whole.hexdigest() != f.sha256:
                    raise VerifyFailed(
                        f"{self.local} does not match the SHA-256 of {f.path}; not exporting a damaged copy",
                        bad_pieces=[],
                        bad_files=[f.path],
                    )


def write_bundle(src: ExportSource, out: IO[bytes], *, on_bytes: Callable[[int], None] | None = None) -> None:
    """Stream the bundle of ``src`` to ``out`` (see ``dsmirror._bundle.format``)."""
    m = src.manifest
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        data = m.canonical_bytes
        tar.addfile(tar_member(MANIFEST_MEMBER, len(data)), io.BytesIO(data))
        for name, body in sorted(src.sidecars.items()):
            tar.addfile(tar_member(SIDECAR_PREFIX + name, len(body)), io.BytesIO(body))
        for fi, f in enumerate(m.files):
            local = src.files[f.path]
            try:
                fh = open(local, "rb")  # noqa: SIM115 - closed below; tarfile reads it
            except FileNotFoundError:
                raise VerifyFailed(
                    f"{local} is missing; cannot export {m.name}", bad_pieces=[], bad_files=[f.path]
                ) from None
            except OSError as exc:
                raise StorageError(f"cannot read {local}: {exc.strerror}", path=str(local)) from exc
            with fh:
                size = os.fstat(fh.fileno()).st_size
                if size != f.size:
                    raise VerifyFailed(
                        f"{local} is {size} bytes, the manifest says {f.size}; not exporting a damaged copy",
                        bad_pieces=[],
                        bad_files=[f.path],
                    )
                reader = _CheckedReader(fh, m, fi, local, on_bytes)
                tar.addfile(tar_member(FILES_PREFIX + f.path, f.size), reader)
                if f.size == 0 and hashlib.sha256(b"").hexdigest() != f.sha256:
                    raise VerifyFailed(
                        f"{f.path} is empty but its SHA-256 is not", bad_pieces=[], bad_files=[f.path]
                    )


def write_bundle_file(
    src: ExportSource, output: Path, *, on_bytes: Callable[[int], None] | None = None
) -> None:
    """Write the bundle to a temporary name beside ``output``, fsync, rename: never a half bundle."""
    with storage_errors(output):
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                write_bundle(src, fh, on_bytes=on_bytes)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(output.parent)
