"""Event log, step metrics and alerts."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from privtrain.errors import InvalidInput, NotFound
from privtrain.platform.db import Database, DatasetRecord, StepMetric
from privtrain.platform.job_states import AlertKind, AlertState

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def job_id(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> str:
    return submit(db, make_dataset(db).id)


def _step(step: int, loss: float | None = 1.0) -> StepMetric:
    return StepMetric(
        step=step, epoch=0, loss=loss, batch_size=64, samples_per_s=500.0, epsilon=0.01 * step
    )


def test_events_are_read_in_order_after_a_cursor(db: Database, job_id: str) -> None:
    first = db.events.append(job_id, "state", {"state": "PENDING"})
    db.events.append_many([(job_id, "log", {"line": i}) for i in range(5)])
    events = db.events.since(job_id, 0)
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert events[0].id == first and events[0].payload == {"state": "PENDING"}
    assert [event.payload.get("line") for event in events[1:]] == [0, 1, 2, 3, 4]
    page = db.events.since(job_id, events[1].id, limit=2)
    assert [event.payload["line"] for event in page] == [1, 2]
    assert db.events.since(job_id, events[-1].id) == []


def test_event_for_unknown_job_or_bad_payload_is_refused(db: Database, job_id: str) -> None:
    with pytest.raises(NotFound):
        db.events.append("missing", "log", {})
    with pytest.raises(NotFound):
        db.events.append_many([(job_id, "log", {}), ("missing", "log", {})])
    with pytest.raises(InvalidInput):
        db.events.append(job_id, "log", {"x": object()})
    assert db.events.since(job_id, 0) == []


def test_add_steps_is_idempotent_on_job_and_step(db: Database, job_id: str) -> None:
    db.metrics.add_steps(job_id, [_step(1), _step(2)])
    db.metrics.add_steps(job_id, [_step(2, loss=9.0), _step(3)])
    assert db.metrics.count(job_id) == 3
    assert db.metrics.latest(job_id) == _step(3)
    with pytest.raises(NotFound):
        db.metrics.add_steps("missing", [_step(1)])


def test_nan_loss_and_missing_loss_stay_distinct(db: Database, job_id: str) -> None:
    """C-M01 / C-T01: a NaN loss reads back as NaN, an unreported one as None."""
    db.metrics.add_steps(job_id, [_step(1, loss=math.nan)])
    latest = db.metrics.latest(job_id)
    assert latest is not None and latest.loss is not None and math.isnan(latest.loss)
    db.metrics.add_steps(job_id, [_step(2, loss=None)])
    latest = db.metrics.latest(job_id)
    assert latest is not None and latest.loss is None


def test_latest_is_none_before_any_step(db: Database, job_id: str) -> None:
    assert db.metrics.latest(job_id) is None
    assert db.metrics.count(job_id) == 0


def test_alert_fires_once_while_firing_and_resolves(db: Database, job_id: str) -> None:
    first = db.alerts.fire(job_id, AlertKind.NAN_LOSS, "loss is NaN at step 91", {"step": 91}, T0)
    again = db.alerts.fire(
        job_id,
        AlertKind.NAN_LOSS,
        "loss is NaN at step 92",
        {"step": 92},
        T0 + timedelta(seconds=5),
    )
    assert again == first
    assert first.state is AlertState.FIRING and first.details == {"step": 91}
    other = db.alerts.fire(job_id, AlertKind.NO_PROGRESS, "no step for 600 s", {}, T0)
    assert other.id != first.id
    assert len(db.alerts.list(state=AlertState.FIRING, job_id=job_id)) == 2

    resolved = db.alerts.resolve(job_id, AlertKind.NAN_LOSS, T0 + timedelta(minutes=1))
    assert resolved is not None and resolved.id == first.id
    assert resolved.state is AlertState.RESOLVED
    assert resolved.resolved_at == T0 + timedelta(minutes=1)
    assert db.alerts.resolve(job_id, AlertKind.NAN_LOSS, T0) is None
    assert [a.kind for a in db.alerts.list(state=AlertState.FIRING)] == [AlertKind.NO_PROGRESS]

    # After resolution the same condition may fire again, as a new alert.
    refired = db.alerts.fire(job_id, AlertKind.NAN_LOSS, "NaN again", {}, T0 + timedelta(hours=1))
    assert refired.id not in (first.id, other.id)
    assert len(db.alerts.list(job_id=job_id)) == 3


def test_service_wide_alert_has_no_job(db: Database, job_id: str) -> None:
    alert = db.alerts.fire(None, AlertKind.DEAD_WORKER, "worker 17 gone", {"pid": 17}, T0)
    assert db.alerts.fire(None, AlertKind.DEAD_WORKER, "still gone", {}, T0) == alert
    assert alert.job_id is None
    assert db.alerts.list(job_id=job_id) == []
    with pytest.raises(NotFound):
        db.alerts.fire("missing", AlertKind.DEAD_WORKER, "x", {}, T0)
    with pytest.raises(InvalidInput, match="timezone"):
        db.alerts.fire(job_id, AlertKind.DEAD_WORKER, "x", {}, datetime(2024, 5, 1))
