"""Checking and making OpenSSF model signatures (``model.sig``) with the model-signing library.

The format is drawn in ``dsmirror._formats.signature``; this module holds the cryptography, which
the library does: reading the Sigstore bundle, checking the DSSE signature over the in-toto
statement with a public key, a certificate chain or a Sigstore identity, and signing.

Verifying before the download
    ``model_signing.verifying.Config.verify(model_dir, signature)`` checks the signature *and then
    hashes the model on disk* and compares. A pull must trust the signature before it fetches a
    byte, and then check each shard as it lands, so dsmirror calls the two halves that method is
    made of: the method's verifier (``model_signing._signing.sign_ec_key.Verifier``,
    ``sign_certificate.Verifier``, ``sign_sigstore.Verifier``) checks the bundle and returns the
    DSSE payload it verified (``_verify_signed_content``, the hook every verifier implements), and
    the library's ``dsse_payload_to_manifest`` checks the statement in it (predicate type, one
    subject, the subject digest over every resource). The statement is then read strictly by
    ``parse_statement``; its shard digests become piece hashes the engine checks as pieces land,
    its file digests whole-file checks. No model byte is hashed here.

Known limits of model-signing 1.1.1, worked around rather than copied
    - ``shard_size`` is written as a JSON float (1048576.0), and its verifier, guessing the hashing
      configuration from a sharded signature, fails (``'float' object cannot be interpreted as an
      integer``). dsmirror never asks it to guess: ``parse_statement`` reads the number itself.
    - Its CLI has no shard option and verifies files-method signatures only. ``sign_model`` writes
      either kind through the library API; a sharded one verifies with the library given the same
      ``use_shard_serialization(shard_size=...)`` (tested).
    - Its verifiers raise bare ``cryptography`` and ``OpenSSL`` errors, some without a message;
      they become ``SignatureInvalid`` with a sentence here.

These are not the library's stable API (it promises ``signing``, ``verifying``, ``hashing``), so
pyproject pins model-signing to its 1.1 releases; ``tests/test_signature.py`` checks the names.
The library (and sigstore, cryptography, pyOpenSSL under it: about 2 s to import) is imported only
when a signature is checked or made.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsmirror._core.errors import InputError, SignatureInvalid, SourceError, UsageError
from dsmirror._core.fsutil import atomic_write_bytes
from dsmirror._formats.catalog import Publisher
from dsmirror._formats.manifest import MAX_PIECE_SIZE, MIN_PIECE_SIZE
from dsmirror._formats.private import PRIVATE_DIR
from dsmirror._formats.signature import (
    MAX_SIGNATURE_SIZE,
    PAYLOAD_TYPE,
    SIGNATURE_NAME,
    SignedModel,
    SignerKind,
    bundle_statement,
    parse_statement,
    signer_kind,
)

__all__ = ["VerifiedSignature", "sign_model", "verify_signature"]

#: How a bundle was signed, and what checks it (on the command line; in a catalog's publisher).
_KINDS: dict[SignerKind, tuple[str, str]] = {
    "key": ("a private key", "--signature-key PEM (a publisher's key:)"),
    "certificate": ("a certificate", "--signature-cert-chain PEM (a publisher's certificate_chain:)"),
    "sigstore": (
        "Sigstore, keyless",
        "--signature-identity with --signature-issuer (a publisher's identity: and issuer:)",
    ),
}


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: what it signs and who signed it (for notes and records)."""

    model: SignedModel
    signer: str


