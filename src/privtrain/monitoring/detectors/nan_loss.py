"""Non-finite loss detection.

A NaN or infinite mean loss on a step with at least one sample fires NAN_LOSS;
a step whose Poisson batch was empty has no loss at all and is never a NaN
(C-T01, C-M01). The alert resolves on the next finite loss.
"""

from __future__ import annotations

import math

from privtrain.monitoring.alerts import AlertKind, AlertState, AlertTransition


class NanLossDetector:
    """Per-job NaN/inf loss state."""

    def __init__(self) -> None:
        self._firing: set[str] = set()

    def stop(self, job_id: str) -> None:
        """Forget ``job_id``."""
        self._firing.discard(job_id)

    def observe_step(
        self, job_id: str, step: int, loss: float | None, batch_size: int, now: float
    ) -> list[AlertTransition]:
        """Record one logical step's mean loss over ``batch_size`` samples."""
        if batch_size == 0 or loss is None:
            return []
        if not math.isfinite(loss):
            if job_id in self._firing:
                return []
            self._firing.add(job_id)
            return [AlertTransition(
                job_id=job_id, kind=AlertKind.NAN_LOSS, state=AlertState.FIRING,
                message=f"job {job_id}: loss is {loss} at step {step} ({batch_size} samples)",
                at=now, details={"step": step, "batch_size": batch_size},
            )]
        if job_id in self._firing:
            self._firing.discard(job_id)
            return [AlertTransition(
                job_id=job_id, kind=AlertKind.NAN_LOSS, state=AlertState.RESOLVED,
                message=f"job {job_id}: loss finite again at step {step}", at=now,
                details={"step": step},
            )]
        return []
