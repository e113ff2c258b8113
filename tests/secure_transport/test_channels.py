"""Real mTLS gRPC servers and channels on 127.0.0.1: success, refusals, limits, diagnosis.

Case C-X01 (server names) is pinned here end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2

from privtrain.errors import InvalidInput
from privtrain.secure_transport.channels import (
    FRAMING_OVERHEAD_BYTES,
    ClientTLS,
    ServerTLS,
    TransportLimits,
    create_channel,
    create_server,
    diagnose_connection,
    grpc_options,
)
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pki import PkiLayout

SERVING = health_pb2.HealthCheckResponse.SERVING
Serve = Callable[..., int]
Probe = Callable[[str, ClientTLS], int]
FailureCode = Callable[[Callable[[], object]], grpc.StatusCode]


def test_client_dialing_127_0_0_1_gets_serving(
    pki: PkiLayout, serve: Serve, health_status: Probe, bundles: dict[str, ClientBundle]
) -> None:
    """C-X01: a trainer dialing 127.0.0.1 with init_pki certificates completes mTLS; health says
    SERVING.
    """
    port = serve(ServerTLS.from_layout(pki))
    assert health_status(f"127.0.0.1:{port}", ClientTLS.from_bundle(bundles["trainer"])) == SERVING


def test_client_dialing_localhost_name_gets_serving(
    pki: PkiLayout, serve: Serve, health_status: Probe, bundles: dict[str, ClientBundle]
) -> None:
    """The DNS SAN localhost works too, for a server bound on 127.0.0.1."""
    port = serve(ServerTLS.from_layout(pki))
    assert health_status(f"localhost:{port}", ClientTLS.from_bundle(bundles["admin"])) == SERVING


def test_client_without_certificate_is_refused(
    pki: PkiLayout, serve: Serve, health_status: Probe, failure_code: FailureCode
) -> None:
    """mTLS only: a client presenting no certificate fails with UNAVAILABLE."""
    port = serve(ServerTLS.from_layout(pki))
    anonymous = ClientTLS(ca_pem=pki.ca_cert.read_bytes())
    code = failure_code(lambda: health_status(f"127.0.0.1:{port}", anonymous))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_refused(
    pki: PkiLayout,
    other_pki: PkiLayout,
    serve: Serve,
    health_status: Probe,
    failure_code: FailureCode, other_bundles: dict[str, ClientBundle]
) -> None:
    """A client certificate from a foreign CA fails with UNAVAILABLE even if it trusts our CA."""
    port = serve(ServerTLS.from_layout(pki))
    foreign = ClientTLS.from_bundle(other_bundles["trainer"])
    stranger = ClientTLS(pki.ca_cert.read_bytes(), foreign.cert_pem, foreign.key_pem)
    code = failure_code(lambda: health_status(f"127.0.0.1:{port}", stranger))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_server_certificate_from_another_ca_is_refused(
    pki: PkiLayout,
    other_pki: PkiLayout,
    serve: Serve,
    health_status: Probe,
    failure_code: FailureCode, bundles: dict[str, ClientBundle]
) -> None:
    """Our client refuses a server whose certificate chains to a foreign CA: UNAVAILABLE."""
    foreign = ServerTLS.from_layout(other_pki)
    # The impostor trusts our CA, so only our client's verification can stop the call.
    port = serve(ServerTLS(pki.ca_cert.read_bytes(), foreign.cert_pem, foreign.key_pem))
    code = failure_code(
        lambda: health_status(f"127.0.0.1:{port}", ClientTLS.from_bundle(bundles["trainer"]))
    )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_diagnose_explains_server_cert_not_covering_ip(
    pki: PkiLayout,
    bad_server_tls: ServerTLS,
    serve_raw: Callable[[ServerTLS], int],
    health_status: Probe,
    failure_code: FailureCode, bundles: dict[str, ClientBundle]
) -> None:
    """C-X01: a server forced onto a certificate not covering 127.0.0.1 fails every call, and
    diagnose_connection names 127.0.0.1 and the presented names.

    With a wrong DNS SAN the handshake fails (UNAVAILABLE). With no SAN at all, grpcio 1.85
    completes the handshake and then refuses the call in its per-call host check
    ("call host does not match SSL server name"), which surfaces as UNAUTHENTICATED; both
    codes therefore deserve a diagnose_connection in the CLI.
    """
    port = serve_raw(bad_server_tls)
    client = ClientTLS.from_bundle(bundles["trainer"])
    has_san = b"training-01.test" in _san_dump(bad_server_tls.cert_pem)
    expected = grpc.StatusCode.UNAVAILABLE if has_san else grpc.StatusCode.UNAUTHENTICATED
    assert failure_code(lambda: health_status(f"127.0.0.1:{port}", client)) == expected
    message = diagnose_connection("127.0.0.1", port, client)
    assert message is not None
    assert message.startswith("server certificate does not cover 127.0.0.1: it presents CN=")
    assert ("SAN DNS:training-01.test" in message) or ("CN=127.0.0.1, no SAN" in message)


def test_diagnose_names_foreign_issuer(pki: PkiLayout, other_pki: PkiLayout, serve: Serve,
                                       bundles: dict[str, ClientBundle]) -> None:
    """diagnose_connection says the server certificate is not from our CA and names its issuer."""
    foreign = ServerTLS.from_layout(other_pki)
    port = serve(ServerTLS(pki.ca_cert.read_bytes(), foreign.cert_pem, foreign.key_pem))
    message = diagnose_connection("127.0.0.1", port, ClientTLS.from_bundle(bundles["trainer"]))
    assert message is not None and "not issued by our CA" in message and "privtrain CA" in message


def test_diagnose_returns_none_for_a_healthy_server(pki: PkiLayout, serve: Serve,
                                                    bundles: dict[str, ClientBundle]) -> None:
    """A correctly configured server gets no complaint."""
    port = serve(ServerTLS.from_layout(pki))
    assert diagnose_connection("127.0.0.1", port, ClientTLS.from_bundle(bundles["trainer"])) is None


def test_diagnose_never_raises_on_connection_errors(pki: PkiLayout) -> None:
    """With nothing listening, diagnose_connection returns a message rather than raising."""
    server, port = create_server(ServerTLS.from_layout(pki))
    server.stop(grace=None)  # bound but never started: nothing accepts on it now
    message = diagnose_connection(
        "127.0.0.1", port, ClientTLS(ca_pem=pki.ca_cert.read_bytes()), 1.0
    )
    assert message is not None and message.startswith(
        "could not open a TLS connection to 127.0.0.1"
    )


def test_insecure_dev_warns_and_identifies_nobody(
    pki: PkiLayout, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """insecure_dev=True serves plaintext with a loud warning; role checks then answer
    UNAUTHENTICATED.
    """
    with caplog.at_level(logging.WARNING, logger="privtrain.secure_transport.channels"):
        port = serve(ServerTLS.from_layout(pki), insecure_dev=True)
    assert any("INSECURE" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/privtrain.test.Whoami/Get")(b"", timeout=5.0)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_message_size_limit_is_shared_by_server_and_client(
    pki: PkiLayout, serve: Serve, bundles: dict[str, ClientBundle]
) -> None:
    """grpc_options gives both sides the same cap: a request over max_message_bytes is
    RESOURCE_EXHAUSTED.
    """
    limits = TransportLimits(max_message_bytes=256 * 1024, chunk_bytes=128 * 1024)
    port = serve(ServerTLS.from_layout(pki), limits=limits)
    client = ClientTLS.from_bundle(bundles["trainer"])
    with (
        create_channel(f"127.0.0.1:{port}", client, limits=limits) as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        channel.unary_unary("/privtrain.test.Whoami/Get")(b"x" * (300 * 1024), timeout=5.0)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_options_carry_sizes_and_keepalive() -> None:
    """grpc_options sets send/receive caps (bytes) and keepalive (ms) consistently for both ends."""
    options = dict(grpc_options(TransportLimits()))
    assert options["grpc.max_send_message_length"] == 4 * 1024 * 1024
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 30_000


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"chunk_bytes": 4 * 1024 * 1024}, "lower chunk_bytes to at most 4128768"),
        ({"max_message_bytes": 0}, "max_message_bytes must be between"),
        ({"chunk_bytes": 0}, "chunk_bytes must be positive"),
        ({"keepalive_time_s": 0}, "must be positive seconds"),
        ({"keepalive_timeout_s": 30.0}, "must be shorter than keepalive_time_s"),
        ({"max_workers": 0}, "max_workers must be at least 1"),
    ],
)
def test_contradictory_limits_raise_with_a_fix(kwargs: dict[str, float], fragment: str) -> None:
    """TransportLimits rejects contradictions with an InvalidInput saying what to change."""
    with pytest.raises(InvalidInput, match=fragment):
        TransportLimits(**kwargs)  # type: ignore[arg-type]


def test_chunk_exactly_fitting_with_overhead_is_accepted() -> None:
    """The boundary case chunk_bytes + 64 KiB == max_message_bytes is allowed."""
    limits = TransportLimits(max_message_bytes=FRAMING_OVERHEAD_BYTES + 1024, chunk_bytes=1024)
    assert limits.chunk_bytes == 1024


def test_client_tls_from_a_folder_without_a_bundle_says_how_to_get_one(pki: PkiLayout) -> None:
    """The operator's folder is no client bundle: no person's key is kept there."""
    with pytest.raises(InvalidInput, match="not a client bundle .*certs issue"):
        ClientTLS.from_bundle(ClientBundle(pki.directory))


def _san_dump(cert_pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return b""
    return repr(list(san)).encode()
