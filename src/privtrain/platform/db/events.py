"""Append-only per-job event log, read by watchers with an id cursor."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from privtrain.errors import InvalidInput, NotFound, shown
from privtrain.platform.db._convert import dumps, event_record
from privtrain.platform.db.models import Job, JobEvent, utcnow
from privtrain.platform.db.records import EventRecord
from privtrain.platform.db.transaction import Transactions


def _lock_jobs(session: Session, job_ids: Iterable[str]) -> None:
    """Lock job rows (sorted, so two writers never deadlock) or raise NotFound.

    On PostgreSQL ids come from a sequence and are handed out before commit,
    so two concurrent appends to one job could commit out of id order and a
    watcher reading ``since(after_id)`` would skip the slower one. Holding
    the job row (``FOR NO KEY UPDATE``, which does not block foreign-key
    checks of metric inserts) makes ids of one job commit in order. SQLite
    ignores the clause; its writers are serialized anyway.
    """
    wanted = sorted(set(job_ids))
    found = set(
        session.scalars(
            select(Job.id)
            .where(Job.id.in_(wanted))
            .order_by(Job.id)
            .with_for_update(key_share=True)
        )
    )
    missing = [job_id for job_id in wanted if job_id not in found]
    if missing:
        raise NotFound(f"job {shown(missing[0])} not found")


class EventRepository:
    """Append events to a job's log and read them back in order."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def append(self, job_id: str, kind: str, payload: dict[str, Any]) -> int:
        """Append one event; return its id (ids grow within a job's log).

        Raises
        ------
        NotFound
            No such job.
        InvalidInput
            ``payload`` is not JSON-serializable.
        """
        row = JobEvent(
            job_id=job_id,
            kind=kind,
            payload_json=dumps(payload, "event payload"),
            created_at=utcnow(),
        )
        with self._tx.transaction() as session:
            _lock_jobs(session, [job_id])
            session.add(row)
            session.flush()
            return row.id

    def append_many(self, items: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Append ``(job_id, kind, payload)`` events in one transaction, in order."""
        if not items:
            return
        now = utcnow()
        rows = [
            JobEvent(
                job_id=job_id,
                kind=kind,
                payload_json=dumps(payload, "event payload"),
                created_at=now,
            )
            for job_id, kind, payload in items
        ]
        with self._tx.transaction() as session:
            _lock_jobs(session, (row.job_id for row in rows))
            for row in rows:
                # One flush per row keeps ids in the order the caller gave.
                session.add(row)
                session.flush()

    def since(self, job_id: str, after_id: int, limit: int = 1000) -> list[EventRecord]:
        """Return up to ``limit`` events of a job with id > ``after_id``, by id.

        Pass the last id you saw as ``after_id`` (0 for the start) to follow
        the log.
        """
        if limit <= 0:
            raise InvalidInput(f"limit must be positive, got {limit}")
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        with self._tx.read() as session:
            return [event_record(row) for row in session.scalars(query)]
