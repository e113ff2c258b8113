"""``anonymize run --previous-manifest``: key rotation and pseudonym remaps only on request.

Every run here is the real command line (``privtrain.platform.cli.main``) on the real
COMPAS file, with a pseudonym column, real keys and a real signing certificate.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faker
import numpy as np
import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from privtrain.anonymize.continuity import FIRST_PSEUDONYM_SCHEME
from privtrain.anonymize.keys import generate_key, load_key
from privtrain.anonymize.manifest import sign_manifest
from privtrain.anonymize.operators import pseudonym
from privtrain.anonymize.policy import load_policy
from privtrain.datasets import fetch_compas
from privtrain.datasets.image_arrays import encode_image_arrays
from privtrain.datasets.pack_images import image_manifest
from privtrain.platform.cli import main

from .conftest import make_signer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compas" / "policy.toml"


@dataclass(frozen=True)
class Release:
    folder: Path
    policy: Path
    plain_policy: Path
    key: Path
    signer: tuple[Path, Path]
    output: Path
    manifest: Path


def _manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def _run(
    rel: Release, out: Path, *extra: str, key: Path | None = None, policy: Path | None = None
) -> int:
    argv = ["anonymize", "run", str(fetch_compas()), "--policy", str(policy or rel.policy)]
    argv += ["--key", str(key or rel.key), "--out", str(out)]
    argv += ["--signing-key", str(rel.signer[0]), "--signing-cert", str(rel.signer[1]), *extra]
    return main(argv)


def _resigned(rel: Release, name: str, **changes: Any) -> Path:
    """A copy of the first release's manifest with ``changes``, signed again by its owner."""
    envelope = json.loads(rel.manifest.read_text(encoding="utf-8"))
    manifest = envelope["manifest"] | changes
    path = rel.folder / name
    signer_key, signer_cert = (p.read_bytes() for p in rel.signer)
    path.write_bytes(sign_manifest(manifest, signer_key, signer_cert))
    return path


