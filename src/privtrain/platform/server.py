"""The privtrain server: gRPC services over mTLS, job runner and monitor in one process."""

from __future__ import annotations

import fcntl
import logging
from pathlib import Path
from typing import IO

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.monitoring.monitor import JobMonitor
from privtrain.platform.alerting import AlertSink
from privtrain.platform.config import ServerConfig
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.runner import JobRunner
from privtrain.platform.services.datasets import DatasetServicer
from privtrain.platform.services.monitoring import MonitoringServicer
from privtrain.platform.services.training import TrainingServicer
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.proto.privtrain.v1 import privtrain_pb2_grpc as pb_grpc
from privtrain.secure_transport.channels import ServerTLS, create_server
from privtrain.secure_transport.pki import PkiLayout, load_certificate, load_private_key

log = logging.getLogger(__name__)
SERVICE_NAMES = tuple(
    pb.DESCRIPTOR.services_by_name[name].full_name
    for name in ("DatasetService", "TrainingService", "MonitoringService")
)


def lock_home(home: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``home/server.lock`` for the server's lifetime.

    Two servers on one home would each treat the other's running jobs as
    leftovers of a crash.

    Raises
    ------
    FailedPrecondition
        Another server holds the lock.
    """
    handle = (home / "server.lock").open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FailedPrecondition(f"another privtrain server is already running on {home}") from None
    return handle


def check_migrated(url: str) -> None:
    """Refuse to serve a database that is not at the latest migration.

    Raises
    ------
    FailedPrecondition
        Naming the revision found and the command that fixes it.
    """
    from privtrain.platform.db.migrate import current_revision, head_revision

    try:
        current = current_revision(url)
    except Exception as exc:  # SQLAlchemy or driver error: unreadable or unreachable database
        raise FailedPrecondition(f"cannot read the database at {url}: {exc}") from None
    if current != head_revision():
        raise FailedPrecondition(
            f"the database at {url} is at revision {current or 'none'}, not {head_revision()}: "
            "run `privtrain db upgrade` first"
        )


class PrivtrainServer:
    """Owns the database, the runner, the monitor thread and the gRPC server.

    Call :meth:`start`, then :meth:`stop` (or :meth:`wait`). ``port`` is the
    bound port after start.
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
        config.home.mkdir(parents=True, exist_ok=True)
        self._home_lock = lock_home(config.home)
        check_migrated(config.db_url)
        self.db = Database(config.db_url)
        self.hub = EventHub(self.db)
        self.monitor = monitor or JobMonitor(stall=config.stall)
        self.alerts = AlertSink(self.db, self.hub)
        self.runner = JobRunner(config, self.db, self.hub, self.monitor, self.alerts)
        self._grpc, self.port = create_server(
            ServerTLS.from_layout(layout), config.host, config.port, limits=config.limits
        )
        pb_grpc.add_DatasetServiceServicer_to_server(
            DatasetServicer(self.db, config.datasets_dir, row_count_noise=config.row_count_noise,
                            ledger_accountant=config.ledger_accountant), self._grpc
        )
        pb_grpc.add_TrainingServiceServicer_to_server(
            TrainingServicer(
                self.db, self.hub, self.runner, signing_key=signing_key,
                signing_cert_pem=signing_cert_pem, chunk_bytes=config.limits.chunk_bytes,
            ),
            self._grpc,
        )
        pb_grpc.add_MonitoringServiceServicer_to_server(MonitoringServicer(self.db), self._grpc)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )

    def start(self) -> None:
        """Reconcile unfinished jobs, start the runner (and its local workers) and the gRPC server."""
        self.runner.start()
        self._grpc.start()
        for name in ("", *SERVICE_NAMES):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("privtrain server listening on %s:%d (mTLS)", self.config.host, self.port)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting calls, give in-flight calls and workers ``grace_s`` seconds, then stop."""
        self._health.enter_graceful_shutdown()
        stopped = self._grpc.stop(grace_s)
        self.runner.stop(grace_s)
        stopped.wait(grace_s + 1)
        self.db.close()
        self._home_lock.close()

    def wait(self) -> None:
        """Block until the gRPC server terminates."""
        self._grpc.wait_for_termination()
