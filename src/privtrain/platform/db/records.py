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
    """A stored dataset and its privacy budget (ε, δ)."""

    id: str
    name: str
    owner_common_name: str
    storage_path: str
    sha256: str
    size_bytes: int
    rows: int
    manifest_json: str
    epsilon_budget: float
    delta_budget: float
    created_at: datetime

    @property
    def manifest(self) -> dict[str, Any]:
        """The anonymization manifest, parsed (a fresh dict on each access)."""
        parsed: dict[str, Any] = json.loads(self.manifest_json)
        return parsed


@dataclass(frozen=True)
class JobRecord:
    """A training job; times are timezone-aware UTC."""

    id: str
    request_id: str | None
    dataset_id: str
    submitter_common_name: str
    spec_json: str
    state: JobState
    error: str | None
    result_json: str | None
    worker_pid: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def spec(self) -> dict[str, Any]:
        """The job spec, parsed (a fresh dict on each access)."""
        parsed: dict[str, Any] = json.loads(self.spec_json)
        return parsed

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
class SpendRecord:
    """One job's privacy reservation and what it has spent so far (ε, δ)."""

    job_id: str
    dataset_id: str
    epsilon_reserved: float
    delta_reserved: float
    epsilon_spent: float
    settled: bool