def _manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_manifest_path(out).read_text(encoding="utf-8"))["manifest"]
    return data


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The first release: COMPAS with full names pseudonymized and ids tokenized."""
    folder = tmp_path_factory.mktemp("continuity")
    plain = EXAMPLE.read_text(encoding="utf-8")
    assert '[columns.name]\noperator = "hmac"' in plain
    policy = folder / "policy.toml"
    policy.write_text(
        plain.replace(
            '[columns.name]\noperator = "hmac"',
            '[columns.name]\noperator = "pseudonym"\nfaker = "name"',
        ),
        encoding="utf-8",
    )
    key = folder / "owner.hmac.key"
    generate_key(key)
    rel = Release(folder, policy, EXAMPLE, key, make_signer(folder), folder / "r1.parquet",
                  folder / "r1.parquet.manifest.json")  # fmt: skip
    assert _run(rel, rel.output) == 0
    return rel


def _refused(capsys: pytest.CaptureFixture[str], out: Path, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2
    assert not out.exists() and not _manifest_path(out).exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_same_key_and_faker_continue_with_identical_tokens_and_pseudonyms(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    """C-A01 across runs: a continued release joins the earlier one row for row."""
    out = release.folder / "same.parquet"
    assert _run(release, out, "--previous-manifest", str(release.manifest)) == 0
    assert "same key and pseudonyms" in capsys.readouterr().out
    before, after = pd.read_parquet(release.output), pd.read_parquet(out)
    assert after["id"].tolist() == before["id"].tolist()
    assert after["name"].tolist() == before["name"].tolist()
    manifest = _manifest(out)
    assert manifest["pseudonym_scheme"] == pseudonym.SCHEME
    assert len(manifest["previous_manifest_sha256"]) == 64
    assert "rotated_from_key_id" not in manifest and "remapped_from" not in manifest


def test_other_key_is_refused_naming_both_key_ids(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    new_key = release.folder / "refused.hmac.key"
    new_id = generate_key(new_key).key_id
    out = release.folder / "refused-key.parquet"
    rc = _run(release, out, "--previous-manifest", str(release.manifest), key=new_key)
    line = _refused(capsys, out, rc)
    assert load_key(release.key).key_id in line and new_id in line
    assert "would not match the earlier file" in line and "--rotate-key" in line


def test_rotate_key_rekeys_and_records_the_old_key_id(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    new_key = release.folder / "rotated.hmac.key"
    new_id = generate_key(new_key).key_id
    out = release.folder / "rotated.parquet"
    previous = ["--previous-manifest", str(release.manifest)]
    assert _run(release, out, *previous, "--rotate-key", key=new_key) == 0
    old_id = load_key(release.key).key_id
    assert f"key rotated from {old_id}" in capsys.readouterr().out
    manifest = _manifest(out)
    assert (manifest["key_id"], manifest["rotated_from_key_id"]) == (new_id, old_id)
    before, after = pd.read_parquet(release.output), pd.read_parquet(out)
    assert len(after) == len(before)
    assert not set(after["id"]) & set(before["id"])  # every token re-keyed
    rc = main(["anonymize", "verify", str(out), "--manifest", str(_manifest_path(out))])
    assert rc == 0


def test_other_faker_version_is_refused_naming_both_versions(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = _resigned(release, "faker39.manifest.json", faker_version="39.0.0")
    out = release.folder / "refused-faker.parquet"
    line = _refused(capsys, out, _run(release, out, "--previous-manifest", str(earlier)))
    assert f"faker_version 39.0.0 -> {faker.VERSION}" in line and "--remap" in line


def test_remap_accepts_new_pseudonyms_and_records_the_earlier_generator(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = _resigned(
        release, "old-scheme.manifest.json", faker_version="39.0.0", faker_locale="de_DE",
        pseudonym_scheme="privtrain/pseudonym/v0",
    )  # fmt: skip
    out = release.folder / "remapped.parquet"
    assert _run(release, out, "--previous-manifest", str(earlier), "--remap") == 0
    assert "pseudonyms remapped from Faker 39.0.0 de_DE" in capsys.readouterr().out
    manifest = _manifest(out)
    assert manifest["remapped_from"] == {
        "faker_version": "39.0.0",
        "faker_locale": "de_DE",
        "pseudonym_scheme": "privtrain/pseudonym/v0",
    }
    assert manifest["faker_version"] == faker.VERSION
    assert "rotated_from_key_id" not in manifest  # same key: tokens still join
    assert pd.read_parquet(out)["id"].tolist() == pd.read_parquet(release.output)["id"].tolist()


def test_faker_change_needs_no_remap_without_pseudonym_columns(release: Release) -> None:
    """Faker only matters to pseudonyms: an hmac-only policy continues and records no remap."""
    earlier = _resigned(release, "faker39-plain.manifest.json", faker_version="39.0.0")
    out = release.folder / "plain.parquet"
    plain = load_policy(release.plain_policy)
    assert all(c.operator != "pseudonym" for c in plain.columns.values())
    previous = ["--previous-manifest", str(earlier)]
    assert _run(release, out, *previous, policy=release.plain_policy) == 0
    assert "remapped_from" not in _manifest(out)


def test_edited_earlier_manifest_is_refused_by_its_signature(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    envelope = json.loads(release.manifest.read_text(encoding="utf-8"))
    envelope["manifest"]["key_id"] = "0" * 16
    forged = release.folder / "forged.manifest.json"
    forged.write_text(json.dumps(envelope), encoding="utf-8")
    out = release.folder / "forged.parquet"
    line = _refused(capsys, out, _run(release, out, "--previous-manifest", str(forged)))
    assert "signature does not verify" in line


def test_rotate_key_without_previous_manifest_is_refused(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    out = release.folder / "no-previous.parquet"
    line = _refused(capsys, out, _run(release, out, "--rotate-key"))
    assert "--rotate-key needs --previous-manifest" in line


def test_earlier_manifest_is_never_overwritten(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    before = release.manifest.read_bytes()
    rc = _run(release, release.output, "--previous-manifest", str(release.manifest))
    assert rc == 2 and "would overwrite" in capsys.readouterr().err
    assert release.manifest.read_bytes() == before


def test_manifest_from_before_pseudonym_scheme_counts_as_the_first_scheme(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    """An earlier manifest without the field was made with the first derivation."""
    envelope = json.loads(release.manifest.read_text(encoding="utf-8"))
    legacy = {k: v for k, v in envelope["manifest"].items() if k != "pseudonym_scheme"}
    path = release.folder / "legacy.manifest.json"
    path.write_bytes(sign_manifest(legacy, *(p.read_bytes() for p in release.signer)))
    out = release.folder / "after-legacy.parquet"
    rc = _run(release, out, "--previous-manifest", str(path))
    if pseudonym.SCHEME == FIRST_PSEUDONYM_SCHEME:
        assert rc == 0
    else:
        line = _refused(capsys, out, rc)
        assert f"pseudonym_scheme {FIRST_PSEUDONYM_SCHEME} -> {pseudonym.SCHEME}" in line


def test_image_manifest_is_refused_as_not_a_tables(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    """A packed image dataset's signed manifest cannot vouch for a table's continuity."""
    data = encode_image_arrays(
        np.zeros((4, 1, 2, 2), dtype=np.float32), np.array([0, 1, 0, 1], dtype=np.int64),
        np.array([0, 0, 0, 1], dtype=np.uint8),
    )
    manifest = image_manifest("images.npz", data, 4, (1, 2, 2), (0, 1))
    path = release.folder / "images.safetensors.manifest.json"
    path.write_bytes(sign_manifest(manifest, *(p.read_bytes() for p in release.signer)))
    out = release.folder / "after-image.parquet"
    line = _refused(capsys, out, _run(release, out, "--previous-manifest", str(path)))
    assert f"{path}: is an image_array manifest" in line and "not an anonymized table's" in line


def _fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


def test_earlier_manifest_signed_by_another_key_is_refused_naming_both_certificates(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy re-signed by a stranger's certificate, with the key id changed to this run's
    key, cannot become the earlier link of a rotation chain."""
    new_key = release.folder / "stranger-run.hmac.key"
    new_id = generate_key(new_key).key_id
    envelope = json.loads(release.manifest.read_text(encoding="utf-8"))
    stranger = make_signer(release.folder, name="stranger")
    forged = release.folder / "stranger.manifest.json"
    forged.write_bytes(
        sign_manifest(envelope["manifest"] | {"key_id": new_id[::-1]},
                      *(p.read_bytes() for p in stranger))  # fmt: skip
    )
    out = release.folder / "stranger.parquet"
    argv = ["--previous-manifest", str(forged), "--rotate-key"]
    line = _refused(capsys, out, _run(release, out, *argv, key=new_key))
    assert _fingerprint(stranger[1]) in line and _fingerprint(release.signer[1]) in line
    assert "re-sign the earlier manifest" in line and "omit --previous-manifest" in line


