"""Certificates issued under any local time zone are valid at once (C-X02)."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2

from privtrain.secure_transport.channels import ClientTLS, ServerTLS
from privtrain.secure_transport.pki import create_ca, issue_certificate
from privtrain.secure_transport.roles import Role


@pytest.fixture
def local_zone() -> Iterator[Callable[[str], None]]:
    """Switch the process's local time zone; restore TZ and re-run tzset afterwards."""
    saved = os.environ.get("TZ")

    def _set(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield _set
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


def _pem(obj: object) -> bytes:
    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return obj.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "UTC", "America/Los_Angeles"])
def test_fresh_certificates_handshake_immediately_in_any_time_zone(
    zone: str,
    local_zone: Callable[[str], None],
    serve: Callable[..., int],
    health_status: Callable[[str, ClientTLS], int],
) -> None:
    """C-X02: CA and leaves made under TZ=zone carry tz-aware UTC validity back-dated >= 4 minutes,
    and a handshake right after issuance succeeds."""
    local_zone(zone)
    assert time.tzname[0] != "" and (zone == "UTC" or time.timezone != 0)
    ca_cert, ca_key = create_ca()
    server, server_key = issue_certificate(
        ca_cert,
        ca_key,
        common_name="localhost",
        role=Role.SERVER,
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    client, client_key = issue_certificate(
        ca_cert, ca_key, common_name="tz-trainer", role=Role.TRAINER
    )
    now = dt.datetime.now(dt.UTC)
    for cert in (ca_cert, server, client):
        assert cert.not_valid_before_utc.tzinfo is dt.UTC
        assert cert.not_valid_before_utc <= now - dt.timedelta(minutes=4)
        assert cert.not_valid_after_utc > now + dt.timedelta(days=396)
    port = serve(ServerTLS(_pem(ca_cert), _pem(server), _pem(server_key)))
    status = health_status(
        f"127.0.0.1:{port}", ClientTLS(_pem(ca_cert), _pem(client), _pem(client_key))
    )
    assert status == health_pb2.HealthCheckResponse.SERVING
