"""Jobs: idempotent submission, and the state machine in SQL."""

from __future__ import annotations

import uuid
from types import EllipsisType
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from privtrain.errors import NotFound, shown
from privtrain.platform.db._convert import check_json_text, dumps, job_record
from privtrain.platform.db.models import Dataset, Job, utcnow
from privtrain.platform.db.records import JobRecord
from privtrain.platform.db.transaction import Transactions
from privtrain.platform.job_states import TERMINAL_STATES, JobState, check_transition


class JobRepository:
    """Submit jobs, read them, and move them through their states."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def submit(
        self,
        *,
        request_id: str | None,
        dataset_id: str,
        submitter_common_name: str,
        spec_json: str,
        kind: str = "train",
        audit_json: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Create a PENDING job; its privacy plan is reserved later, when it is admitted.

        Parameters
        ----------
        request_id : str | None
            Client-chosen idempotency key, scoped to the submitter: a retry with a key
            the same submitter used returns the job created the first time.
        dataset_id : str
        submitter_common_name : str
            Common name of the trainer's client certificate.
        spec_json : str
            The job spec, a JSON object.
        kind : str
            ``train`` or ``audit``.
        audit_json : str, optional
            The audit's settings (``kind == "audit"``).

        Returns
        -------
        tuple[JobRecord, bool]
            The job, and True when this call created it.

        Raises
        ------
        NotFound
            No such dataset.
        InvalidInput
            Malformed spec.
        """
        check_json_text(spec_json, "job spec")
        with self._tx.transaction() as session:
            if session.get(Dataset, dataset_id) is None:
                raise NotFound(f"dataset {shown(dataset_id)} not found")
            existing = self._by_request_id(session, submitter_common_name, request_id)
            if existing is not None:
                return existing, False
            job = Job(
                id=str(uuid.uuid4()),
                request_id=request_id,
                dataset_id=dataset_id,
                submitter_common_name=submitter_common_name,
                kind=kind,
                spec_json=spec_json,
                audit_json=audit_json,
                state=JobState.PENDING.value,
                created_at=utcnow(),
            )
            try:
                # Savepoint: a concurrent submit with the same request_id makes this insert
                # fail; we then answer with the winner's job.
                with session.begin_nested():
                    session.add(job)
                    session.flush()
            except IntegrityError:
                existing = self._by_request_id(session, submitter_common_name, request_id)
                if existing is None:
                    raise
                return existing, False
            return job_record(job), True

    @staticmethod
    def _by_request_id(session: Session, submitter: str, request_id: str | None) -> JobRecord | None:
        if request_id is None:
            return None
        row = session.scalar(select(Job).where(Job.submitter_common_name == submitter,
                                               Job.request_id == request_id))
        return None if row is None else job_record(row)

    def get(self, job_id: str) -> JobRecord:
        """Return the job with ``job_id``; raise NotFound if there is none."""
        with self._tx.read() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise NotFound(f"job {shown(job_id)} not found")
            return job_record(row)

    def unfinished(self) -> list[JobRecord]:
        """Return PENDING and RUNNING jobs, oldest first (recovery at server start)."""
        query = (
            select(Job)
            .where(Job.state.in_([JobState.PENDING.value, JobState.RUNNING.value]))
            .order_by(Job.created_at, Job.id)
        )
        with self._tx.read() as session:
            return [job_record(row) for row in session.scalars(query)]

    def list(self, state: JobState | None = None, dataset_id: str | None = None) -> list[JobRecord]:
        """Return jobs, oldest first, optionally filtered by state and dataset."""
        query = select(Job).order_by(Job.created_at, Job.id)
        if state is not None:
            query = query.where(Job.state == JobState(state).value)
        if dataset_id is not None:
            query = query.where(Job.dataset_id == dataset_id)
        with self._tx.read() as session:
            return [job_record(row) for row in session.scalars(query)]

    def transition(
        self,
        job_id: str,
        expected: JobState,
        new: JobState,
        *,
        error: str | None = None,
        error_detail: str | None = None,
        worker_pid: int | None = None,
        owner: str | None | EllipsisType = ...,
    ) -> bool:
        """Move a job from ``expected`` to ``new`` as compare-and-set.

        Runs ``UPDATE jobs SET state=:new ... WHERE id=:id AND state=:expected``
        and checks the row count, so of two racing changes (a cancel and a
        start) exactly one wins. Entering RUNNING sets ``started_at``;
        entering a terminal state sets ``finished_at``.

        Parameters
        ----------
        job_id : str
        expected, new : JobState
            The state the caller believes the job is in, and the target.
        error : str | None
            Stored when given (a failure reason its submitter may read).
        error_detail : str | None
            Stored when given (the operator's version of the reason).
        worker_pid : int | None
            Stored when given (the worker process running the job).
        owner : str or None, optional
            When given, the job must also be held by this worker host (None: by no
            host), so a host whose lease was handed on cannot finish the job.
            Entering a terminal state clears the lease.

        Returns
        -------
        bool
            True when the job was in ``expected`` and is now in ``new``;
            False (and nothing changed) when it was in another state.

        Raises
        ------
        InvalidTransition
            ``expected -> new`` is not an allowed transition (this includes
            every change out of a terminal state).
        NotFound
            No such job.
        """
        expected, new = JobState(expected), JobState(new)
        check_transition(expected, new)
        now = utcnow()
        values: dict[str, Any] = {"state": new.value}
        if new is JobState.RUNNING:
            values["started_at"] = now
        if new in TERMINAL_STATES:
            values.update(finished_at=now, lease_owner=None, lease_expires_at=None)
        if error is not None:
            values["error"] = error
        if error_detail is not None:
            values["error_detail"] = error_detail
        if worker_pid is not None:
            values["worker_pid"] = worker_pid
        condition = [Job.id == job_id, Job.state == expected.value]
        if owner is not ...:
            condition.append(Job.lease_owner.is_(None) if owner is None else Job.lease_owner == owner)
        statement = (
            update(Job)
            .where(*condition)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        with self._tx.transaction() as session:
            result = cast(CursorResult[Any], session.execute(statement))
            if result.rowcount == 1:
                return True
            if session.scalar(select(Job.id).where(Job.id == job_id)) is None:
                raise NotFound(f"job {shown(job_id)} not found")
            return False

    def set_result(self, job_id: str, result: dict[str, Any]) -> None:
        """Store a job's result (a JSON-serializable dict).

        Raises
        ------
        NotFound
            No such job.
        InvalidInput
            ``result`` is not JSON-serializable (NaN included).
        """
        payload = dumps(result, "job result")
        statement = (
            update(Job)
            .where(Job.id == job_id)
            .values(result_json=payload)
            .execution_options(synchronize_session=False)
        )
        with self._tx.transaction() as session:
            if cast(CursorResult[Any], session.execute(statement)).rowcount != 1:
                raise NotFound(f"job {shown(job_id)} not found")
