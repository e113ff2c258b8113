"""Job and alert state machines, written as data.

The allowed job transitions are a module-level set of ``(from, to)`` pairs
(the pattern Flower uses for its run states). The database layer checks every
change against it and applies the change as compare-and-set, so a cancel and
the scheduler can never overwrite each other.
"""

from __future__ import annotations

from enum import Enum

from privtrain.errors import FailedPrecondition

# Alert enums live with the detectors (monitoring never imports platform); re-exported here.
from privtrain.monitoring.alerts import AlertKind, AlertState


class JobState(str, Enum):
    """Lifecycle state of a training job."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


ALLOWED_TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.PENDING, JobState.RUNNING),
        (JobState.PENDING, JobState.CANCELLED),
        # A job can fail before it starts, e.g. when its worker cannot be spawned.
        (JobState.PENDING, JobState.FAILED),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.CANCELLED),
    }
)

# No allowed transition leaves these states, so they stay terminal.
TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)


class InvalidTransition(FailedPrecondition):
    """A job state change that the state machine does not allow."""


def is_allowed(current: JobState, new: JobState) -> bool:
    """Return whether ``current -> new`` is an allowed job transition.

    Parameters
    ----------
    current, new : JobState
        The state the job is in and the state it should move to.

    Returns
    -------
    bool
        True when the pair is in :data:`ALLOWED_TRANSITIONS`.
    """
    return (current, new) in ALLOWED_TRANSITIONS


def check_transition(current: JobState, new: JobState) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> new`` is allowed.

    Raises
    ------
    InvalidTransition
        With a message naming both states and, for a terminal ``current``,
        saying that terminal states are final.
    """
    if is_allowed(current, new):
        return
    if current in TERMINAL_STATES:
        raise InvalidTransition(
            f"job state {current.value} is terminal; it cannot change to {new.value}"
        )
    allowed = sorted(to.value for frm, to in ALLOWED_TRANSITIONS if frm is current)
    raise InvalidTransition(
        f"job state cannot change from {current.value} to {new.value}; "
        f"allowed from {current.value}: {', '.join(allowed) or 'none'}"
    )


__all__ = [
    "ALLOWED_TRANSITIONS", "TERMINAL_STATES", "AlertKind", "AlertState", "InvalidTransition",
    "JobState", "check_transition",
]
