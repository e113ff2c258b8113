"""The privacy ledger: reservations and spend of (ε, δ) per dataset.

Rule: the ledger never under-reports. A job counts against its dataset's
budget with ``max(reserved, spent)`` while it is unsettled and with ``spent``
once settled; a job whose spend is unknown (failed or killed mid-run) settles
at its full reservation. δ is a per-job constant of the accountant, so a
settled job is charged its reserved δ unless it spent no ε at all (it never
took a step).
"""

from __future__ import annotations

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from privtrain.errors import NotFound
from privtrain.platform.db._convert import check_privacy_amount
from privtrain.platform.db.models import Dataset, PrivacySpend
from privtrain.platform.db.records import SpendRecord
from privtrain.platform.db.transaction import Transactions

#: Slack for float rounding when comparing ε or δ sums against a budget.
BUDGET_TOLERANCE = 1e-9

_EPSILON_CHARGED = case(
    (PrivacySpend.settled, PrivacySpend.epsilon_spent),
    (PrivacySpend.epsilon_spent > PrivacySpend.epsilon_reserved, PrivacySpend.epsilon_spent),
    else_=PrivacySpend.epsilon_reserved,
)
_DELTA_CHARGED = case(
    (PrivacySpend.settled & (PrivacySpend.epsilon_spent <= 0), 0.0),
    else_=PrivacySpend.delta_reserved,
)


def committed(session: Session, dataset_id: str) -> tuple[float, float]:
    """Return the (ε, δ) that jobs on ``dataset_id`` hold or have spent."""
    epsilon, delta = session.execute(
        select(
            func.coalesce(func.sum(_EPSILON_CHARGED), 0.0),
            func.coalesce(func.sum(_DELTA_CHARGED), 0.0),
        ).where(PrivacySpend.dataset_id == dataset_id)
    ).one()
    return float(epsilon), float(delta)


def remaining_in(session: Session, dataset: Dataset) -> tuple[float, float]:
    """Return the (ε, δ) left on ``dataset`` as seen by ``session``."""
    epsilon, delta = committed(session, dataset.id)
    return dataset.epsilon_budget - epsilon, dataset.delta_budget - delta


def _spend_record(row: PrivacySpend) -> SpendRecord:
    return SpendRecord(
        job_id=row.job_id,
        dataset_id=row.dataset_id,
        epsilon_reserved=row.epsilon_reserved,
        delta_reserved=row.delta_reserved,
        epsilon_spent=row.epsilon_spent,
        settled=row.settled,
    )


class BudgetLedger:
    """Read the remaining budget; record and settle what jobs spend.

    Reservations are made by :meth:`JobRepository.submit`, in the same
    transaction that creates the job.
    """

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def remaining(self, dataset_id: str) -> tuple[float, float]:
        """Return ``(ε, δ)`` still available on a dataset.

        Returns
        -------
        tuple[float, float]
            Budget minus, over its jobs, reserved (unsettled) or spent
            (settled) amounts. Can be slightly negative through float
            rounding, never by more than the tolerance of 1e-9.

        Raises
        ------
        NotFound
            No such dataset.
        """
        with self._tx.read() as session:
            dataset = session.get(Dataset, dataset_id)
            if dataset is None:
                raise NotFound(f"dataset {dataset_id!r} not found")
            return remaining_in(session, dataset)

    def spend(self, job_id: str) -> SpendRecord:
        """Return a job's reservation and spend; raise NotFound if it has none."""
        with self._tx.read() as session:
            row = session.get(PrivacySpend, job_id)
            if row is None:
                raise NotFound(f"no privacy reservation for job {job_id!r}")
            return _spend_record(row)

    def record_spend(self, job_id: str, epsilon: float) -> float:
        """Record the ε a running job has spent so far.

        ε only grows: a value lower than the stored one is ignored (a late or
        reordered report must not lower the ledger). A value above the
        reservation is stored anyway, because it is the truth.

        Parameters
        ----------
        job_id : str
        epsilon : float
            Total ε spent by the job so far (not an increment).

        Returns
        -------
        float
            The stored ε after the call.

        Raises
        ------
        NotFound
            The job has no reservation.
        InvalidInput
            ``epsilon`` is negative or not finite.
        """
        epsilon = check_privacy_amount(epsilon, "epsilon spent")
        with self._tx.transaction() as session:
            # One conditional UPDATE: monotone even against concurrent reports.
            session.execute(
                update(PrivacySpend)
                .where(PrivacySpend.job_id == job_id, PrivacySpend.epsilon_spent < epsilon)
                .values(epsilon_spent=epsilon)
            )
            stored = session.scalar(
                select(PrivacySpend.epsilon_spent).where(PrivacySpend.job_id == job_id)
            )
            if stored is None:
                raise NotFound(f"no privacy reservation for job {job_id!r}")
            return float(stored)

    def settle(self, job_id: str, *, epsilon_spent: float | None) -> float:
        """Close a job's reservation.

        Parameters
        ----------
        job_id : str
        epsilon_spent : float | None
            Final ε of a finished job; the stored value is kept if larger.
            None when the spend is unknown (failed or killed mid-run): the
            job is charged its full reservation, or its recorded spend if
            larger. A job that never took a step may settle with 0.

        Returns
        -------
        float
            The ε the job is charged from now on.

        Raises
        ------
        NotFound
            The job has no reservation.
        """
        given = None if epsilon_spent is None else check_privacy_amount(epsilon_spent, "epsilon")
        with self._tx.transaction() as session:
            row = session.scalar(
                select(PrivacySpend).where(PrivacySpend.job_id == job_id).with_for_update()
            )
            if row is None:
                raise NotFound(f"no privacy reservation for job {job_id!r}")
            floor = row.epsilon_reserved if given is None else given
            row.epsilon_spent = max(row.epsilon_spent, floor)
            row.settled = True
            return row.epsilon_spent
