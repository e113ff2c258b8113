"""The signed anonymization manifest that travels with every anonymized dataset.

The manifest says what was done (policy hash, k, levels, suppression, key id,
Faker version, pseudonym scheme and pseudonym store generation, and any key rotation or
pseudonym remap against an earlier release), which bytes it describes (``output_sha256``, ``output_bytes``)
and what a trainer may rely on (``columns``: the public domain of each output
column, derived from the policy; ``split``: the owner's train/test split, when the
policy declares one). A policy without quasi-identifiers claims no k:
``k_achieved`` is 0 and ``k_not_applicable`` says why. It is canonical JSON (sorted keys, no
whitespace, UTF-8), signed with the data owner's TLS private key (ECDSA P-256
with SHA-256, or Ed25519). The signed file is::

    {"manifest": {...}, "signature": "<base64>", "signature_algorithm": "ecdsa-p256-sha256",
     "signer_certificate": "-----BEGIN CERTIFICATE-----..."}

:func:`verify_manifest` checks structure, signature and (optionally) the data
bytes, but not *who* signed: the server compares ``signer_fingerprint_sha256``
with the uploading peer's verified mTLS certificate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from privtrain import bounded_json
from privtrain.anonymize.errors import ManifestError
from privtrain.datasets.image_manifest import TABLE_KIND, check_image_manifest_fields
from privtrain.errors import shown

MANIFEST_FORMAT = "privtrain-anonymization-manifest"
MANIFEST_VERSION = 1
ECDSA_P256 = "ecdsa-p256-sha256"
ED25519 = "ed25519"
MAX_MANIFEST_DEPTH = 16
"""Deepest nesting a manifest file may have (ours nest 5 levels: the file, the manifest, a
section such as ``columns`` or ``released_risk``, an entry, its values)."""

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "created_at": str,
    "tool_version": str,
    "policy_sha256": str,
    "input_rows": int,
    "output_rows": int,
    "rows_suppressed": int,
    "k_target": int,
    "k_achieved": int,
    "max_suppression": (int, float),
    "quasi_identifiers": list,
    "direct_identifiers": list,
    "generalization_levels": dict,
    "information_loss": dict,
    "key_id": str,
    "faker_version": str,
    "faker_locale": str,
    "output_sha256": str,
    "output_bytes": int,
    "columns": dict,
}

# Added later: absent from older manifests, which stay verifiable.
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {
    "pseudonym_scheme": str,
    "previous_manifest_sha256": str,
    "rotated_from_key_id": str,
    "remapped_from": dict,
    "input_sha256": str,
    "split": dict,
    "k_not_applicable": str,
    # What the release reveals beyond the declared QIs (privtrain.anonymize.released_risk);
    # with kept proxies of QIs, k_achieved and privacy_models count them and these keep
    # the declared-QI figures.
    "released_risk": dict,
    "proxy_quasi_identifiers": list,
    "k_declared": int,
    "privacy_models_declared": dict,
    "pseudonym_store": dict,
}


def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, separators ``(",", ":")``, no NaN/Infinity."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose signature (and, if checked, data) verified.

    Attributes
    ----------
    manifest : dict
        The manifest object.
    signer_certificate_pem : bytes
        The embedded signer certificate (PEM).
    signer_fingerprint_sha256 : str
        Hex SHA-256 of the certificate's DER encoding.
    """

    manifest: dict[str, Any]
    signer_certificate_pem: bytes
    signer_fingerprint_sha256: str


