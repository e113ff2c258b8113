"""Revocation: the per-call check on an already-open channel, and the published CRL (RFC 5280)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from privtrain.secure_transport.channels import ClientTLS, ServerTLS, create_channel
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pki import PkiLayout, load_certificate
from privtrain.secure_transport.revocation import (
    CRL_VALIDITY,
    RevocationInterceptor,
    build_crl,
    write_crl,
)
from privtrain.secure_transport.roles import serial_hex

WHOAMI = "/privtrain.test.Whoami/Get"


def test_a_call_on_an_open_channel_is_refused_once_the_certificate_is_revoked(
    pki: PkiLayout, bundles: dict[str, ClientBundle], serve: Callable[..., int],
) -> None:
    """The revocation list is asked on every call: the channel opened (and used) before the
    revocation gets UNAUTHENTICATED on its next call, naming the certificate; others go on."""
    revoked: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    interceptor = RevocationInterceptor(revoked.get,
                                        lambda method, cert, why: refused.append((method, why)))
    port = serve(ServerTLS.from_layout(pki), interceptors=[interceptor])
    bob = load_certificate(bundles["trainer"].cert)
    with create_channel(f"127.0.0.1:{port}", ClientTLS.from_bundle(bundles["trainer"])) as bobs, \
            create_channel(f"127.0.0.1:{port}", ClientTLS.from_bundle(bundles["admin"])) as carols:
        call, other = bobs.unary_unary(WHOAMI), carols.unary_unary(WHOAMI)
        assert call(b"", timeout=5) == b"trainer"
        revoked[serial_hex(bob)] = "at noon by carol"
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=5)
        assert other(b"", timeout=5) == b"admin"
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert f"certificate {serial_hex(bob)} of bob was revoked at noon by carol" in err.value.details()
    assert refused == [(WHOAMI, "at noon by carol")]


def test_the_crl_is_signed_by_the_ca_and_lists_the_revoked_serials(
    pki: PkiLayout, bundles: dict[str, ClientBundle],
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], tmp_path,
) -> None:
    bob = load_certificate(bundles["trainer"].cert)
    at = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    path = tmp_path / "crl.pem"
    write_crl(path, build_crl(*ca, [(serial_hex(bob), at)], number=2, now=at))
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert crl.is_signature_valid(ca[0].public_key())
    assert crl.issuer == ca[0].subject
    entry = crl.get_revoked_certificate_by_serial_number(bob.serial_number)
    assert entry is not None and entry.revocation_date_utc == at
    assert crl.get_revoked_certificate_by_serial_number(
        load_certificate(bundles["admin"].cert).serial_number) is None
    assert crl.next_update_utc - crl.last_update_utc == CRL_VALIDITY
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
