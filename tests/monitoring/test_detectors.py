"""Stall, NaN-loss and throughput detectors on a fake clock."""

from __future__ import annotations

import math

from privtrain.monitoring.alerts import AlertKind, AlertState
from privtrain.monitoring.clock import FakeClock
from privtrain.monitoring.detectors.stall import StallConfig
from privtrain.monitoring.monitor import JobMonitor


def _monitor(floor_s: float = 30.0) -> tuple[JobMonitor, FakeClock]:
    clock = FakeClock()
    config = StallConfig(factor=10.0, floor_s=floor_s, first_step_s=120.0)
    return JobMonitor(clock=clock, stall=config), clock


def _step(mon: JobMonitor, step: int, loss: float | None = 1.0, batch: int = 64, rate: float = 500.0):
    return mon.observe_step("j", step=step, loss=loss, batch_size=batch, samples_per_s=rate)


def test_slow_but_steady_job_never_stalls() -> None:
    """C-M02 (a): a step every 60 s for 72 h raises no alert."""
    mon, clock = _monitor()
    mon.job_started("j")
    alerts = []
    for step in range(1, 72 * 60 + 1):
        for _ in range(6):  # the monitor polls every 10 s between steps
            clock.advance(10)
            alerts += mon.check()
        alerts += _step(mon, step)
    assert alerts == []


def test_silent_stall_fires_once_then_resolves_when_steps_resume() -> None:
    """C-M02 (b): steps every 2 s, then silence: one alert after the threshold, one recovery."""
    mon, clock = _monitor(floor_s=5.0)
    mon.job_started("j")
    for step in range(1, 51):
        clock.advance(2)
        assert _step(mon, step) == []
    # threshold = max(10 x median 2 s, 5 s) = 20 s; heartbeats/logs don't reach the monitor as steps.
    fired = []
    for _ in range(100):
        clock.advance(0.5)
        fired += mon.check()
    assert [(a.kind, a.state) for a in fired] == [(AlertKind.NO_PROGRESS, AlertState.FIRING)]
    assert math.isclose(fired[0].details["threshold_s"], 20.0)
    assert 20.0 < fired[0].details["idle_s"] <= 20.5
    clock.advance(1)
    resolved = _step(mon, 51)
    assert [(a.kind, a.state) for a in resolved] == [(AlertKind.NO_PROGRESS, AlertState.RESOLVED)]
    # the 70 s gap did not enter the median: the next stall is caught at ~20 s again
    for step in range(52, 60):
        clock.advance(2)
        _step(mon, step)
    clock.advance(19)
    assert mon.check() == []
    clock.advance(2)
    assert [a.kind for a in mon.check()] == [AlertKind.NO_PROGRESS]


def test_repeated_step_number_is_not_progress() -> None:
    """Only a higher step number resets the stall timer."""
    mon, clock = _monitor(floor_s=5.0)
    mon.job_started("j")
    for step in (1, 2):
        clock.advance(0.1)
        _step(mon, step)
    for _ in range(10):
        clock.advance(1)
        _step(mon, 2)
    assert [a.kind for a in mon.check()] == [AlertKind.NO_PROGRESS]


def test_first_step_gets_the_start_up_threshold() -> None:
    """Before any step interval is known the threshold is first_step_s, then it scales."""
    mon, clock = _monitor(floor_s=5.0)
    mon.job_started("j")
    clock.advance(119)
    assert mon.check() == []
    clock.advance(2)
    assert [a.kind for a in mon.check()] == [AlertKind.NO_PROGRESS]


def test_throughput_collapse_is_not_a_stall() -> None:
    """C-M02 (c): steps continue but samples/s drops 500 -> 20: throughput alert only."""
    mon, clock = _monitor(floor_s=30.0)
    mon.job_started("j")
    alerts = []
    step = 0
    for rate, seconds in [(500.0, 0.128)] * 40 + [(20.0, 3.2)] * 20:
        step += 1
        clock.advance(seconds)
        alerts += mon.check()
        alerts += _step(mon, step, rate=rate)
    kinds = [(a.kind, a.state) for a in alerts]
    assert kinds == [(AlertKind.THROUGHPUT_COLLAPSE, AlertState.FIRING)]