def test_renewed_certificate_with_the_same_key_continues(release: Release) -> None:
    """The owner's certificate renewed (new serial, new dates) over the same key is the
    same signer: the earlier release continues."""
    key = serialization.load_pem_private_key(release.signer[0].read_bytes(), password=None)
    old = x509.load_pem_x509_certificate(release.signer[1].read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    renewed = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(old.issuer)
        .public_key(old.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert = release.folder / "owner-renewed.pem"
    cert.write_bytes(renewed.public_bytes(serialization.Encoding.PEM))
    assert _fingerprint(cert) != _fingerprint(release.signer[1])
    out = release.folder / "renewed.parquet"
    argv = ["anonymize", "run", str(fetch_compas()), "--policy", str(release.policy)]
    argv += ["--key", str(release.key), "--out", str(out), "--signing-key", str(release.signer[0])]
    argv += ["--signing-cert", str(cert), "--previous-manifest", str(release.manifest)]
    assert main(argv) == 0
    assert _manifest(out)["previous_manifest_sha256"] == hashlib.sha256(
        release.manifest.read_bytes()
    ).hexdigest()


def test_another_pseudonym_store_is_refused_and_remap_records_the_earlier_one(
    release: Release, capsys: pytest.CaptureFixture[str]
) -> None:
    """The earlier release's pseudonyms were claimed in the store kept with the key; a
    run on another store (a lost, stale or forked one) would draw afresh, so it is
    refused unless --remap accepts new pseudonyms."""
    record = _manifest(release.output)["pseudonym_store"]
    assert set(record) == {"id", "generation", "token"} and record["generation"] == 1
    elsewhere = release.folder / "elsewhere.pseudonyms.sqlite"
    out = release.folder / "other-store.parquet"
    previous = ["--previous-manifest", str(release.manifest)]
    rc = _run(release, out, *previous, "--pseudonym-store", str(elsewhere))
    line = _refused(capsys, out, rc)
    assert f"pseudonym store {record['id']} (generation 1)" in line
    assert "--pseudonym-store" in line and "--remap" in line
    assert not elsewhere.exists()
    rc = _run(release, out, *previous, "--pseudonym-store", str(elsewhere), "--remap")
    assert rc == 0
    manifest = _manifest(out)
    assert manifest["remapped_from"]["pseudonym_store"] == record
    assert manifest["pseudonym_store"]["id"] != record["id"]
