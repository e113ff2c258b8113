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