def test_brief_hiccups_of_tiny_steps_are_not_a_collapse() -> None:
    """Millisecond steps slowed 20x for ten steps (0.2 s in all) raise nothing."""
    mon, clock = _monitor()
    mon.job_started("j")
    alerts = []
    for step, rate in enumerate([64_000.0] * 40 + [3_200.0] * 10 + [64_000.0] * 10, start=1):
        clock.advance(64 / rate)
        alerts += _step(mon, step, rate=rate)
    assert alerts == []


def test_nan_loss_fires_at_first_nan_and_not_for_empty_step() -> None:
    """C-M01: loss 2.3 -> 0.9 over steps 1-90, NaN from 91; an empty step's NaN is not an alert."""
    mon, clock = _monitor()
    mon.job_started("j")
    alerts = []
    for step in range(1, 91):
        clock.advance(1)
        alerts += _step(mon, step, loss=2.3 - 1.4 * (step - 1) / 89)
    clock.advance(1)
    alerts += _step(mon, 91, loss=float("nan"), batch=0)  # empty Poisson batch
    assert alerts == []
    for step in range(92, 102):
        clock.advance(1)
        alerts += _step(mon, step, loss=float("nan"))
    assert [(a.kind, a.state, a.details["step"]) for a in alerts] == [
        (AlertKind.NAN_LOSS, AlertState.FIRING, 92)
    ]


def test_finished_job_resolves_what_still_fires() -> None:
    """A job that ends while alerted leaves no alert firing."""
    mon, clock = _monitor(floor_s=5.0)
    mon.job_started("j")
    clock.advance(0.1)
    _step(mon, 1)
    clock.advance(6)
    assert [a.state for a in mon.check()] == [AlertState.FIRING]
    resolved = mon.job_finished("j")
    assert [(a.kind, a.state) for a in resolved] == [(AlertKind.NO_PROGRESS, AlertState.RESOLVED)]
    clock.advance(100)
    assert mon.check() == []


def test_nan_loss_resolves_on_the_next_finite_loss() -> None:
    """NAN_LOSS fires once and resolves when a non-empty step has a finite loss again."""
    mon, clock = _monitor()
    mon.job_started("j")
    transitions = []
    for step, loss in enumerate([1.0, float("inf"), float("nan"), 0.8], start=1):
        clock.advance(1)
        transitions += _step(mon, step, loss=loss)
    assert [(a.kind, a.state, a.details["step"]) for a in transitions] == [
        (AlertKind.NAN_LOSS, AlertState.FIRING, 2),
        (AlertKind.NAN_LOSS, AlertState.RESOLVED, 4),
    ]


def test_long_evaluation_that_progresses_is_not_a_stall_but_a_hung_one_is() -> None:
    """Steps every 1 s (threshold 10 s), then a 60 s test-set evaluation reporting a batch every
    5 s: no alert, and the evaluation time does not enter the step median; an evaluation that
    stops reporting fires once the threshold passes, and the next batch resolves it."""
    mon, clock = _monitor(floor_s=5.0)
    mon.job_started("j")
    for step in range(1, 21):
        clock.advance(1)
        assert _step(mon, step) == []
    alerts = []
    for _ in range(12):
        for _ in range(5):
            clock.advance(1)
            alerts += mon.check()
        alerts += mon.observe_evaluation("j")
    assert alerts == []
    clock.advance(1)
    assert _step(mon, 21) == []
    assert mon._stall.threshold("j") == 10.0  # the median step interval is still 1 s

    clock.advance(1)
    alerts = mon.observe_evaluation("j")
    for _ in range(10):
        clock.advance(1)
        alerts += mon.check()
    assert alerts == []
    clock.advance(1)
    fired = mon.check()
    assert [(a.kind, a.state) for a in fired] == [(AlertKind.NO_PROGRESS, AlertState.FIRING)]
    resolved = mon.observe_evaluation("j")
    assert [(a.kind, a.state) for a in resolved] == [(AlertKind.NO_PROGRESS, AlertState.RESOLVED)]


def test_evaluation_of_an_unwatched_job_is_ignored() -> None:
    mon, _ = _monitor()
    assert mon.observe_evaluation("unknown") == []
