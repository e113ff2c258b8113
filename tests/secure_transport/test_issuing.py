"""People's bundles: exactly their key, their certificate and the CA certificate."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.secure_transport.issuing import (
    DEFAULT_DAYS,
    ClientBundle,
    check_person_name,
    issue_bundle,
)
from privtrain.secure_transport.pki import BACKDATE, PkiLayout, load_certificate
from privtrain.secure_transport.roles import Role, role_of


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_bundle_holds_the_persons_key_and_certificate_and_the_ca_certificate_only(
    pki: PkiLayout, tmp_path: Path
) -> None:
    bundle = ClientBundle(tmp_path / "erin")
    cert = issue_bundle(pki, role=Role.TRAINER, name="erin", out=bundle.directory)
    assert sorted(p.name for p in bundle.directory.iterdir()) == ["ca.pem", "client.key", "client.pem"]
    assert (_mode(bundle.directory), _mode(bundle.key), _mode(bundle.cert)) == (0o700, 0o600, 0o644)
    assert bundle.ca_cert.read_bytes() == pki.ca_cert.read_bytes()
    ca_key = pki.ca_key.read_bytes()
    assert all(path.read_bytes() != ca_key for path in bundle.files)
    assert load_certificate(bundle.cert) == cert
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "erin"
    assert role_of(cert) is Role.TRAINER
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=DEFAULT_DAYS) + BACKDATE


def test_days_set_the_lifetime(pki: PkiLayout, tmp_path: Path) -> None:
    cert = issue_bundle(pki, role=Role.ADMIN, name="frank", out=tmp_path / "f", days=2)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=2) + BACKDATE


@pytest.mark.parametrize("name", ["", "Bob", "bob smith", "-bob", "x" * 64, "ünal", "localhost"])
def test_names_that_cannot_name_a_person_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_person_name(name)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"role": Role.SERVER}, "people get one of the roles"),
    ({"days": 0}, "days must be between 1 and 397"),
    ({"days": 398}, "days must be between 1 and 397"),
])
def test_bad_requests_are_refused_before_anything_is_written(
    pki: PkiLayout, tmp_path: Path, kwargs: dict[str, object], fragment: str
) -> None:
    options: dict[str, object] = {"role": Role.TRAINER, "name": "gina", "out": tmp_path / "g"}
    options.update(kwargs)
    with pytest.raises(InvalidInput, match=fragment):
        issue_bundle(pki, **options)  # type: ignore[arg-type]
    assert not (tmp_path / "g").exists()


def test_a_bundle_never_goes_into_the_operators_folder(pki: PkiLayout) -> None:
    with pytest.raises(InvalidInput, match="inside the operator's folder"):
        issue_bundle(pki, role=Role.TRAINER, name="hal", out=pki.directory / "hal")


def test_an_existing_bundle_is_kept_unless_forced(pki: PkiLayout, tmp_path: Path) -> None:
    out = tmp_path / "ivy"
    first = issue_bundle(pki, role=Role.TRAINER, name="ivy", out=out)
    with pytest.raises(FailedPrecondition, match="--force"):
        issue_bundle(pki, role=Role.TRAINER, name="ivy", out=out)
    assert load_certificate(ClientBundle(out).cert) == first
    second = issue_bundle(pki, role=Role.TRAINER, name="ivy", out=out, overwrite=True)
    assert load_certificate(ClientBundle(out).cert) == second != first


def test_without_the_ca_key_nothing_is_issued(pki: PkiLayout, tmp_path: Path) -> None:
    """Where only the server's half of the folder is (no ca/ca.key), the message says where the
    CA key is kept."""
    server_only = PkiLayout(tmp_path / "server-copy")
    server_only.directory.mkdir()
    server_only.ca_cert.write_bytes(pki.ca_cert.read_bytes())
    with pytest.raises(InvalidInput, match="no CA key"):
        issue_bundle(server_only, role=Role.TRAINER, name="jo", out=tmp_path / "jo")
