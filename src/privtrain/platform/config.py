"""Server settings and the on-disk layout of a server's home folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from privtrain.monitoring.detectors.stall import StallConfig
from privtrain.secure_transport.call_limits import CallLimits
from privtrain.secure_transport.channels import TransportLimits


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``privtrain server`` needs.

    Attributes
    ----------
    home : Path
        State folder (0700): ``datasets/`` (uploaded Parquet), ``jobs/<id>/`` (checkpoints,
        parameters, the DP randomness key, worker log) and, by default, the SQLite
        database; every file 0600, every folder 0700.
    pki_dir : Path
        The operator's folder written by ``privtrain certs init`` (CA certificate, server
        and signing pairs; the CA key under ``ca/`` is read only to publish the CRL).
    host, port : str, int
        Address to bind; port 0 picks a free one.
    database_url : str or None
        SQLAlchemy URL; None means ``sqlite:///<home>/privtrain.db``.
    local_workers : int
        Jobs the server trains at once in its own worker processes; 0 leaves every job
        to ``privtrain worker`` hosts (PostgreSQL).
    stall : StallConfig
        No-progress alert thresholds.
    monitor_interval_s : float
        How often (seconds) the stall check runs.
    cancel_grace_s : float
        How long (seconds) a worker asked to stop may take before it is killed (a worker
        ends itself within about a second; only a frozen one is killed).
    lease_s : float
        Length (seconds) of a worker host's lease on a job, renewed every third of it; a
        job whose host stops renewing resumes elsewhere after this long.
    max_failed_attempts : int
        Attempts of a job whose worker process may die without an outcome (seen by its
        living host) before the job fails; a host that dies does not count.
    checkpoint_every_s : float
        Checkpoint cadence inside epochs (seconds of training).
    reconcile_interval_s : float
        How often (seconds) the scheduler admits jobs and looks for jobs to hand on.
    limits : TransportLimits
        gRPC message and chunk sizes, shared with clients, and the handler threads
        (``max_workers``) that serve unary calls.
    call_limits : CallLimits
        Streams and unary calls one person may have at once, streams of all callers
        together, and the threads that answer health checks.
    model_checks : int
        Submissions whose model is built and dry-run at once (threads of their own); a
        submission past them is refused RESOURCE_EXHAUSTED.
    model_check_timeout_s : float
        Longest a submission waits for its model's checks (seconds) before it is refused
        RESOURCE_EXHAUSTED.
    admission_timeout_s : float
        Longest the calibration of one job's σ at admission may take (seconds, plus one ε
        evaluation); a job past it FAILS with the reason (the scheduler admits one job at
        a time, so one costly plan must not hold up the others for long).
    row_count_noise : float
        σ (rows) of the Gaussian noise on the row counts published at upload.
    ledger_accountant : str
        Accountant that composes a new ledger's histories: ``prv`` or ``rdp``.
    audit_sign_interval_s : float
        How often (seconds) the audit log's head is signed, when it moved.
    """

    home: Path
    pki_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    database_url: str | None = None
    local_workers: int = 1
    stall: StallConfig = field(default_factory=StallConfig)
    monitor_interval_s: float = 0.25
    cancel_grace_s: float = 10.0
    lease_s: float = 10.0
    max_failed_attempts: int = 5
    checkpoint_every_s: float = 30.0
    reconcile_interval_s: float = 0.5
    limits: TransportLimits = field(default_factory=TransportLimits)
    call_limits: CallLimits = field(default_factory=CallLimits)
    model_checks: int = 2
    model_check_timeout_s: float = 30.0
    admission_timeout_s: float = 120.0
    row_count_noise: float = 20.0
    ledger_accountant: str = "prv"
    audit_sign_interval_s: float = 60.0

    @property
    def db_url(self) -> str:
        """The database URL in force."""
        return self.database_url or default_database_url(self.home)

    @property
    def datasets_dir(self) -> Path:
        """Where uploaded datasets are stored."""
        return self.home / "datasets"

    @property
    def jobs_dir(self) -> Path:
        """Where each job's outputs are written."""
        return self.home / "jobs"


def default_database_url(home: Path) -> str:
    """``sqlite:///<home>/privtrain.db`` (absolute path)."""
    return f"sqlite:///{(home / 'privtrain.db').resolve()}"
