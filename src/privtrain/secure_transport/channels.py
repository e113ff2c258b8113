"""The one place that builds gRPC servers and channels.

Server and client take their message-size and keepalive settings from the
same :class:`TransportLimits` through :func:`grpc_options`, so they cannot
disagree (a client pinging more often than the server permits gets a GOAWAY
``too_many_pings``; a message one side accepts and the other refuses fails
with ``RESOURCE_EXHAUSTED``). Every port is mutually authenticated TLS;
plaintext exists only behind an explicit ``insecure_dev`` flag.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.secure_transport.call_limits import CallLimiter, CallLimits, CallPools
from privtrain.secure_transport.diagnose import diagnose_connection
from privtrain.secure_transport.issuing import ClientBundle
from privtrain.secure_transport.pem_files import read_bytes
from privtrain.secure_transport.pki import PkiLayout
from privtrain.secure_transport.request_decoding import RequestDecoding
from privtrain.secure_transport.server_names import check_server_names

__all__ = [
    "FRAMING_OVERHEAD_BYTES",
    "ClientTLS",
    "ServerTLS",
    "TransportLimits",
    "create_channel",
    "create_server",
    "diagnose_connection",
    "grpc_options",
]

logger = logging.getLogger(__name__)

FRAMING_OVERHEAD_BYTES = 64 * 1024
"""Room left in a message beside one data chunk, for protobuf fields and the GCM tag (bytes)."""

_GRPC_INT_MAX = 2**31 - 1
QUEUED_CALLS_PER_THREAD = 8
"""Unary calls that may wait per handler thread before gRPC itself refuses more
(``maximum_concurrent_rpcs``, a backstop behind the per-caller limits)."""
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})


@dataclass(frozen=True)
class TransportLimits:
    """Message-size and keepalive settings shared by server and client.

    Attributes
    ----------
    max_message_bytes : int
        Largest gRPC message either side sends or accepts (bytes).
    chunk_bytes : int
        Payload bytes per message of a chunked stream (bytes); a chunk plus
        :data:`FRAMING_OVERHEAD_BYTES` must fit in ``max_message_bytes``.
    keepalive_time_s : float
        Interval between HTTP/2 keepalive pings on an idle connection (seconds).
    keepalive_timeout_s : float
        How long to wait for a ping acknowledgement before closing (seconds).
    max_workers : int
        Server threads for unary calls, i.e. unary calls served concurrently (streams and
        health checks are served on pools of their own: see
        :mod:`privtrain.secure_transport.call_limits`).

    Raises
    ------
    InvalidInput
        From ``__post_init__``, on a contradictory or out-of-range setting; the
        message says which value to change and to what.
    """

    max_message_bytes: int = 4 * 1024 * 1024
    chunk_bytes: int = 1024 * 1024
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    max_workers: int = 16

    def __post_init__(self) -> None:
        if not 0 < self.max_message_bytes <= _GRPC_INT_MAX:
            raise InvalidInput(
                f"max_message_bytes must be between 1 and {_GRPC_INT_MAX} bytes "
                f"(gRPC stores it as a 32-bit int), got {self.max_message_bytes}"
            )
        if self.chunk_bytes <= 0:
            raise InvalidInput(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        if self.chunk_bytes + FRAMING_OVERHEAD_BYTES > self.max_message_bytes:
            raise InvalidInput(
                f"chunk_bytes ({self.chunk_bytes}) plus {FRAMING_OVERHEAD_BYTES} bytes of framing "
                f"overhead does not fit in max_message_bytes ({self.max_message_bytes}): lower "
                f"chunk_bytes to at most {self.max_message_bytes - FRAMING_OVERHEAD_BYTES} or "
                f"raise "
                f"max_message_bytes to at least {self.chunk_bytes + FRAMING_OVERHEAD_BYTES}"
            )
        if not self.keepalive_time_s > 0 or not self.keepalive_timeout_s > 0:
            raise InvalidInput(
                f"keepalive_time_s and keepalive_timeout_s must be positive seconds, got "
                f"{self.keepalive_time_s} and {self.keepalive_timeout_s}"
            )
        if (
            self.keepalive_time_s * 1000 > _GRPC_INT_MAX
            or self.keepalive_timeout_s * 1000 > _GRPC_INT_MAX
        ):
            raise InvalidInput("keepalive_time_s and keepalive_timeout_s must be below 24 days")
        if self.keepalive_timeout_s >= self.keepalive_time_s:
            raise InvalidInput(
                f"keepalive_timeout_s ({self.keepalive_timeout_s}) must be shorter than "
                f"keepalive_time_s ({self.keepalive_time_s}), or a ping is sent before the last "
                f"one "
                f"could time out: lower keepalive_timeout_s or raise keepalive_time_s"
            )
        if self.max_workers < 1:
            raise InvalidInput(f"max_workers must be at least 1, got {self.max_workers}")


def grpc_options(limits: TransportLimits) -> list[tuple[str, int]]:
    """gRPC channel arguments used identically by :func:`create_server` and :func:`create_channel`.

    Parameters
    ----------
    limits : TransportLimits
        Message-size and keepalive settings.

    Returns
    -------
    list[tuple[str, int]]
        ``(name, value)`` pairs for ``grpc.server(options=...)`` and
        ``grpc.secure_channel(options=...)``; sizes in bytes, times in ms.
    """
    keepalive_ms = int(limits.keepalive_time_s * 1000)
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Server side: accept the client's idle pings at the very rate the client sends them.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms),
        # Client side: keep pinging an idle connection instead of stopping after two pings.
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class ServerTLS:
    """PEM material for the server's end of mutual TLS.

    Attributes
    ----------
    ca_pem : bytes
        CA certificate that client certificates must chain to.
    cert_pem : bytes
        Server certificate (role ``server``, EKU serverAuth).
    key_pem : bytes
        Server private key, PKCS #8 PEM.
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_layout(cls, layout: PkiLayout) -> ServerTLS:
        """Read ``ca.pem``, ``server.pem`` and ``server.key`` from an :func:`init_pki` folder.

        Raises
        ------
        InvalidInput
            Naming the file, when one is missing or unreadable.
        """
        return cls(
            ca_pem=read_bytes(layout.ca_cert),
            cert_pem=read_bytes(layout.cert("server")),
            key_pem=read_bytes(layout.key("server")),
        )


