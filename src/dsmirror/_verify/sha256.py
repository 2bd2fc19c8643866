"""A SHA-256 whose state can be saved and restored: OpenSSL's ``SHA256_CTX`` through ctypes.

The store hashes each file without piece hashes in order, as its pieces verify, and must not hash
700 GB again after a crash at 99%. ``hashlib`` cannot save a hash's state (its objects do not
pickle, and ``copy`` stays in the process). OpenSSL's low-level ``SHA256_Init``/``Update``/``Final``
keep the state in a plain C struct, ``SHA256_CTX`` (public ABI since 0.9.8, unchanged in 1.1 and
3.x, where the functions are deprecated but exported)::

    struct { uint32 h[8]; uint32 Nl, Nh; uint32 data[16]; unsigned num, md_len; }   112 bytes

At a multiple of 64 bytes (every piece boundary: piece sizes are powers of two of at least 16 KiB)
``num`` is 0 and ``data`` holds nothing, so the whole state is the eight words ``h`` and the length
hashed so far: ``state()`` gives the words (32 bytes, little-endian), the caller knows the length,
and ``restore(words, length)`` continues from there. ctypes releases the GIL for the call, so the
hashing runs beside the connections' threads as ``hashlib``'s does (the same OpenSSL code, measured
as fast: 0.62 s of CPU per GiB for both, with SHA-NI, on the 2-core machine of issue 14).

The PyPI package ``rehash`` does this by copying CPython's hashlib internals into an extension (last
release 2022-08); libcrypto is already loaded by every Python built with ``ssl``, so this needs
nothing installed. Where it is missing (``RESUMABLE`` False), ``ResumableSha256`` wraps ``hashlib``
and ``state()`` returns None: callers hash from the start again after a restart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import struct
from collections.abc import Iterator

__all__ = ["RESUMABLE", "ResumableSha256"]

_WORDS = struct.Struct("<8I")


class _Ctx(ctypes.Structure):
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _candidates() -> Iterator[str]:
    """Where libcrypto may be: first the one Python's own hashlib loaded (read from this process's
    memory map, so nothing is forked: ``find_library`` runs ``ldconfig -p`` at every start), then
    the usual sonames, then ``find_library``."""
    try:
        import _hashlib  # noqa: F401  (loads libcrypto into this process)

        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcrypto" in path:
                    yield path
                    break
    except (ImportError, OSError):
        pass
    yield from ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.dylib")
    found = ctypes.util.find_library("crypto")
    if found:
        yield found


def _load() -> ctypes.CDLL | None:
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.POINTER(_Ctx)]
        update.argtypes = [ctypes.POINTER(_Ctx), ctypes.c_void_p, ctypes.c_size_t]
        final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Ctx)]
        init.restype = update.restype = final.restype = ctypes.c_int
        if _selftest(lib):
            return lib
    return None


def _selftest(lib: ctypes.CDLL) -> bool:
    """The struct layout is what this module assumes: a save at 64 bytes restores exactly."""
    data = bytes(range(256)) * 2
    ctx = _Ctx()
    lib.SHA256_Init(ctypes.byref(ctx))
    lib.SHA256_Update(ctypes.byref(ctx), data[:128], 128)
    again = _Ctx()
    lib.SHA256_Init(ctypes.byref(again))
    again.h[:] = ctx.h[:]
    again.Nl, again.Nh = 128 * 8, 0
    lib.SHA256_Update(ctypes.byref(again), data[128:], len(data) - 128)
    out = ctypes.create_string_buffer(32)
    lib.SHA256_Final(out, ctypes.byref(again))
    return ctx.num == 0 and out.raw == hashlib.sha256(data).digest()


_LIB = _load()
#: Whether states can be saved (libcrypto with the low-level SHA-256 calls was found).
RESUMABLE = _LIB is not None


class ResumableSha256:
    """SHA-256 of a stream fed in order; ``state()`` at a 64-byte boundary, ``restore`` from one."""

    __slots__ = ("_ctx", "_h", "length")

    def __init__(self) -> None:
        self.length = 0
        self._ctx: _Ctx | None = None
        self._h: hashlib._Hash | None = None
        if _LIB is not None:
            self._ctx = _Ctx()
            _LIB.SHA256_Init(ctypes.byref(self._ctx))
        else:
            self._h = hashlib.sha256()

    @classmethod
    def restore(cls, words: bytes, length: int) -> ResumableSha256 | None:
        """The hasher that has hashed ``length`` bytes (a multiple of 64) into ``words``; None when
        states cannot be restored here."""
        if _LIB is None or length % 64 or len(words) != _WORDS.size:
            return None
        out = cls()
        assert out._ctx is not None
        out._ctx.h[:] = _WORDS.unpack(words)
        bits = length * 8
        out._ctx.Nl, out._ctx.Nh = bits & 0xFFFFFFFF, bits >> 32
        out.length = length
        return out

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if not n:
            return
        self.length += n
        if self._ctx is None:
            assert self._h is not None
            self._h.update(data)
            return
        if isinstance(data, bytes):
            _LIB.SHA256_Update(ctypes.byref(self._ctx), data, n)  # type: ignore[union-attr]
            return
        view = memoryview(data).cast("B")
        if view.readonly:
            buf: object = view.tobytes()
        else:
            buf = (ctypes.c_char * n).from_buffer(view)
        _LIB.SHA256_Update(ctypes.byref(self._ctx), buf, n)  # type: ignore[union-attr]

    def state(self) -> bytes | None:
        """The eight state words (32 bytes), or None: not at a 64-byte boundary, or not resumable."""
        if self._ctx is None or self.length % 64:
            return None
        return _WORDS.pack(*self._ctx.h)

    def hexdigest(self) -> str:
        """The digest of what was fed so far (the hasher can go on)."""
        if self._ctx is None:
            assert self._h is not None
            return self._h.hexdigest()
        done = _Ctx()
        ctypes.memmove(ctypes.byref(done), ctypes.byref(self._ctx), ctypes.sizeof(_Ctx))
        out = ctypes.create_string_buffer(32)
        _LIB.SHA256_Final(out, ctypes.byref(done))  # type: ignore[union-attr]
        return out.raw.hex()