def _algorithm_of(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ManifestError(f"signing key curve {key.curve.name} is not supported (use P-256)")
        return ECDSA_P256
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    raise ManifestError(
        f"signing key type {type(key).__name__} is not supported (use ECDSA P-256 or Ed25519)"
    )


def check_manifest_fields(manifest: Any) -> None:
    """Raise ``ManifestError`` naming the first missing or mistyped field.

    ``REQUIRED_FIELDS`` must be present; ``OPTIONAL_FIELDS`` are type-checked when present.
    """
    if not isinstance(manifest, dict):
        raise ManifestError("manifest is not a JSON object")
    if manifest.get("kind", TABLE_KIND) != TABLE_KIND:
        check_image_manifest_fields(manifest)
        return
    for name, typ in (REQUIRED_FIELDS | OPTIONAL_FIELDS).items():
        if name not in manifest:
            if name in OPTIONAL_FIELDS:
                continue
            raise ManifestError(f"manifest missing field {name!r}")
        value = manifest[name]
        if isinstance(value, bool) or not isinstance(value, typ):
            raise ManifestError(
                f"manifest field {name!r} has the wrong type ({type(value).__name__})"
            )
    if manifest["format"] != MANIFEST_FORMAT or manifest["version"] != MANIFEST_VERSION:
        raise ManifestError(
            f"unsupported manifest format {shown(manifest['format'])} version "
            f"{shown(manifest['version'])}"
        )
    for name, domain in manifest["columns"].items():
        _check_domain(name, domain)
    split = manifest.get("split")
    if split is not None and not (
        isinstance(split, dict)
        and all(isinstance(split.get(k), str) and split[k] for k in ("column", "train", "test"))
    ):
        raise ManifestError('manifest split must be an object with non-empty "column", "train" '
                            'and "test" strings')


def _check_domain(name: str, domain: Any) -> None:
    """A column's public domain: an object with a string ``type``; a categorical one lists
    scalar ``values``, a numeric one has number (or null) bounds ``lower`` and ``upper``."""
    if not isinstance(domain, dict) or not isinstance(domain.get("type"), str):
        raise ManifestError(f"manifest column {shown(name)} must be an object with a string type")
    kind = domain["type"]
    if kind == "categorical":
        values = domain.get("values")
        if not isinstance(values, list) or not all(
                v is None or isinstance(v, str | int | float) for v in values):
            raise ManifestError(f"manifest column {shown(name)}: a categorical domain lists its "
                                "values (strings or numbers)")
    elif kind == "numeric":
        bounds = (domain.get("lower"), domain.get("upper"))
        if not all(b is None or isinstance(b, int | float) and not isinstance(b, bool)
                   for b in bounds):
            raise ManifestError(f"manifest column {shown(name)}: a numeric domain's bounds lower "
                                "and upper are numbers (or null)")


def sign_manifest(
    manifest: dict[str, Any], private_key_pem: bytes, certificate_pem: bytes
) -> bytes:
    """Sign a manifest with the data owner's key; return the signed file's bytes.

    Parameters
    ----------
    manifest : dict
        The manifest object (see ``REQUIRED_FIELDS``).
    private_key_pem : bytes
        Unencrypted PEM private key (PKCS#8 or traditional), ECDSA P-256 or Ed25519.
    certificate_pem : bytes
        The matching X.509 certificate, PEM.

    Returns
    -------
    bytes
        UTF-8 JSON (indented, for people; the signature covers the canonical manifest bytes).

    Raises
    ------
    ManifestError
        Malformed manifest, unreadable key or certificate, unsupported key type, or a
        certificate that does not belong to the key.
    """
    check_manifest_fields(manifest)
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"cannot read the signing key ({exc})") from None
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as exc:
        raise ManifestError(f"cannot read the signing certificate ({exc})") from None
    algorithm = _algorithm_of(key)
    raw_pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, raw_pub) != cert.public_key().public_bytes(der, raw_pub):
        raise ManifestError("the signing certificate does not belong to the signing key")
    payload = canonical_json(manifest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        signature = key.sign(payload)
    envelope = {
        "manifest": manifest,
        "signature": base64.b64encode(signature).decode("ascii"),
        "signature_algorithm": algorithm,
        "signer_certificate": cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    }
    return (json.dumps(envelope, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(
        "utf-8"
    )


def verify_manifest(manifest_file_bytes: bytes, data: bytes | None = None) -> VerifiedManifest:
    """Check a signed manifest file, and the data it describes when given.

    Parameters
    ----------
    manifest_file_bytes : bytes
        Content of ``OUTPUT.manifest.json``.
    data : bytes | None
        Content of the Parquet file; when given, its SHA-256 and length must match.

    Returns
    -------
    VerifiedManifest

    Raises
    ------
    ManifestError
        Bad JSON (or JSON beyond :func:`privtrain.bounded_json.loads`' limits) or structure,
        unsupported algorithm, certificate/algorithm mismatch,
        "manifest signature does not verify", or an ``output_sha256`` / ``output_bytes``
        mismatch with the data.
    """
    try:
        envelope = bounded_json.loads(manifest_file_bytes, what="manifest file",
                                      max_depth=MAX_MANIFEST_DEPTH)
    except bounded_json.JSONLimitError as exc:
        raise ManifestError(str(exc)) from None
    if not isinstance(envelope, dict):
        raise ManifestError("manifest file is not a JSON object")
    for name in ("manifest", "signature", "signature_algorithm", "signer_certificate"):
        if name not in envelope:
            raise ManifestError(f"manifest file missing field {name!r}")
    manifest = envelope["manifest"]
    check_manifest_fields(manifest)
    algorithm = envelope["signature_algorithm"]
    if algorithm not in (ECDSA_P256, ED25519):
        raise ManifestError(f"unsupported signature_algorithm {algorithm!r}")
    try:
        cert_pem = str(envelope["signer_certificate"]).encode("ascii")
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ManifestError(f"cannot read signer_certificate ({exc})") from None
    try:
        signature = base64.b64decode(str(envelope["signature"]), validate=True)
    except binascii.Error:
        raise ManifestError("manifest signature is not valid base64") from None
    public_key = cert.public_key()
    try:
        cert_algorithm = _algorithm_of(public_key)
    except ManifestError as exc:
        raise ManifestError(f"signer_certificate: {exc}") from None
    if cert_algorithm != algorithm:
        raise ManifestError(
            f"signature_algorithm {algorithm!r} does not match the certificate's key "
            f"({cert_algorithm})"
        )
    payload = canonical_json(manifest)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        else:
            assert isinstance(public_key, ed25519.Ed25519PublicKey)
            public_key.verify(signature, payload)
    except InvalidSignature:
        raise ManifestError("manifest signature does not verify") from None
    if data is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != manifest["output_sha256"]:
            raise ManifestError(
                f"output_sha256 mismatch: manifest says {manifest['output_sha256']}, "
                f"data is {actual}"
            )
        if len(data) != manifest["output_bytes"]:
            raise ManifestError(
                f"output_bytes mismatch: manifest says {manifest['output_bytes']}, "
                f"data is {len(data)}"
            )
    return VerifiedManifest(
        manifest=manifest,
        signer_certificate_pem=cert_pem,
        signer_fingerprint_sha256=hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
    )
