"""The job queue: worker hosts claim admitted jobs under a lease and renew it by heartbeat.

A job is claimable when it is PENDING with an admitted plan, or RUNNING without an
owner (its last worker ended without an outcome, or its host stopped renewing) once
``lease_expires_at`` has passed. A claim locks the row with ``SELECT ... FOR UPDATE
SKIP LOCKED`` on PostgreSQL, so hosts on several machines never take the same job and
never wait on each other; SQLite serializes writers (``BEGIN IMMEDIATE``). Every change
a host makes to a job it runs is conditional on still holding the lease, so a host
that lost it (its lease expired and the reconciler handed the job on) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, case, or_, select, update

from privtrain.platform.db._convert import job_record
from privtrain.platform.db.models import Job, utcnow
from privtrain.platform.db.records import JobRecord
from privtrain.platform.db.transaction import Transactions
from privtrain.platform.job_states import JobState


@dataclass(frozen=True)
class Heartbeat:
    """What a lease renewal found: whether the caller still holds the job, and whether
    its cancel was asked for."""

    held: bool
    cancel_requested: bool


class JobLeases:
    """Claim, renew, give back and reclaim the leases of running jobs."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def claim(self, owner: str, lease_s: float, max_failed_attempts: int) -> JobRecord | None:
        """Take the oldest claimable job for ``owner`` for ``lease_s`` seconds, or None.

        A PENDING job becomes RUNNING; a RUNNING one (to be resumed) stays RUNNING. Jobs
        whose cancel was asked for, and RUNNING jobs that already failed
        ``max_failed_attempts`` times, are left to the reconciler.
        """
        now = utcnow()
        claimable = or_(
            and_(Job.state == JobState.PENDING.value, Job.plan_json.is_not(None)),
            and_(Job.state == JobState.RUNNING.value, Job.lease_owner.is_(None),
                 or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now),
                 Job.failed_attempts < max_failed_attempts),
        )
        query = (
            select(Job)
            .where(claimable, Job.cancel_requested_at.is_(None))
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        with self._tx.transaction() as session:
            row = session.scalars(query).first()
            if row is None:
                return None
            row.state = JobState.RUNNING.value
            row.started_at = row.started_at or now
            row.lease_owner = owner
            row.lease_expires_at = now + timedelta(seconds=lease_s)
            row.attempts += 1
            session.flush()
            return job_record(row)

    def heartbeat(self, job_id: str, owner: str, lease_s: float, *,
                  worker_pid: int | None = None) -> Heartbeat:
        """Extend ``owner``'s lease on a RUNNING job by ``lease_s`` seconds from now."""
        values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease_s)}
        if worker_pid is not None:
            values["worker_pid"] = worker_pid
        with self._tx.transaction() as session:
            held = _update(session, _held(job_id, owner), values)
            cancel = session.scalar(select(Job.cancel_requested_at).where(Job.id == job_id))
        return Heartbeat(held=held, cancel_requested=cancel is not None)

    def progress(self, job_id: str, steps: int, releases: int) -> None:
        """Raise ``steps_done`` / ``releases_done`` to at least these (they never go down)."""
        with self._tx.transaction() as session:
            _update(session, Job.id == job_id, {
                "steps_done": case((Job.steps_done < steps, steps), else_=Job.steps_done),
                "releases_done": case((Job.releases_done < releases, releases),
                                      else_=Job.releases_done),
            })

    def give_back(self, job_id: str, owner: str, *, died: bool, retry_after_s: float = 0.0) -> bool:
        """Leave a RUNNING job ``owner`` holds in the queue, to be resumed after ``retry_after_s``.

        ``died`` counts the attempt as failed (its worker ended without an outcome).
        Returns False when ``owner`` no longer held it.
        """
        values: dict[str, Any] = {"lease_owner": None, "worker_pid": None,
                                  "lease_expires_at": utcnow() + timedelta(seconds=retry_after_s)}
        if died:
            values["failed_attempts"] = Job.failed_attempts + 1
        with self._tx.transaction() as session:
            return _update(session, _held(job_id, owner), values)

    def owned(self) -> list[JobRecord]:
        """RUNNING jobs some host holds (the reconciler checks this host's dead processes)."""
        query = select(Job).where(Job.state == JobState.RUNNING.value, Job.lease_owner.is_not(None))
        with self._tx.read() as session:
            return [job_record(row) for row in session.scalars(query)]

    def reclaim(self, job: JobRecord) -> bool:
        """Take a job back from an owner that stopped renewing (its host died or lost the
        database), to be resumed at once.

        Not counted as a failed attempt: the host, not the job, failed (a job whose own
        worker dies is counted by the host that saw it, :meth:`give_back`). Compare-and-set
        on the owner and expiry read in ``job``: a heartbeat that came in meanwhile wins.
        Returns True when the job is now unowned and queued for resume.
        """
        condition = and_(Job.id == job.id, Job.state == JobState.RUNNING.value,
                         Job.lease_owner == job.lease_owner,
                         Job.lease_expires_at == job.lease_expires_at)
        with self._tx.transaction() as session:
            return _update(session, condition, {
                "lease_owner": None, "worker_pid": None, "lease_expires_at": utcnow(),
            })

    def unowned(self) -> list[JobRecord]:
        """RUNNING jobs no host holds: waiting for a resume, a cancel or their last failure."""
        query = select(Job).where(Job.state == JobState.RUNNING.value, Job.lease_owner.is_(None))
        with self._tx.read() as session:
            return [job_record(row) for row in session.scalars(query)]

    def request_cancel(self, job_id: str) -> bool:
        """Mark a RUNNING job for cancellation; its host sees it on its next heartbeat."""
        with self._tx.transaction() as session:
            return _update(session, and_(Job.id == job_id, Job.state == JobState.RUNNING.value,
                                         Job.cancel_requested_at.is_(None)),
                           {"cancel_requested_at": utcnow()})


def _held(job_id: str, owner: str) -> Any:
    return and_(Job.id == job_id, Job.state == JobState.RUNNING.value, Job.lease_owner == owner)


def _update(session: Any, condition: Any, values: dict[str, Any]) -> bool:
    statement = update(Job).where(condition).values(**values).execution_options(
        synchronize_session=False)
    return cast(CursorResult[Any], session.execute(statement)).rowcount == 1
