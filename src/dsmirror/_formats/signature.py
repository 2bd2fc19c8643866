"""OpenSSF model signing: a model's ``model.sig``, read as a dsmirror manifest.

A ``model.sig`` (PyPI ``model-signing``, github.com/sigstore/model-transparency) is a Sigstore
bundle, JSON, whose DSSE envelope carries an in-toto statement about every file of the model::

    {                                                       # the bundle
      "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
      "verificationMaterial": {                             # who signed; one of:
        "publicKey": {"hint": "<sha256 hex of the PEM public key>"},            # a private key
        "x509CertificateChain": {"certificates": [{"rawBytes": "<DER, base64>"}, ...]},
                                                            # a certificate (signing cert first)
        "certificate": {"rawBytes": "..."},                 # Sigstore keyless: a Fulcio certificate
        "tlogEntries": [...]                                # and its transparency-log entries
      },
      "dsseEnvelope": {
        "payloadType": "application/vnd.in-toto+json",
        "payload": "<base64 of the statement>",
        "signatures": [{"sig": "<base64>", "keyid": ""}]    # over DSSE PAE(payloadType, payload)
      }
    }

    {                                                       # the statement (in-toto v1)
      "_type": "https://in-toto.io/Statement/v1",
      "subject": [{"name": "<model folder name>",
                   "digest": {"sha256": "<SHA-256 of every resource digest, concatenated in order>"}}],
      "predicateType": "https://model_signing/signature/v1.0",
      "predicate": {
        "serialization": {"method": "shards",               # or "files"
                          "hash_type": "sha256",
                          "shard_size": 8388608.0,          # shards only: a JSON number, written as a
                                                            # float by model-signing 1.1.1
                          "allow_symlinks": false,
                          "ignore_paths": [".git", ".gitattributes", "model.sig", ...]},
        "resources": [                                      # sorted by name
          {"name": "w.bin:0:8388608", "algorithm": "sha256-sharded-8388608", "digest": "<hex>"},
          {"name": "w.bin:8388608:9000000", ...},           # shards: path:start:end, end exclusive
          {"name": "config.json", "algorithm": "sha256", "digest": "<hex>"},   # files: one per file
        ]
      }
    }

Shards are file-aligned: the shards of a file start at 0 and are ``shard_size`` bytes each but the
last, which is 1 to ``shard_size`` bytes; each ``digest`` is the plain SHA-256 of those bytes. An
empty file has no shard, so a sharded signature does not sign (and a pull does not fetch) it. The
``files`` method gives one SHA-256 per file and no sizes. Paths listed in ``ignore_paths`` (and the
signature itself) were left out when the model was signed.

As a dsmirror manifest (``signed_manifest``):

- ``shards``: pieces of ``piece_size = shard_size``, one per shard, each shard's digest the piece's
  hash, checked as the piece lands. A file of one shard has that digest as its whole-file SHA-256;
  a larger one has no whole-file digest (``sha256: null``, see ``dsmirror._formats.manifest``): its
  pieces cover every byte. A shard size dsmirror's pieces cannot have (a power of two from 16 KiB to
  1 GiB; model-signing's default is 10^9) is accepted only when every file is one shard (each is then
  checked whole by that digest); otherwise ``ManifestError`` says how to re-sign.
- ``files``: each file's SHA-256, checked whole; no piece hashes. Sizes come from the files offered
  (a registry's listing, the mirrors' answers).

This module only parses. The signature is checked first, by ``dsmirror._verify.signature`` with the
model-signing library; only the statement it verified is read here (``parse_statement``), and
``check_offered`` compares it with the files a pull is offered.

Documented in docs/formats.md#model-signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from dsmirror._core.errors import ManifestError, SignatureInvalid
from dsmirror._formats.manifest import (
    DEFAULT_PIECE_SIZE,
    MAX_PIECE_SIZE,
    MIN_PIECE_SIZE,
    FileEntry,
    Manifest,
    NoPieceHashes,
    parse_manifest,
)
from dsmirror._formats.paths import has_surrogates, path_problem

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "SIGNATURE_NAME",
    "STATEMENT_TYPE",
    "SignedFile",
    "SignedModel",
    "SignerKind",
    "bundle_statement",
    "check_offered",
    "parse_statement",
    "signed_manifest",
    "signer_kind",
]

#: The file name model-signing writes and looks for next to a model.
SIGNATURE_NAME = "model.sig"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: A signature larger than this is refused unread (50 000 shards take about 8 MB).
MAX_SIGNATURE_SIZE = 256 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_OFFSET = re.compile(r"[0-9]{1,19}")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

SignerKind = Literal["key", "certificate", "sigstore"]


@dataclass(frozen=True)
class SignedFile:
    """One file as a signature lists it."""

    path: str
    #: Known for shards (the last shard's end); None for the files method.
    size: int | None
    #: The whole-file SHA-256 where the signature gives it (files method, or a single shard).
    sha256: str | None
    #: The shard digests in order (shards method); empty for the files method.
    shards: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignedModel:
    """The statement of a ``model.sig``: what its signer vouched for."""

    name: str
    method: Literal["shards", "files"]
    shard_size: int | None
    ignore_paths: tuple[str, ...]
    files: tuple[SignedFile, ...]
    #: The subject's digest: SHA-256 over every resource digest (the model's signed identity).
    subject_sha256: str

    def file(self, path: str) -> SignedFile | None:
        return next((f for f in self.files if f.path == path), None)

    def ignores(self, path: str) -> bool:
        """Whether the signer left ``path`` out on purpose (an ignored path, or the signature)."""
        return path == SIGNATURE_NAME or any(path == p or path.startswith(p + "/") for p in self.ignore_paths)

    @property
    def num_resources(self) -> int:
        return sum(len(f.shards) or 1 for f in self.files)


def _invalid(origin: str, message: str) -> SignatureInvalid:
    return SignatureInvalid(message, origin=origin)


def signer_kind(bundle: bytes, *, origin: str) -> SignerKind:
    """How a bundle says it was signed (read from its verification material, not yet verified)."""
    try:
        obj = json.loads(bundle)
        material = obj["verificationMaterial"]
    # ValueError: also undecodable bytes, bad JSON, and ints too long for Python (RecursionError: too deep)
    except (ValueError, RecursionError, KeyError, TypeError) as exc:
        raise _invalid(origin, "not a Sigstore bundle (model.sig JSON)") from exc
    if not isinstance(material, dict):
        raise _invalid(origin, "not a Sigstore bundle: verificationMaterial is not an object")
    if "publicKey" in material:
        return "key"
    if "x509CertificateChain" in material:
        return "certificate"
    if "certificate" in material:
        return "sigstore"
    raise _invalid(origin, "the bundle names no public key, certificate chain or Sigstore certificate")


def bundle_statement(bundle: bytes, *, origin: str) -> bytes:
    """The statement a bundle carries, NOT verified: for showing what one's own signing wrote."""
    try:
        payload = json.loads(bundle)["dsseEnvelope"]["payload"]
        return base64.b64decode(payload, validate=True)
    except (ValueError, RecursionError, KeyError, TypeError, binascii.Error) as exc:
        raise _invalid(origin, "not a Sigstore bundle with a DSSE envelope") from exc