def _verifier(publisher: Publisher) -> Any:
    """The library's verifier for ``publisher``'s trust material."""
    try:
        if publisher.method == "key":
            from model_signing._signing import sign_ec_key

            assert publisher.key is not None
            return sign_ec_key.Verifier(Path(publisher.key))
        if publisher.method == "certificate":
            from model_signing._signing import sign_certificate

            return sign_certificate.Verifier([Path(p) for p in publisher.certificate_chain])
    except OSError as exc:
        raise InputError(f"{publisher.name}: cannot read {exc.filename}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:  # not PEM, not an EC key, ...
        raise InputError(f"{publisher.name}: unusable trust material: {exc}") from exc
    from model_signing._signing import sign_sigstore

    assert publisher.identity is not None and publisher.issuer is not None
    try:
        return sign_sigstore.Verifier(
            identity=publisher.identity,
            oidc_issuer=publisher.issuer,
            trust_config=Path(publisher.trust_config) if publisher.trust_config else None,
        )
    except OSError as exc:
        raise InputError(f"{publisher.name}: cannot read {exc.filename}: {exc.strerror}") from exc
    except Exception as exc:  # sigstore fetches its public trust root (TUF) over the network
        raise SourceError(
            f"cannot get the Sigstore trust root to check {publisher.identity}: {exc}",
            hint="Sigstore identities need Sigstore's public trust root (network) or "
            "--signature-trust-config FILE (a ClientTrustConfig JSON) to verify offline",
        ) from exc


def _read(kind: SignerKind, bundle: bytes) -> Any:
    """The library's signature object (it reads bundles from files only)."""
    from model_signing._signing import sign_sigstore, sign_sigstore_pb

    cls = sign_sigstore.Signature if kind == "sigstore" else sign_sigstore_pb.Signature
    with tempfile.TemporaryDirectory(prefix="dsmirror-sig-") as tmp:
        path = Path(tmp) / SIGNATURE_NAME
        path.write_bytes(bundle)
        return cls.read(path)


def _why(exc: BaseException, publisher: Publisher) -> str:
    """One sentence for an error of the library's verifiers."""
    from cryptography.exceptions import InvalidSignature
    from OpenSSL.crypto import X509StoreContextError

    if isinstance(exc, InvalidSignature):
        return "the signature does not match the signed content (tampered, or signed by another key)"
    if isinstance(exc, X509StoreContextError):
        return f"the signing certificate does not chain to the certificates of {publisher.name} ({exc})"
    return str(exc) or type(exc).__name__


def _signer(kind: SignerKind, bundle: bytes, publisher: Publisher) -> str:
    material = json.loads(bundle)["verificationMaterial"]
    if kind == "key":
        return f"{publisher.name} (key {str(material['publicKey'].get('hint', '?'))[:16]}…)"
    if kind == "certificate":
        from cryptography import x509

        der = base64.b64decode(material["x509CertificateChain"]["certificates"][0]["rawBytes"])
        return (
            f"{publisher.name} (certificate {x509.load_der_x509_certificate(der).subject.rfc4514_string()})"
        )
    return f"{publisher.name} (Sigstore {publisher.identity}, {publisher.issuer})"


def verify_signature(bundle: bytes, publisher: Publisher, *, origin: str) -> VerifiedSignature:
    """Check a ``model.sig`` against ``publisher``; return what it signs. Hashes no model file.

    Raises ``SignatureInvalid`` if it does not verify, was made another way than ``publisher``
    signs, or its statement is not a model signature.
    """
    if len(bundle) > MAX_SIGNATURE_SIZE:
        raise SignatureInvalid(f"is {len(bundle)} bytes, too large to be a model signature", origin=origin)
    kind = signer_kind(bundle, origin=origin)
    if kind != publisher.method:
        what, checked_by = _KINDS[kind]
        raise SignatureInvalid(
            f"is signed with {what}, not the way {publisher.name} signs",
            origin=origin,
            hint=f"check it with {checked_by}",
        )
    verifier = _verifier(publisher)
    from model_signing._signing import signing

    try:
        signature = _read(kind, bundle)
        # The old-format warning of the key verifier goes to stdout: keep it out of --json.
        with contextlib.redirect_stdout(io.StringIO()):
            payload_type, payload = verifier._verify_signed_content(signature)
        if payload_type != PAYLOAD_TYPE:
            raise ValueError(f"the envelope holds {payload_type!r}, not an in-toto statement")
        signing.dsse_payload_to_manifest(json.loads(payload))
    except Exception as exc:  # the library's own errors, and cryptography's / pyOpenSSL's
        raise SignatureInvalid(f"does not verify: {_why(exc, publisher)}", origin=origin) from exc
    return VerifiedSignature(parse_statement(payload, origin=origin), _signer(kind, bundle, publisher))


def sign_model(
    root: Path,
    output: Path,
    *,
    key: Path,
    cert: Path | None = None,
    cert_chain: Sequence[Path] = (),
    shards: bool = False,
    piece_size: int | None = None,
) -> SignedModel:
    """Sign the files under ``root`` into ``output`` (written atomically); return what it signs.

    With ``key`` alone the signature is a key signature; with ``cert`` (the certificate of ``key``)
    and ``cert_chain`` (the certificates up to a root) a certificate signature. ``shards``: one
    digest per ``piece_size`` bytes of every file (dsmirror's pieces, default 8 MiB), else one per
    file. Git files, dsmirror's private folder, ``model.sig`` and ``output`` itself are left out, and
    listed as left out, so that the library's verifier skips them too.
    """
    import model_signing

    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    if cert_chain and cert is None:
        raise UsageError("--cert-chain needs --cert (the signing certificate)")
    if piece_size is not None and not shards:
        raise UsageError("--piece-size is the shard size: give it with --shards")
    size = piece_size or 8 << 20
    if not (MIN_PIECE_SIZE <= size <= MAX_PIECE_SIZE and size & (size - 1) == 0):
        raise UsageError(f"piece size {size} is not a power of two between 16 KiB and 1 GiB")
    # model.sig always: a pull writes the signature there, next to the files it signs.
    ignored = [PRIVATE_DIR, SIGNATURE_NAME]
    with contextlib.suppress(ValueError):
        ignored.append(output.resolve().relative_to(root.resolve()).as_posix())
    hashing = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    if shards:
        hashing.use_shard_serialization(shard_size=size)
    hashing.set_ignored_paths(paths=ignored, ignore_git_paths=True)
    config = model_signing.signing.Config().set_hashing_config(hashing)  # type: ignore[no-untyped-call]
    try:
        if cert is None:
            config.use_elliptic_key_signer(private_key=key)
        else:
            config.use_certificate_signer(
                private_key=key, signing_certificate=cert, certificate_chain=cert_chain
            )
    except OSError as exc:
        raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:  # not an EC key, encrypted, the certificate of another key
        raise InputError(f"cannot sign with {key}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="dsmirror-sign-") as tmp:
        written = Path(tmp) / SIGNATURE_NAME
        try:
            config.sign(root, written)
        except OSError as exc:
            raise InputError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        except ValueError as exc:  # a symlink in the folder, ...
            raise InputError(f"cannot sign {root}: {exc}") from exc
        bundle = written.read_bytes()
    atomic_write_bytes(output, bundle)
    return parse_statement(bundle_statement(bundle, origin=str(output)), origin=str(output))
