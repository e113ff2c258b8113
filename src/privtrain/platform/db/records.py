"""Plain, frozen records that repositories return instead of ORM objects."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from privtrain.platform.job_states import AlertKind, AlertState, JobState


@dataclass(frozen=True)
class DatasetRecord:
    """A stored dataset, the ledger it draws on, and its owner's split.

    ``rows`` is the exact row count of the file (owner and operator only);
    ``published_train_rows`` / ``published_test_rows`` are the noisy counts published
    at upload, the only counts a trainer sees.
    """

    id: str
    name: str
    owner_common_name: str
    ledger_id: str
    storage_path: str
    sha256: str
    manifest_sha256: str | None
    input_sha256: str | None
    size_bytes: int
    rows: int
    manifest_json: str
    split_json: str | None
    published_train_rows: int | None
    published_test_rows: int | None
    created_at: datetime
    withdrawn_at: datetime | None = None

    @property
    def withdrawn(self) -> bool:
        """Whether the owner withdrew it (no file, no new jobs; the ledger stays)."""
        return self.withdrawn_at is not None

    @property
    def manifest(self) -> dict[str, Any]:
        """The anonymization manifest, parsed (a fresh dict on each access)."""
        parsed: dict[str, Any] = json.loads(self.manifest_json)
        return parsed

    @property
    def split(self) -> dict[str, Any] | None:
        """The owner's split declaration, or None (a dataset uploaded before splits were declared)."""
        return None if self.split_json is None else dict(json.loads(self.split_json))


@dataclass(frozen=True)
class NewDataset:
    """What an upload verified and stored, for :meth:`DatasetRepository.create`."""

    name: str
    owner_common_name: str
    storage_path: str
    sha256: str
    size_bytes: int
    rows: int
    manifest_json: str
    manifest_sha256: str
    input_sha256: str | None
    previous_manifest_sha256: str | None
    split_json: str
    published_train_rows: int
    published_test_rows: int
    dataset_id: str | None = None


@dataclass(frozen=True)
class JobRecord:
    """A training job (or a privacy audit); times are timezone-aware UTC.

    ``plan_json`` is set when the job is admitted (its plan reserved on the ledger);
    ``error`` is what its submitter may read, ``error_detail`` the operator's version.
    ``lease_owner`` names the worker host running it until ``lease_expires_at``;
    ``attempts`` counts worker starts, ``failed_attempts`` those whose worker died
    without an outcome; ``steps_done`` / ``releases_done`` are the furthest step and accuracy
    release that reached the server (what an unfinished job is charged).
    """

    id: str
    request_id: str | None
    dataset_id: str
    submitter_common_name: str
    kind: str
    spec_json: str
    audit_json: str | None
    plan_json: str | None
    state: JobState
    error: str | None
    error_detail: str | None
    result_json: str | None
    worker_pid: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 0
    failed_attempts: int = 0
    cancel_requested_at: datetime | None = None
    steps_done: int = 0
    releases_done: int = 0

    @property
    def spec(self) -> dict[str, Any]:
        """The job spec, parsed (a fresh dict on each access)."""
        parsed: dict[str, Any] = json.loads(self.spec_json)
        return parsed

    @property
    def plan(self) -> dict[str, Any] | None:
        """The admitted plan, parsed, or None before admission."""
        return None if self.plan_json is None else dict(json.loads(self.plan_json))

    @property
    def audit(self) -> dict[str, Any] | None:
        """The audit settings of an audit job, parsed."""
        return None if self.audit_json is None else dict(json.loads(self.audit_json))

    @property
    def result(self) -> dict[str, Any] | None:
        """The job result, parsed, or None before one is stored."""
        if self.result_json is None:
            return None
        parsed: dict[str, Any] = json.loads(self.result_json)
        return parsed


@dataclass(frozen=True)
class EventRecord:
    """One entry in a job's append-only event log; ``id`` orders the log."""

    id: int
    job_id: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class StepMetric:
    """Metrics of one training step.

    Attributes
    ----------
    step, epoch : int
        Step counter (unique per job) and epoch number.
    loss : float | None
        Mean loss; None when no loss was reported (an empty Poisson batch),
        ``nan`` when training produced NaN.
    batch_size : int
        Samples in the (logical) batch.
    samples_per_s : float
        Throughput, samples per second.
    epsilon : float
        ε spent so far, as the accountant reports it.
    """

    step: int
    epoch: int
    loss: float | None
    batch_size: int
    samples_per_s: float
    epsilon: float

    @property
    def loss_is_nan(self) -> bool:
        """Whether the reported loss is NaN."""
        return self.loss is not None and math.isnan(self.loss)


@dataclass(frozen=True)
class AlertRecord:
    """A monitoring alert; ``job_id`` is None for service-wide alerts."""

    id: int
    job_id: str | None
    kind: AlertKind
    state: AlertState
    message: str
    fired_at: datetime
    resolved_at: datetime | None
    details: dict[str, Any]


@dataclass(frozen=True)
class AuditRecord:
    """One stored audit-log entry (see :mod:`privtrain.platform.audit_chain`).

    ``subject`` is the caller's certificate CN (``local:<user>`` for an operator's
    command run on the server's home), ``serial`` its certificate's serial (hex, "" for a
    local command), ``outcome`` ``ok`` or the gRPC status code name of a refusal, and
    ``detail`` one line (the refusal's message, or what an ok call changed).
    """

    seq: int
    at: datetime
    subject: str
    serial: str
    role: str
    action: str
    target: str
    outcome: str
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class SignedHead:
    """The audit log's head (``seq``, ``hash``) signed at ``signed_at`` (Ed25519, hex)."""

    id: int
    seq: int
    hash: str
    signed_at: datetime
    signature: str
    signer_certificate_pem: str


@dataclass(frozen=True)
class CertificateRecord:
    """A person's certificate as the CA issued it; ``serial`` in lower-case hex."""

    serial: str
    common_name: str
    role: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    revocation_reason: str | None

    def status(self, now: datetime) -> str:
        """``revoked``, ``expired`` or ``valid`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now > self.not_after else "valid"
