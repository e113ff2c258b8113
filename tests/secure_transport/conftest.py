"""Shared fixtures for secure_transport: real PKIs on disk and real gRPC servers on 127.0.0.1.

The product only ever issues correct certificates; the deliberately broken
ones some tests need (an IP in the CN only, a SAN naming another host) are
built here by :func:`raw_leaf`, straight from ``x509.CertificateBuilder``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from privtrain.errors import PrivtrainError
from privtrain.secure_transport.channels import ClientTLS, ServerTLS, create_channel, create_server
from privtrain.secure_transport.issuing import ClientBundle, issue_bundle
from privtrain.secure_transport.pki import PkiLayout, init_pki, load_certificate, load_private_key
from privtrain.secure_transport.roles import Role, peer_identity

WHOAMI_METHOD = "/privtrain.test.Whoami/Get"
RPC_TIMEOUT_S = 5.0


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """Our deployment's PKI, written by init_pki with the default server names."""
    return init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """A second, unrelated PKI: its certificates must never be trusted by ours."""
    return init_pki(tmp_path_factory.mktemp("other-pki"))


PEOPLE = {"data-owner": "alice", "trainer": "bob", "admin": "carol"}


def _bundles(layout: PkiLayout, folder: Path) -> dict[str, ClientBundle]:
    bundles = {role: ClientBundle(folder / name) for role, name in PEOPLE.items()}
    for role, bundle in bundles.items():
        issue_bundle(layout, role=Role(role), name=PEOPLE[role], out=bundle.directory)
    return bundles


@pytest.fixture(scope="session")
def bundles(pki: PkiLayout, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientBundle]:
    """One person per client role (alice, bob, carol) with a bundle issued by our CA."""
    return _bundles(pki, tmp_path_factory.mktemp("people"))


@pytest.fixture(scope="session")
def other_bundles(other_pki: PkiLayout,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientBundle]:
    """The same people, issued by the unrelated CA."""
    return _bundles(other_pki, tmp_path_factory.mktemp("other-people"))


@pytest.fixture(scope="session")
def ca(pki: PkiLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Our CA certificate and key, loaded from disk."""
    key = load_private_key(pki.ca_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return load_certificate(pki.ca_cert), key


def raw_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    common_name: str,
    sans: list[x509.GeneralName] | None,
) -> tuple[bytes, bytes]:
    """Issue a TLS server leaf with exactly the given SAN entries (``None``: no SAN at all).

    Returns ``(cert_pem, key_pem)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


BAD_SERVER_CERTS: dict[str, tuple[str, list[x509.GeneralName] | None]] = {
    "ip-in-cn-no-san": ("127.0.0.1", None),
    "san-names-other-host": ("training-01.test", [x509.DNSName("training-01.test")]),
}
"""C-X01 misissued server certificates: (common name, SAN entries)."""


@pytest.fixture(params=sorted(BAD_SERVER_CERTS))
def bad_server_tls(
    request: pytest.FixtureRequest,
    pki: PkiLayout,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> ServerTLS:
    """A server TLS bundle from our CA whose certificate does not cover 127.0.0.1."""
    common_name, sans = BAD_SERVER_CERTS[request.param]
    cert_pem, key_pem = raw_leaf(*ca, common_name=common_name, sans=sans)
    return ServerTLS(ca_pem=pki.ca_cert.read_bytes(), cert_pem=cert_pem, key_pem=key_pem)


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    try:
        return peer_identity(context).role.value.encode()
    except PrivtrainError as exc:
        context.abort(getattr(grpc.StatusCode, exc.grpc_code), str(exc))
        raise  # abort raises; this keeps type checkers aware that nothing is returned


def register_test_services(server: grpc.Server) -> None:
    """Register the standard health service and a Whoami method returning the caller's role."""
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "privtrain.test.Whoami", {"Get": grpc.unary_unary_rpc_method_handler(_whoami)}
            ),
        )
    )


@pytest.fixture
def serve() -> Iterator[Callable[..., int]]:
    """Start servers built by create_server (tests/services registered); stop them at teardown."""
    servers: list[grpc.Server] = []

    def _serve(tls: ServerTLS, host: str = "127.0.0.1", **kwargs: object) -> int:
        server, port = create_server(tls, host, 0, **kwargs)  # type: ignore[arg-type]
        register_test_services(server)
        server.start()
        servers.append(server)
        return port

    yield _serve
    for server in servers:
        server.stop(grace=None)


@pytest.fixture
def serve_raw() -> Iterator[Callable[[ServerTLS], int]]:
    """Start a server with grpc's own credentials, bypassing create_server's name check."""
    servers: list[grpc.Server] = []

    def _serve(tls: ServerTLS) -> int:
        from concurrent.futures import ThreadPoolExecutor

        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        credentials = grpc.ssl_server_credentials(
            [(tls.key_pem, tls.cert_pem)], root_certificates=tls.ca_pem, require_client_auth=True
        )
        port: int = server.add_secure_port("127.0.0.1:0", credentials)
        register_test_services(server)
        server.start()
        servers.append(server)
        return port

    yield _serve
    for server in servers:
        server.stop(grace=None)


def health_status(target: str, tls: ClientTLS) -> int:
    """One grpc.health.v1 Check over a fresh mTLS channel; raises grpc.RpcError on failure."""
    with create_channel(target, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
        status: int = response.status
        return status


def whoami(target: str, tls: ClientTLS) -> str:
    """Call the Whoami test method and return the role the server saw."""
    with create_channel(target, tls) as channel:
        answer = channel.unary_unary(WHOAMI_METHOD)(b"", timeout=RPC_TIMEOUT_S)
        return bytes(answer).decode()


def failure_code(call: Callable[[], object]) -> grpc.StatusCode:
    """Run ``call``, which must fail with a gRPC error, and return its status code."""
    with pytest.raises(grpc.RpcError) as excinfo:
        call()
    code = excinfo.value.code()
    assert isinstance(code, grpc.StatusCode)
    return code


SERVING = int(health_pb2.HealthCheckResponse.SERVING)


# Helpers reach test modules as fixtures: importing from conftest breaks as soon as
# another test folder has its own conftest module.
@pytest.fixture(name="raw_leaf")
def raw_leaf_fixture() -> Callable[..., tuple[bytes, bytes]]:
    """The :func:`raw_leaf` builder for deliberately misissued certificates."""
    return raw_leaf


@pytest.fixture(name="health_status")
def health_status_fixture() -> Callable[[str, ClientTLS], int]:
    """The :func:`health_status` probe."""
    return health_status


@pytest.fixture(name="whoami")
def whoami_fixture() -> Callable[[str, ClientTLS], str]:
    """The :func:`whoami` probe."""
    return whoami


@pytest.fixture(name="failure_code")
def failure_code_fixture() -> Callable[[Callable[[], object]], grpc.StatusCode]:
    """The :func:`failure_code` helper."""
    return failure_code
