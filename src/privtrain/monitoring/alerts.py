"""Alert kinds, states and the transitions detectors emit."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class AlertKind(str, Enum):
    """What went wrong with a job."""

    NO_PROGRESS = "NO_PROGRESS"
    NAN_LOSS = "NAN_LOSS"
    THROUGHPUT_COLLAPSE = "THROUGHPUT_COLLAPSE"
    DEAD_WORKER = "DEAD_WORKER"
    # Raised by the worker hosts and the reconciler, not by a detector:
    STORAGE_ERROR = "STORAGE_ERROR"  # the job's files or the database could not be written
    SETTLEMENT_FAILED = "SETTLEMENT_FAILED"  # the job ended but its ledger entry is not settled
    RESUMES_EXHAUSTED = "RESUMES_EXHAUSTED"  # FAILED after its workers died too many times


class AlertState(str, Enum):
    """FIRING until the condition clears, then RESOLVED."""

    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


@dataclass(frozen=True)
class AlertTransition:
    """A detector's decision that an alert starts firing or resolves.

    ``at`` is the detector clock's time in seconds; ``details`` carries the
    figures behind the decision (thresholds, step numbers).
    """

    job_id: str
    kind: AlertKind
    state: AlertState
    message: str
    at: float
    details: dict[str, Any] = field(default_factory=dict)
