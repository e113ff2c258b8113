"""No-progress (stall) detection.

A RUNNING job is stalled when it has made no progress for longer than
``max(factor × median of its recent step intervals, floor_s)``. Progress is a
completed logical step, or a batch of rows of an evaluation on the test set
(between epochs no step completes, and a large test set would otherwise look
like a stall). Nothing else resets the timer: a job that only logs or
heartbeats is still stalled, while a slow job that steps every minute is not
(its threshold scales with it). Evaluation time never enters the step intervals.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from privtrain.errors import InvalidInput
from privtrain.monitoring.alerts import AlertKind, AlertState, AlertTransition


@dataclass(frozen=True)
class StallConfig:
    """Threshold settings.

    Attributes
    ----------
    factor : float
        Multiple of the median recent step interval that counts as a stall.
    floor_s : float
        Smallest threshold in seconds once step intervals are known.
    first_step_s : float
        Threshold in seconds before the first step completes (start-up, first
        batch): no interval is known yet to scale from.
    window : int
        Number of recent step intervals the median is taken over.
    """

    factor: float = 10.0
    floor_s: float = 60.0
    first_step_s: float = 600.0
    window: int = 32

    def __post_init__(self) -> None:
        if self.factor <= 1 or self.floor_s <= 0 or self.first_step_s <= 0 or self.window < 1:
            raise InvalidInput(
                "stall settings need factor > 1, floor_s > 0, first_step_s > 0 and window >= 1; "
                f"got factor={self.factor}, floor_s={self.floor_s}, "
                f"first_step_s={self.first_step_s}, window={self.window}"
            )


@dataclass
class _JobProgress:
    last_step: int
    last_progress_at: float
    intervals: deque[float] = field(default_factory=deque)
    firing: bool = False


class StallDetector:
    """Tracks step progress per job and emits NO_PROGRESS transitions."""

    def __init__(self, config: StallConfig | None = None) -> None:
        self.config = config or StallConfig()
        self._jobs: dict[str, _JobProgress] = {}

    def start(self, job_id: str, now: float) -> None:
        """Begin watching ``job_id`` (its training loop has started) at time ``now`` (s)."""
        self._jobs[job_id] = _JobProgress(last_step=0, last_progress_at=now,
                                          intervals=deque(maxlen=self.config.window))

    def stop(self, job_id: str) -> None:
        """Stop watching (job reached a terminal state)."""
        self._jobs.pop(job_id, None)

    def threshold(self, job_id: str) -> float:
        """Current stall threshold of ``job_id`` in seconds."""
        job = self._jobs[job_id]
        if not job.intervals:
            return max(self.config.first_step_s, self.config.floor_s)
        return max(self.config.factor * statistics.median(job.intervals), self.config.floor_s)

    def observe_step(self, job_id: str, step: int, now: float) -> list[AlertTransition]:
        """Record that ``job_id`` completed logical step ``step`` at ``now``.

        Returns a RESOLVED transition when the job had a firing stall alert.
        A repeated or older step number is not progress and is ignored.
        """
        job = self._jobs.get(job_id)
        if job is None:
            self.start(job_id, now)
            job = self._jobs[job_id]
        if step <= job.last_step:
            return []
        steps = step - job.last_step
        interval = (now - job.last_progress_at) / steps
        if not job.firing:
            # A stall's long gap would inflate the median and hide the next stall.
            job.intervals.append(interval)
        job.last_step, job.last_progress_at = step, now
        if job.firing:
            job.firing = False
            return [AlertTransition(
                job_id=job_id, kind=AlertKind.NO_PROGRESS, state=AlertState.RESOLVED,
                message=f"job {job_id} progressed again (step {step})", at=now,
                details={"step": step},
            )]
        return []

    def observe_evaluation(self, job_id: str, now: float) -> list[AlertTransition]:
        """Record that ``job_id`` evaluated another batch of test rows at ``now``.

        Resets the no-progress timer without adding a step interval; returns a
        RESOLVED transition when the job had a firing stall alert.
        """
        job = self._jobs.get(job_id)
        if job is None:
            return []
        job.last_progress_at = now
        if job.firing:
            job.firing = False
            return [AlertTransition(
                job_id=job_id, kind=AlertKind.NO_PROGRESS, state=AlertState.RESOLVED,
                message=f"job {job_id} progressed again (evaluating after step {job.last_step})",
                at=now, details={"step": job.last_step},
            )]
        return []

    def check(self, now: float) -> list[AlertTransition]:
        """FIRING transitions for every watched job stalled at ``now`` and not yet alerted."""
        fired = []
        for job_id, job in self._jobs.items():
            if job.firing:
                continue
            idle = now - job.last_progress_at
            threshold = self.threshold(job_id)
            if idle > threshold:
                job.firing = True
                fired.append(AlertTransition(
                    job_id=job_id, kind=AlertKind.NO_PROGRESS, state=AlertState.FIRING,
                    message=(
                        f"job {job_id} made no step progress for {idle:.1f} s "
                        f"(threshold {threshold:.1f} s, last step {job.last_step})"
                    ),
                    at=now,
                    details={"idle_s": idle, "threshold_s": threshold, "last_step": job.last_step},
                ))
        return fired