@dataclass(frozen=True)
class ClientTLS:
    """PEM material for a client's end of mutual TLS.

    Attributes
    ----------
    ca_pem : bytes
        CA certificate the server certificate must chain to.
    cert_pem, key_pem : bytes | None
        Client certificate and PKCS #8 private key; ``None`` only to probe a
        server (the privtrain server refuses such clients).
    """

    ca_pem: bytes
    cert_pem: bytes | None = None
    key_pem: bytes | None = None

    @classmethod
    def from_bundle(cls, bundle: ClientBundle) -> ClientTLS:
        """Read ``ca.pem``, ``client.pem`` and ``client.key`` from a person's bundle.

        Parameters
        ----------
        bundle : ClientBundle
            Folder written by :func:`privtrain.secure_transport.issuing.issue_bundle`.

        Raises
        ------
        InvalidInput
            Naming the file, when one is missing or unreadable (with how to get a bundle).
        """
        missing = [p.name for p in bundle.files if not p.is_file()]
        if missing:
            raise InvalidInput(
                f"{bundle.directory} is not a client bundle (missing {', '.join(missing)}); the "
                "operator makes one with `privtrain certs issue --role ROLE --name NAME --out DIR`"
            )
        return cls(
            ca_pem=read_bytes(bundle.ca_cert),
            cert_pem=read_bytes(bundle.cert),
            key_pem=read_bytes(bundle.key),
        )


