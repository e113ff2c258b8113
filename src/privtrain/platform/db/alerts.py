"""Monitoring alerts: fired once per (job, kind) until resolved."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from privtrain.errors import NotFound, shown
from privtrain.platform.db._convert import alert_record, check_aware, dumps
from privtrain.platform.db.models import Alert, Job
from privtrain.platform.db.records import AlertRecord
from privtrain.platform.db.transaction import Transactions
from privtrain.platform.job_states import AlertKind, AlertState


def _firing(session: Session, job_id: str | None, kind: AlertKind) -> Alert | None:
    job_match = Alert.job_id.is_(None) if job_id is None else Alert.job_id == job_id
    return session.scalar(
        select(Alert)
        .where(job_match, Alert.kind == kind.value, Alert.state == AlertState.FIRING.value)
        .order_by(Alert.id)
        .limit(1)
    )


class AlertRepository:
    """Fire, resolve and list alerts."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def fire(
        self,
        job_id: str | None,
        kind: AlertKind,
        message: str,
        details: dict[str, Any],
        at: datetime,
    ) -> AlertRecord:
        """Raise an alert, unless one of that kind is already FIRING for the job.

        Parameters
        ----------
        job_id : str | None
            The job the alert is about; None for a service-wide alert.
        kind : AlertKind
        message : str
            One line for humans.
        details : dict
            JSON-serializable facts (thresholds, last step, ...).
        at : datetime
            When the detector saw the condition (timezone-aware).

        Returns
        -------
        AlertRecord
            The new alert, or the one already firing (unchanged).

        Raises
        ------
        NotFound
            ``job_id`` names no job.
        """
        kind = AlertKind(kind)
        row = Alert(
            job_id=job_id,
            kind=kind.value,
            state=AlertState.FIRING.value,
            message=message,
            fired_at=check_aware(at, "alert time"),
            details_json=dumps(details, "alert details"),
        )
        with self._tx.transaction() as session:
            existing = _firing(session, job_id, kind)
            if existing is not None:
                return alert_record(existing)
            if job_id is not None and session.get(Job, job_id) is None:
                raise NotFound(f"job {shown(job_id)} not found")
            try:
                # The partial unique index (job_id, kind) WHERE state='FIRING'
                # catches a concurrent fire on PostgreSQL; the savepoint keeps
                # the transaction usable so we can return the winner.
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                existing = _firing(session, job_id, kind)
                if existing is None:
                    raise
                return alert_record(existing)
            return alert_record(row)

    def resolve(self, job_id: str | None, kind: AlertKind, at: datetime) -> AlertRecord | None:
        """Resolve the FIRING alert of that kind for the job.

        Returns
        -------
        AlertRecord | None
            The resolved alert, or None when none was firing.
        """
        kind = AlertKind(kind)
        check_aware(at, "resolution time")
        with self._tx.transaction() as session:
            row = _firing(session, job_id, kind)
            if row is None:
                return None
            row.state = AlertState.RESOLVED.value
            row.resolved_at = at
            session.flush()
            return alert_record(row)

    def list(
        self, *, state: AlertState | None = None, job_id: str | None = None
    ) -> list[AlertRecord]:
        """Return alerts, oldest first, optionally filtered by state and job."""
        query = select(Alert).order_by(Alert.fired_at, Alert.id)
        if state is not None:
            query = query.where(Alert.state == AlertState(state).value)
        if job_id is not None:
            query = query.where(Alert.job_id == job_id)
        with self._tx.read() as session:
            return [alert_record(row) for row in session.scalars(query)]
