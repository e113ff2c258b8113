"""The privtrain server: gRPC services over mTLS, job runner and monitor in one process."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from privtrain.errors import FailedPrecondition, InvalidInput, PrivtrainError
from privtrain.monitoring.monitor import JobMonitor
from privtrain.platform import people
from privtrain.platform.alerting import AlertSink
from privtrain.platform.audit_trail import Actor, AuditTrail
from privtrain.platform.config import ServerConfig
from privtrain.platform.db.migrate import check_migrated
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.model_checks import ModelChecks
from privtrain.platform.revocations import RevocationCache
from privtrain.platform.rpc import AUDITED_ACTIONS
from privtrain.platform.runner import JobRunner
from privtrain.platform.services.admin import AdminServicer
from privtrain.platform.services.datasets import DatasetServicer
from privtrain.platform.services.monitoring import MonitoringServicer
from privtrain.platform.services.training import TrainingServicer
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.channels import ServerTLS, create_server
from privtrain.secure_transport.pki import PkiLayout, load_certificate, load_private_key
from privtrain.secure_transport.revocation import RevocationInterceptor
from privtrain.secure_transport.roles import role_of, serial_hex
from privtrain.trainer.checkpoints import private_folder

log = logging.getLogger(__name__)
SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in ("DatasetService", "TrainingService", "MonitoringService", "AdminService")
)


class ServerHealth(health.HealthServicer):
    """gRPC's health service over the server's own names, with its ``List`` RPC
    (grpcio-health-checking leaves ``List`` unimplemented: a call raised inside gRPC)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self._names = names

    def List(self, request: health_pb2.HealthListRequest,  # noqa: N802 - the RPC's name
             context: grpc.ServicerContext) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(statuses={
            name: self.Check(health_pb2.HealthCheckRequest(service=name), context)
            for name in self._names})


def lock_home(home: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``home/server.lock`` for the server's lifetime.

    Two servers on one home would each treat the other's running jobs as
    leftovers of a crash.

    Raises
    ------
    FailedPrecondition
        Another server holds the lock.
    """
    handle = os.fdopen(os.open(home / "server.lock", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                       "ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FailedPrecondition(f"another privtrain server is already running on {home}") from None
    return handle


class PrivtrainServer:
    """Owns the database, the runner, the monitor and audit-signer threads and the gRPC server.

    Call :meth:`start`, then :meth:`stop` (or :meth:`wait`). ``port`` is the
    bound port after start. Every call passes the revocation check first
    (:class:`~privtrain.secure_transport.revocation.RevocationInterceptor`).
    """

    def __init__(self, config: ServerConfig, monitor: JobMonitor | None = None) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.config = config
        layout = PkiLayout(config.pki_dir)
        signing_key = load_private_key(layout.key("signing"))
        if not isinstance(signing_key, Ed25519PrivateKey):
            raise InvalidInput(f"{layout.key('signing')} is not an Ed25519 key")
        signing_cert_pem = load_certificate(layout.cert("signing")).public_bytes(
            serialization.Encoding.PEM
        )
        self._signing_key, self._signing_cert_pem = signing_key, signing_cert_pem
        private_folder(config.home)
        private_folder(config.jobs_dir)
        self._home_lock = lock_home(config.home)
        check_migrated(config.db_url)
        self.db = Database(config.db_url)
        self.audit = AuditTrail(self.db)
        self.revocations = RevocationCache(self.db)
        self.hub = EventHub(self.db)
        self.monitor = monitor or JobMonitor(stall=config.stall)
        self.alerts = AlertSink(self.db, self.hub)
        self.runner = JobRunner(config, self.db, self.hub, self.monitor, self.alerts)
        self._grpc, self.port = create_server(
            ServerTLS.from_layout(layout), config.host, config.port, limits=config.limits,
            call_limits=config.call_limits,
            interceptors=[RevocationInterceptor(self.revocations.reason, self._refused_revoked)],
        )
        pb_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(self.db, config.datasets_dir, runner=self.runner, audit_trail=self.audit,
                            row_count_noise=config.row_count_noise,
                            ledger_accountant=config.ledger_accountant), self._grpc
        )
        pb_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(
                self.db, self.hub, self.runner, signing_key=signing_key,
                signing_cert_pem=signing_cert_pem, chunk_bytes=config.limits.chunk_bytes,
                audit_trail=self.audit, revocations=self.revocations,
                model_checks=ModelChecks(config.model_checks, config.model_check_timeout_s),
            ),
            self._grpc,
        )
        pb_grpc.add_MonitoringServiceServicer_to_server(MonitoringServicer(self.db), self._grpc)
        pb_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.db, layout, revocations=self.revocations, audit_trail=self.audit,
                          signing_key=signing_key, signing_cert_pem=signing_cert_pem),
            self._grpc,
        )
        self._layout = layout
        self._health = ServerHealth(("", *SERVICE_NAMES))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self._stop_signer = threading.Event()
        self._signer_thread = threading.Thread(target=self._signer_loop, name="audit-signer",
                                               daemon=True)

    def start(self) -> None:
        """Publish the CRL, reconcile unfinished jobs, start the runner (and its local workers),
        the audit signer and the gRPC server."""
        if not people.publish_crl(self.db, self._layout):
            log.warning("CRL not published: the CA key is not readable at %s (revocation is "
                        "enforced all the same)", self._layout.ca_key)
        self.runner.start()
        self._signer_thread.start()
        self._grpc.start()
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("privtrain server listening on %s:%d (mTLS)", self.config.host, self.port)

    def _refused_revoked(self, method: str, cert: x509.Certificate, reason: str) -> None:
        """A revoked certificate's call was refused: log it, and audit it for an audited method."""
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name, serial = (str(names[0].value) if names else "?"), serial_hex(cert)
        log.info("refused %s for %s (serial %s): UNAUTHENTICATED certificate revoked %s", method,
                 name, serial, reason)
        action = AUDITED_ACTIONS.get(method.rsplit("/", 1)[-1])
        if action is None:
            return
        try:
            role = role_of(cert).value
        except PrivtrainError:
            role = ""
        try:
            self.audit.record(Actor(name, serial, role), action, "", "UNAUTHENTICATED",
                              f"certificate revoked {reason}")
        except Exception:  # the refusal stands; the operator must hear of the gap
            log.exception("could not append a refused %s to the audit log", action)

    def _signer_loop(self) -> None:
        while not self._stop_signer.wait(self.config.audit_sign_interval_s):
            self._sign_audit_head()

    def _sign_audit_head(self) -> None:
        try:
            self.audit.sign(self._signing_key, self._signing_cert_pem, only_if_moved=True)
        except Exception:  # a DB hiccup must not end signing
            log.exception("signing the audit log's head failed")

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting calls, give in-flight calls and workers ``grace_s`` seconds, then stop."""
        self._health.enter_graceful_shutdown()
        stopped = self._grpc.stop(grace_s)
        self.runner.stop(grace_s)
        self._stop_signer.set()
        self._signer_thread.join(5)
        stopped.wait(grace_s + 1)
        self._sign_audit_head()
        self.db.close()
        self._home_lock.close()

    def wait(self) -> None:
        """Block until the gRPC server terminates."""
        self._grpc.wait_for_termination()