def _integer(value: object) -> int | None:
    """A JSON number that is a whole number (model-signing writes shard_size as a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def parse_statement(payload: bytes, *, origin: str) -> SignedModel:
    """Read and strictly check the in-toto statement of a verified signature."""
    try:
        st = json.loads(payload)
    except RecursionError:
        raise _invalid(origin, "the signed statement is not JSON (nested too deeply)") from None
    except ValueError as exc:  # also undecodable bytes, and ints too long for Python
        raise _invalid(origin, f"the signed statement is not JSON ({exc})") from exc

    def expect(cond: bool, message: str) -> None:
        if not cond:
            raise _invalid(origin, message)

    expect(isinstance(st, dict), "the signed statement is not a JSON object")
    expect(st.get("_type") == STATEMENT_TYPE, f"the statement is not an in-toto {STATEMENT_TYPE}")
    expect(
        st.get("predicateType") == PREDICATE_TYPE,
        f"predicate type {st.get('predicateType')!r} is not {PREDICATE_TYPE!r}",
    )
    subjects = st.get("subject")
    expect(isinstance(subjects, list) and len(subjects) == 1, "the statement needs exactly one subject")
    subject = subjects[0]
    expect(isinstance(subject, dict) and isinstance(subject.get("digest"), dict), "malformed subject")
    subject_sha256 = subject["digest"].get("sha256")
    expect(isinstance(subject_sha256, str) and bool(_HEX64.fullmatch(subject_sha256)), "bad subject digest")
    name = subject.get("name")
    predicate = st.get("predicate")
    expect(isinstance(predicate, dict), "the statement has no predicate")
    ser = predicate.get("serialization")
    expect(isinstance(ser, dict), "the predicate has no serialization")
    method = ser.get("method")
    expect(method in ("shards", "files"), f"unknown serialization method {method!r}")
    if ser.get("hash_type") != "sha256":
        raise ManifestError(
            f"the model is signed with {ser.get('hash_type')!r} digests; dsmirror checks SHA-256 only",
            path=origin,
            hint="sign with hash_type sha256 (the default; `dsmirror manifest sign`)",
        )
    ignore = ser.get("ignore_paths", [])
    expect(isinstance(ignore, list) and all(isinstance(p, str) for p in ignore), "bad ignore_paths")
    shard_size = None
    if method == "shards":
        shard_size = _integer(ser.get("shard_size"))
        expect(shard_size is not None and shard_size > 0, f"bad shard_size {ser.get('shard_size')!r}")
    resources = predicate.get("resources")
    expect(isinstance(resources, list), "the predicate has no resources")

    root = hashlib.sha256()
    names: set[str] = set()
    by_path: dict[str, list[tuple[int, int, str]]] = {}
    for i, res in enumerate(resources):
        where = f"resources[{i}]"
        expect(isinstance(res, dict) and set(res) == {"name", "algorithm", "digest"}, f"{where} is malformed")
        rname, algorithm, digest = res["name"], res["algorithm"], res["digest"]
        expect(isinstance(digest, str) and bool(_HEX64.fullmatch(digest)), f"{where}.digest is not 64 hex")
        expect(
            isinstance(rname, str) and rname not in names, f"{where}.name is not a string, or listed twice"
        )
        names.add(rname)
        root.update(bytes.fromhex(digest))
        if method == "shards":
            expect(algorithm == f"sha256-sharded-{shard_size}", f"{where}: algorithm {algorithm!r}")
            parts = rname.split(":")
            # ASCII digits, at most 19 (str.isdigit also takes "²", and int() refuses 4,300 digits)
            offsets_ok = len(parts) == 3 and all(_OFFSET.fullmatch(p) for p in parts[1:])
            expect(offsets_ok, f"{where}: bad shard {rname!r}")
            path, start, end = parts[0], int(parts[1]), int(parts[2])
        else:
            expect(algorithm == "sha256", f"{where}: algorithm {algorithm!r} is not sha256")
            path, start, end = rname, 0, 0
        problem = path_problem(path)
        expect(problem is None, f"{where}: the path {problem}")
        by_path.setdefault(path, []).append((start, end, digest))
    expect(root.hexdigest() == subject_sha256, "the subject digest does not cover the resources listed")

    files: list[SignedFile] = []
    folded: set[str] = set()
    for path in sorted(by_path):
        expect(path.casefold() not in folded, f"{path!r} differs from another path only by case")
        folded.add(path.casefold())
        entries = sorted(by_path[path])
        if method == "files":
            files.append(SignedFile(path, None, entries[0][2]))
            continue
        assert shard_size is not None
        at = 0
        for k, (start, end, _) in enumerate(entries):
            last = k == len(entries) - 1
            expect(start == at, f"the shards of {path!r} do not start at {at}")
            expect(end - start == shard_size or (last and 0 < end - start < shard_size), f"bad shard {path}")
            at = end
        digests = tuple(d for _, _, d in entries)
        files.append(SignedFile(path, at, digests[0] if len(digests) == 1 else None, digests))
    for f in files:  # a file may not also be a folder of another file ("a" and "a/b")
        expect(not any(g.path.startswith(f.path + "/") for g in files), f"{f.path!r} is a file and a folder")
    usable = (
        isinstance(name, str) and 0 < len(name) <= 200 and "\x00" not in name and not has_surrogates(name)
    )
    clean_name = name if usable else "model"
    return SignedModel(clean_name, method, shard_size, tuple(ignore), tuple(files), subject_sha256)


def _allowed_piece_size(size: int) -> bool:
    return MIN_PIECE_SIZE <= size <= MAX_PIECE_SIZE and size & (size - 1) == 0


def check_offered(
    model: SignedModel, offered: Mapping[str, int], *, pulled: Collection[str] | None, origin: str
) -> None:
    """Refuse a pull whose offered files (path -> size) do not match the signed ones.

    Every signed file must be offered, with the signed size where the signature gives one.
    ``pulled``: the paths a pull takes from a full listing (a repository's): each must be signed or
    left out by the signer (``SignedModel.ignores``). None: the source lists nothing (plain mirrors).
    """
    missing = [f.path for f in model.files if f.path not in offered]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise _invalid(origin, f"the signature lists {missing[0]}{more}, which the source does not have")
    for f in model.files:
        if f.size is not None and offered[f.path] != f.size:
            raise _invalid(
                origin, f"{f.path} is {offered[f.path]} bytes at the source, the signature says {f.size}"
            )
        if f.size is None and offered[f.path] == 0 and f.sha256 != _EMPTY_SHA256:
            raise _invalid(origin, f"{f.path} is empty at the source, the signature says it is not")
    if pulled is not None:
        signed = {f.path for f in model.files}
        # An empty file has no shard: sharded signatures never list one (model-signing's own check
        # skips them as well).
        unsigned_ok = {p for p in pulled if model.method == "shards" and offered.get(p) == 0}
        extra = sorted(p for p in pulled if p not in signed | unsigned_ok and not model.ignores(p))
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            raise _invalid(origin, f"{extra[0]}{more} is offered but not signed")


def signed_manifest(
    model: SignedModel,
    *,
    sizes: Mapping[str, int] | None = None,
    paths: Sequence[str] | None = None,
    name: str | None = None,
    meta: Mapping[str, Any] | None = None,
    origin: str,
) -> Manifest:
    """The manifest of the signed files (``paths`` of them, or all): see the module docstring.

    ``sizes`` gives the size of every file for the ``files`` method (which signs none); sizes of
    shards are the signature's own.
    """
    wanted = None if paths is None else set(paths)
    chosen = [f for f in model.files if wanted is None or f.path in wanted]
    piece_size = DEFAULT_PIECE_SIZE
    per_piece = model.method == "shards"
    if model.shard_size is not None and per_piece:
        if _allowed_piece_size(model.shard_size):
            piece_size = model.shard_size
        else:
            split = next((f for f in chosen if len(f.shards) > 1), None)
            if split is not None:
                raise ManifestError(
                    f"its shards of {model.shard_size} bytes cannot be dsmirror pieces (a power of two "
                    f"from 16 KiB to 1 GiB), and {split.path} has {len(split.shards)} of them",
                    path=origin,
                    hint="re-sign with power-of-two shards, e.g. `dsmirror manifest sign DIR --shards`",
                )
            per_piece = False  # one shard per file: its digest is the file's SHA-256, checked whole
    entries = []
    for f in chosen:
        size = f.size if f.size is not None else (sizes or {}).get(f.path)
        if size is None:
            raise _invalid(origin, f"the size of {f.path} is not known (the signature gives none)")
        n = -(-size // piece_size)
        # No piece hashes: n empty strings, not stored (the sizes offered may be a registry's lie).
        entries.append(
            FileEntry(f.path, size, f.sha256 or "", tuple(f.shards) if per_piece else NoPieceHashes(n))
        )
    m = Manifest((name or model.name)[:200], piece_size, tuple(entries), None, dict(meta or {}))
    return parse_manifest(m.canonical_bytes, origin=origin)  # the manifest's own checks, too
