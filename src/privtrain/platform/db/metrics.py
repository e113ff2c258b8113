"""Per-step training metrics, idempotent on (job, step)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Insert, func, select
from sqlalchemy.dialects import postgresql, sqlite

from privtrain.errors import FailedPrecondition, NotFound, shown
from privtrain.platform.db.models import Job, JobMetric, utcnow
from privtrain.platform.db.records import StepMetric
from privtrain.platform.db.transaction import Transactions


def _metric_row(job_id: str, metric: StepMetric, now: Any) -> dict[str, Any]:
    nan = metric.loss_is_nan
    return {
        "job_id": job_id,
        "step": metric.step,
        "epoch": metric.epoch,
        "loss": None if nan else metric.loss,
        "loss_is_nan": nan,
        "batch_size": metric.batch_size,
        "samples_per_s": metric.samples_per_s,
        "epsilon": metric.epsilon,
        "created_at": now,
    }


def _step_metric(row: JobMetric) -> StepMetric:
    return StepMetric(
        step=row.step,
        epoch=row.epoch,
        loss=math.nan if row.loss_is_nan else row.loss,
        batch_size=row.batch_size,
        samples_per_s=row.samples_per_s,
        epsilon=row.epsilon,
    )


class MetricRepository:
    """Store and read the step metrics of jobs."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def add_steps(self, job_id: str, rows: Sequence[StepMetric]) -> None:
        """Store step metrics; steps already stored for the job are left as they are.

        Re-sending a batch after a timeout or a worker restart is therefore
        harmless.

        Raises
        ------
        NotFound
            No such job.
        """
        if not rows:
            return
        now = utcnow()
        values = [_metric_row(job_id, metric, now) for metric in rows]
        with self._tx.transaction() as session:
            # Checked first: a foreign-key failure would abort the whole
            # transaction on PostgreSQL and say less.
            if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
                raise NotFound(f"job {shown(job_id)} not found")
            statement = _insert_ignoring_duplicates(session.get_bind().dialect.name)
            session.execute(statement, values)

    def latest(self, job_id: str) -> StepMetric | None:
        """Return the metrics of the highest step of a job, or None before any."""
        query = (
            select(JobMetric)
            .where(JobMetric.job_id == job_id)
            .order_by(JobMetric.step.desc())
            .limit(1)
        )
        with self._tx.read() as session:
            row = session.scalar(query)
            return None if row is None else _step_metric(row)

    def count(self, job_id: str) -> int:
        """Return how many steps of a job are stored."""
        query = select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job_id)
        with self._tx.read() as session:
            return int(session.scalar(query) or 0)


def _insert_ignoring_duplicates(dialect_name: str) -> Insert:
    if dialect_name == "postgresql":
        return postgresql.insert(JobMetric).on_conflict_do_nothing(
            index_elements=["job_id", "step"]
        )
    if dialect_name == "sqlite":
        return sqlite.insert(JobMetric).on_conflict_do_nothing(index_elements=["job_id", "step"])
    raise FailedPrecondition(
        f"database dialect {dialect_name!r} is not supported; use SQLite or PostgreSQL"
    )
