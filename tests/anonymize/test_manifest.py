"""Signed manifest: canonical JSON, ECDSA P-256 / Ed25519 signature, data hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from privtrain.anonymize.errors import ManifestError
from privtrain.anonymize.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    canonical_json,
    sign_manifest,
    verify_manifest,
)

from .conftest import make_signer

DATA = b"PAR1 pretend parquet bytes PAR1"


def _manifest(data: bytes = DATA) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created_at": "2026-01-01T00:00:00Z",
        "tool_version": "0.1.0",
        "policy_sha256": "0" * 64,
        "input_rows": 10,
        "output_rows": 9,
        "rows_suppressed": 1,
        "k_target": 3,
        "k_achieved": 3,
        "max_suppression": 0.1,
        "quasi_identifiers": ["zip"],
        "direct_identifiers": ["email"],
        "generalization_levels": {"zip": 1},
        "information_loss": {"precision_loss": 0.5},
        "key_id": "0123456789abcdef",
        "faker_version": "40.0.0",
        "faker_locale": "en_US",
        "output_sha256": hashlib.sha256(data).hexdigest(),
        "output_bytes": len(data),
        "columns": {
            "email": {"type": "identifier"},
            "zip": {"type": "categorical", "values": ["0213*"]},
        },
    }


@pytest.mark.parametrize(
    ("kind", "algorithm"), [("ecdsa", "ecdsa-p256-sha256"), ("ed25519", "ed25519")]
)
def test_sign_verify_round_trip(tmp_path: Path, kind: str, algorithm: str) -> None:
    key, cert = make_signer(tmp_path, kind)
    signed = sign_manifest(_manifest(), key.read_bytes(), cert.read_bytes())
    envelope = json.loads(signed)
    assert envelope["signature_algorithm"] == algorithm
    v = verify_manifest(signed, DATA)
    assert v.manifest == _manifest()
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert v.signer_fingerprint_sha256 == hashlib.sha256(der).hexdigest()


def test_canonical_json_is_sorted_and_compact() -> None:
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()


def test_flipped_data_byte_is_refused(signer: tuple[Path, Path]) -> None:
    signed = sign_manifest(_manifest(), signer[0].read_bytes(), signer[1].read_bytes())
    bad = bytearray(DATA)
    bad[3] ^= 0x01
    with pytest.raises(
        ManifestError,
        match=r"^output_sha256 mismatch: manifest says [0-9a-f]{64}, data is [0-9a-f]{64}$",
    ):
        verify_manifest(signed, bytes(bad))


def test_edited_manifest_field_is_refused(signer: tuple[Path, Path]) -> None:
    signed = sign_manifest(_manifest(), signer[0].read_bytes(), signer[1].read_bytes())
    envelope = json.loads(signed)
    envelope["manifest"]["k_achieved"] = 50
    with pytest.raises(ManifestError, match=r"^manifest signature does not verify$"):
        verify_manifest(json.dumps(envelope).encode(), DATA)


def test_swapped_certificate_is_refused(tmp_path: Path, signer: tuple[Path, Path]) -> None:
    signed = sign_manifest(_manifest(), signer[0].read_bytes(), signer[1].read_bytes())
    _, mallory_cert = make_signer(tmp_path, "ecdsa", "mallory")
    envelope = json.loads(signed)
    envelope["signer_certificate"] = mallory_cert.read_text()
    with pytest.raises(ManifestError, match=r"^manifest signature does not verify$"):
        verify_manifest(json.dumps(envelope).encode(), DATA)


def test_missing_field_is_named(signer: tuple[Path, Path]) -> None:
    signed = sign_manifest(_manifest(), signer[0].read_bytes(), signer[1].read_bytes())
    envelope = json.loads(signed)
    del envelope["manifest"]["columns"]
    with pytest.raises(ManifestError, match=r"^manifest missing field 'columns'$"):
        verify_manifest(json.dumps(envelope).encode())
    manifest = _manifest()
    del manifest["key_id"]
    with pytest.raises(ManifestError, match=r"^manifest missing field 'key_id'$"):
        sign_manifest(manifest, signer[0].read_bytes(), signer[1].read_bytes())


def test_certificate_of_another_key_cannot_sign(tmp_path: Path, signer: tuple[Path, Path]) -> None:
    _, other_cert = make_signer(tmp_path, "ecdsa", "other")
    with pytest.raises(ManifestError, match="does not belong to the signing key"):
        sign_manifest(_manifest(), signer[0].read_bytes(), other_cert.read_bytes())


def test_continuity_fields_are_optional_but_typed(signer: tuple[Path, Path]) -> None:
    """A manifest from before pseudonym_scheme and rotation existed still verifies;
    a mistyped continuity field is named."""
    key, cert = signer[0].read_bytes(), signer[1].read_bytes()
    assert "pseudonym_scheme" not in _manifest()
    assert verify_manifest(sign_manifest(_manifest(), key, cert), DATA).manifest == _manifest()
    later = _manifest() | {
        "pseudonym_scheme": "privtrain/pseudonym/v1",
        "rotated_from_key_id": "fedcba9876543210",
        "remapped_from": {"faker_version": "39.0.0"},
    }
    assert verify_manifest(sign_manifest(later, key, cert), DATA).manifest == later
    with pytest.raises(ManifestError, match=r"^manifest field 'remapped_from' has the wrong type"):
        sign_manifest(_manifest() | {"remapped_from": "39.0.0"}, key, cert)
