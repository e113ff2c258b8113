"""Ending a job: its terminal state and its ledger settlement in one transaction.

The rule for what a job is charged (``docs/privacy.md``, "What a job is charged"):
every step and accuracy release whose message reached the server, over all attempts,
is charged; a resumed attempt replays the steps after its checkpoint with the same
secret randomness (the same batches and noise), so a step is counted once however
often it ran; a job that succeeded is charged its whole plan.
"""

from __future__ import annotations

import logging
from types import EllipsisType
from typing import Any

from privtrain.platform.db.records import JobRecord
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub
from privtrain.platform.job_states import JobState
from privtrain.trainer.accounting import History
from privtrain.trainer.plan import JobPlan

log = logging.getLogger(__name__)


def spent_history(job: JobRecord) -> History:
    """The (σ, q, count) history of the steps and releases of ``job`` that reached the server."""
    if job.plan is None:
        return []
    return JobPlan.from_dict(job.plan).history(job.steps_done, job.releases_done)


def finish_job(db: Database, hub: EventHub, job_id: str, expected: JobState, new: JobState,
               error: str | None, *, spent: History | None, detail: str | None = None,
               epsilon: float | None = None, owner: str | None | EllipsisType = ...,
               result: dict[str, Any] | None = None) -> bool:
    """Move the job to ``new`` and settle its reservation at ``spent``, atomically.

    Parameters
    ----------
    spent : History or None
        What the job is charged; None charges its whole plan.
    epsilon : float, optional
        The job's own final ε (recorded as spent), when it has one.
    owner : str or None, optional
        The worker host that must still hold the job (None: no host), as in
        :meth:`privtrain.platform.db.jobs.JobRepository.transition`.
    result : dict, optional
        The job's result, stored in the same transaction (a job that succeeded).

    Returns
    -------
    bool
        True when this call moved the job (False: it was not in ``expected``, or not
        held by ``owner``; nothing changed).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        The database could not be written (the caller retries).
    """
    ledger = None
    with db.transaction():
        changed = db.jobs.transition(job_id, expected, new, error=error, error_detail=detail,
                                     owner=owner)
        if changed:
            ledger = db.budget.settle(job_id, spent=spent, epsilon_spent=epsilon)
            if result is not None:
                db.jobs.set_result(job_id, result)
    if ledger is not None:
        db.budget.refresh(ledger)
    if changed:
        hub.publish(job_id, "state", {"state": new.value, "error": error or ""})
        # The trainer's message only: the worker's own (error_detail) may quote private rows.
        log.info("job %s %s%s", job_id, new.value, f": {error}" if error else "")
    return changed
