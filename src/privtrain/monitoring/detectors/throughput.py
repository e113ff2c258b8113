"""Throughput-collapse detection.

Compares the throughput (samples / seconds, summed over the window) of the
last ``recent`` non-empty steps with that of the job's first ``baseline``
non-empty steps (after ``warmup`` steps). Fires when it drops below
``fire_ratio`` of the baseline for a window lasting at least ``min_window_s``
seconds of training, resolves above ``resolve_ratio``. The duration guard keeps
millisecond hiccups of tiny steps (a busy core, a GC pause) from paging anyone.
A job that keeps stepping slowly raises this alert, not NO_PROGRESS (C-M02 c).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from privtrain.monitoring.alerts import AlertKind, AlertState, AlertTransition


@dataclass(frozen=True)
class ThroughputConfig:
    """Window sizes (steps), ratios (fractions of the baseline) and the shortest window (s)."""

    warmup: int = 5
    baseline: int = 20
    recent: int = 10
    fire_ratio: float = 0.2
    resolve_ratio: float = 0.5
    min_window_s: float = 10.0


@dataclass
class _Rates:
    seen: int = 0
    baseline: list[tuple[int, float]] = field(default_factory=list)
    recent: deque[tuple[int, float]] = field(default_factory=deque)
    firing: bool = False


def _rate(window: Iterable[tuple[int, float]]) -> tuple[float, float]:
    """(samples per second, seconds) over (samples, seconds) pairs."""
    samples = seconds = 0.0
    for n, s in window:
        samples += n
        seconds += s
    return (samples / seconds if seconds > 0 else float("inf")), seconds


class ThroughputDetector:
    """Per-job samples/s tracking."""

    def __init__(self, config: ThroughputConfig | None = None) -> None:
        self.config = config or ThroughputConfig()
        self._jobs: dict[str, _Rates] = {}

    def stop(self, job_id: str) -> None:
        """Forget ``job_id``."""
        self._jobs.pop(job_id, None)

    def observe_step(
        self, job_id: str, step: int, samples_per_s: float, batch_size: int, now: float
    ) -> list[AlertTransition]:
        """Record one logical step's throughput (samples per second)."""
        if batch_size == 0 or samples_per_s <= 0:
            return []
        cfg = self.config
        rates = self._jobs.setdefault(job_id, _Rates(recent=deque(maxlen=cfg.recent)))
        rates.seen += 1
        if rates.seen <= cfg.warmup:
            return []
        sample = (batch_size, batch_size / samples_per_s)
        if len(rates.baseline) < cfg.baseline:
            rates.baseline.append(sample)
            return []
        rates.recent.append(sample)
        if len(rates.recent) < cfg.recent:
            return []
        base, _ = _rate(rates.baseline)
        now_rate, window_s = _rate(rates.recent)
        details = {"baseline_samples_per_s": base, "recent_samples_per_s": now_rate, "step": step}
        if not rates.firing and now_rate < cfg.fire_ratio * base and window_s >= cfg.min_window_s:
            rates.firing = True
            return [AlertTransition(
                job_id=job_id, kind=AlertKind.THROUGHPUT_COLLAPSE, state=AlertState.FIRING,
                message=(f"job {job_id}: throughput fell to {now_rate:.1f} samples/s "
                         f"from a baseline of {base:.1f}"),
                at=now, details=details,
            )]
        if rates.firing and now_rate >= cfg.resolve_ratio * base:
            rates.firing = False
            return [AlertTransition(
                job_id=job_id, kind=AlertKind.THROUGHPUT_COLLAPSE, state=AlertState.RESOLVED,
                message=f"job {job_id}: throughput back to {now_rate:.1f} samples/s",
                at=now, details=details,
            )]
        return []
