"""One thread-safe front for all detectors of all running jobs.

The platform feeds it step reports as they arrive from workers and calls
:meth:`JobMonitor.check` on a timer; both return the alert transitions to
store, stream and notify.
"""

from __future__ import annotations

import threading

from privtrain.monitoring.alerts import AlertKind, AlertState, AlertTransition
from privtrain.monitoring.clock import Clock, MonotonicClock
from privtrain.monitoring.detectors.nan_loss import NanLossDetector
from privtrain.monitoring.detectors.stall import StallConfig, StallDetector
from privtrain.monitoring.detectors.throughput import ThroughputConfig, ThroughputDetector


class JobMonitor:
    """Runs the stall, NaN-loss and throughput detectors over every watched job."""

    def __init__(
        self,
        clock: Clock | None = None,
        stall: StallConfig | None = None,
        throughput: ThroughputConfig | None = None,
    ) -> None:
        self.clock = clock or MonotonicClock()
        self._lock = threading.Lock()
        self._stall = StallDetector(stall)
        self._nan = NanLossDetector()
        self._throughput = ThroughputDetector(throughput)
        self._firing: dict[str, set[AlertKind]] = {}

    def job_started(self, job_id: str) -> None:
        """The job's training loop began: its stall timer starts now."""
        with self._lock:
            self._stall.start(job_id, self.clock.now())
            self._firing.setdefault(job_id, set())

    def observe_step(
        self, job_id: str, *, step: int, loss: float | None, batch_size: int, samples_per_s: float
    ) -> list[AlertTransition]:
        """Feed one logical step; returns alert transitions it caused."""
        with self._lock:
            now = self.clock.now()
            out = self._stall.observe_step(job_id, step, now)
            out += self._nan.observe_step(job_id, step, loss, batch_size, now)
            out += self._throughput.observe_step(job_id, step, samples_per_s, batch_size, now)
            return self._track(out)

    def observe_evaluation(self, job_id: str) -> list[AlertTransition]:
        """Feed one evaluated batch of test rows (progress between epochs, not a step)."""
        with self._lock:
            return self._track(self._stall.observe_evaluation(job_id, self.clock.now()))

    def check(self) -> list[AlertTransition]:
        """Stall check at the current time; call it periodically (e.g. every 0.25 s)."""
        with self._lock:
            return self._track(self._stall.check(self.clock.now()))

    def job_finished(self, job_id: str) -> list[AlertTransition]:
        """Stop watching ``job_id``; any alert still firing for it resolves (the job ended)."""
        with self._lock:
            now = self.clock.now()
            self._stall.stop(job_id)
            self._nan.stop(job_id)
            self._throughput.stop(job_id)
            firing = self._firing.pop(job_id, set())
            return [
                AlertTransition(job_id=job_id, kind=kind, state=AlertState.RESOLVED,
                                message=f"job {job_id} ended", at=now)
                for kind in sorted(firing, key=lambda k: k.value)
            ]

    def _track(self, transitions: list[AlertTransition]) -> list[AlertTransition]:
        for t in transitions:
            kinds = self._firing.setdefault(t.job_id, set())
            if t.state is AlertState.FIRING:
                kinds.add(t.kind)
            else:
                kinds.discard(t.kind)
        return transitions