def create_server(
    tls: ServerTLS,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    limits: TransportLimits = TransportLimits(),
    call_limits: CallLimits = CallLimits(),
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    insecure_dev: bool = False,
) -> tuple[grpc.Server, int]:
    """Build a gRPC server with one mutually authenticated TLS port; do not start it.

    The caller registers its services, then calls ``server.start()``. Every call passes
    :class:`~privtrain.secure_transport.call_limits.CallLimiter` first (its pool: streams,
    unary calls and health checks apart; per-caller limits), then ``interceptors``, then
    :class:`~privtrain.secure_transport.request_decoding.RequestDecoding` (undecodable
    request bytes are INVALID_ARGUMENT, not INTERNAL).

    Parameters
    ----------
    tls : ServerTLS
        CA, server certificate and key. The certificate must cover ``host``
        (checked up front unless ``host`` is a wildcard such as ``0.0.0.0``),
        because a mismatch otherwise surfaces only as every client failing
        with UNAVAILABLE.
    host : str
        Address to bind; also the name clients are expected to dial.
    port : int
        TCP port; 0 picks a free one.
    limits : TransportLimits
        Shared with the clients' :func:`create_channel`.
    call_limits : CallLimits
        Streams and calls per caller and in all (server side only).
    interceptors : Sequence[grpc.ServerInterceptor]
        Applied to every call, outermost first, between the call limits and the
        request decoding.
    insecure_dev : bool
        Development only: serve plaintext instead of mTLS on the port. No
        caller can then be identified, so role-checked methods answer
        UNAUTHENTICATED. Logged as a warning.

    Returns
    -------
    tuple[grpc.Server, int]
        The unstarted server and the port actually bound.

    Raises
    ------
    CertificateNameMismatch
        When the server certificate does not cover ``host``.
    InvalidInput
        When a PEM cannot be parsed or the key does not belong to the certificate.
    FailedPrecondition
        When the port cannot be bound (already in use, bad address).
    """
    address = f"[{host.strip('[]')}]:{port}" if ":" in host.strip("[]") else f"{host}:{port}"
    cert = _parse_certificate(tls.cert_pem, "server certificate")
    _parse_certificate(tls.ca_pem, "CA certificate")
    _check_key_matches(cert, tls.key_pem)
    if host not in _WILDCARD_HOSTS:
        check_server_names(cert, host)
    pools = CallPools.create(limits.max_workers, call_limits)
    server = grpc.server(
        pools.handlers,
        interceptors=[CallLimiter(call_limits, pools), *interceptors, RequestDecoding()],
        # gRPC sets SO_REUSEPORT by default, which lets a second server bind a port
        # that is already serving and silently split the traffic.
        options=[*grpc_options(limits), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=(call_limits.max_streams + call_limits.health_workers
                                 + QUEUED_CALLS_PER_THREAD * limits.max_workers),
    )
    try:
        if insecure_dev:
            logger.warning(
                "INSECURE: serving PLAINTEXT gRPC on %s (insecure_dev=True); traffic is neither "
                "encrypted nor authenticated; never use this outside a development machine",
                address,
            )
            bound = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.key_pem, tls.cert_pem)],
                root_certificates=tls.ca_pem,
                require_client_auth=True,
            )
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise FailedPrecondition(f"cannot listen on {address}: {exc}") from None
    # Older grpcio releases report a failed bind as port 0 instead of raising.
    if bound == 0:
        raise FailedPrecondition(f"cannot listen on {address}: address in use or not local")
    return server, bound


def create_channel(
    target: str,
    tls: ClientTLS,
    *,
    limits: TransportLimits = TransportLimits(),
) -> grpc.Channel:
    """Open a mutually authenticated TLS channel to ``target``.

    The connection is made lazily on the first call. gRPC verifies that the
    server certificate chains to ``tls.ca_pem`` and covers the host part of
    ``target``; on failure calls end with ``UNAVAILABLE`` and
    :func:`privtrain.secure_transport.diagnose.diagnose_connection` explains why.

    Parameters
    ----------
    target : str
        ``host:port``, e.g. ``127.0.0.1:50051`` or ``[::1]:50051``.
    tls : ClientTLS
        CA plus this client's certificate and key.
    limits : TransportLimits
        Must equal the server's (see :func:`grpc_options`).

    Returns
    -------
    grpc.Channel
        A secure channel; close it when done.
    """
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_pem,
        private_key=tls.key_pem,
        certificate_chain=tls.cert_pem,
    )
    return grpc.secure_channel(target, credentials, options=grpc_options(limits))


def _parse_certificate(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidInput(f"the {what} is not a PEM certificate: {exc}") from None


def _check_key_matches(cert: x509.Certificate, key_pem: bytes) -> None:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"the server key is not an unencrypted PEM private key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise InvalidInput("the server key does not belong to the server certificate")
