"""The privacy ledger: one budget (ε, δ) per source, spent by composing histories.

A ledger holds entries, each charging a list of (σ, q, count) Gaussian mechanisms:
a job's plan while it is unsettled and the steps it took once settled, or the
noisy row counts published at an upload. The ledger's spent ε is the composition
of every entry's history at the budget's δ by the ledger's accountant (PRV, Gopi
et al. 2021, by default; RDP as chosen), not their sum: five jobs of ε = 1 cost
about 2.2, not 5. ``fixed`` entries (reservations made before composition by the
accountant) add their (ε, δ) by basic composition: the histories are composed at
δ_budget − Σδ_fixed and Σε_fixed is added.

Rule: the ledger never under-reports. An unsettled job charges its whole plan; a
job settles at the history of the steps it took only when it stopped cleanly, and
at its whole plan when its end is unknown (a worker that died). A reservation is
composed outside the write lock and stored only if the ledger's ``version`` did not
move meanwhile; a settlement only lowers charges, so the cached ``epsilon_committed``
is refreshed after it, and until then over-reports.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound, shown
from privtrain.platform.db._convert import check_privacy_amount
from privtrain.platform.db.errors import PrivacyBudgetExceeded
from privtrain.platform.db.models import Dataset, Job, LedgerEntry, PrivacyLedger, utcnow
from privtrain.platform.db.transaction import Transactions
from privtrain.platform.job_states import JobState

if TYPE_CHECKING:  # the accountants (Opacus, torch) load when something is composed
    from privtrain.trainer.accounting import History

#: Slack for float rounding when comparing ε against a budget.
BUDGET_TOLERANCE = 1e-9
#: Reservations retried when another writer changed the ledger meanwhile.
MAX_RESERVE_ATTEMPTS = 8


@dataclass(frozen=True)
class LedgerRecord:
    """A ledger's budget and what its entries commit (ε at ``delta_budget``)."""

    id: str
    owner_common_name: str
    epsilon_budget: float
    delta_budget: float
    accountant: str
    epsilon_committed: float
    delta_committed: float

    @property
    def epsilon_remaining(self) -> float:
        """ε left; can be slightly negative through float rounding."""
        return self.epsilon_budget - self.epsilon_committed

    @property
    def delta_remaining(self) -> float:
        """δ left for histories after fixed entries took theirs."""
        return self.delta_budget - self.delta_committed


@dataclass(frozen=True)
class EntryRecord:
    """One charge against a ledger (see :class:`privtrain.platform.db.models.LedgerEntry`)."""

    id: int
    ledger_id: str
    dataset_id: str
    job_id: str | None
    kind: str
    planned: History
    spent: History | None
    epsilon_fixed: float
    delta_fixed: float
    epsilon_spent: float
    settled: bool
    created_at: datetime | None = None

    @property
    def charged(self) -> History:
        """The history this entry charges now: the plan until settled, then what was spent."""
        return self.planned if not self.settled or self.spent is None else self.spent


def compose(accountant: str, entries: Sequence[EntryRecord], delta: float) -> float:
    """ε of all ``entries`` together at ``delta`` (∞ when fixed entries used up δ).

    Raises
    ------
    InvalidInput
        The accountant fails on these histories.
    """
    fixed_delta = sum(e.delta_fixed for e in entries if e.kind == "fixed")
    fixed_epsilon = sum(e.epsilon_fixed for e in entries if e.kind == "fixed")
    history = [segment for e in entries if e.kind != "fixed" for segment in e.charged]
    if not history:
        return fixed_epsilon if fixed_delta <= delta else math.inf
    if delta - fixed_delta <= 0:
        return math.inf
    from privtrain.trainer.accounting import epsilon_for_history

    return epsilon_for_history(accountant, history, delta - fixed_delta) + fixed_epsilon


def _history(text: str | None) -> History | None:
    if text is None:
        return None
    return [(float(s), float(q), int(n)) for s, q, n in json.loads(text)]


def _dump(history: History) -> str:
    return json.dumps([[float(s), float(q), int(n)] for s, q, n in history])


def _entry(row: LedgerEntry) -> EntryRecord:
    return EntryRecord(
        id=row.id, ledger_id=row.ledger_id, dataset_id=row.dataset_id, job_id=row.job_id,
        kind=row.kind, planned=_history(row.planned_json) or [], spent=_history(row.spent_json),
        epsilon_fixed=row.epsilon_fixed, delta_fixed=row.delta_fixed,
        epsilon_spent=row.epsilon_spent, settled=row.settled, created_at=row.created_at,
    )


def _ledger(row: PrivacyLedger, entries: Sequence[EntryRecord]) -> LedgerRecord:
    return LedgerRecord(
        id=row.id, owner_common_name=row.owner_common_name, epsilon_budget=row.epsilon_budget,
        delta_budget=row.delta_budget, accountant=row.accountant,
        epsilon_committed=row.epsilon_committed,
        delta_committed=sum(e.delta_fixed for e in entries if e.kind == "fixed"),
    )


class BudgetLedger:
    """Ledgers, their entries, reservations and settlements."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    # ------------------------------------------------------------------ reading
    def _snapshot(self, session: Session, ledger_id: str) -> tuple[PrivacyLedger, list[EntryRecord]]:
        row = session.get(PrivacyLedger, ledger_id)
        if row is None:
            raise NotFound(f"privacy ledger {shown(ledger_id)} not found")
        entries = [_entry(e) for e in session.scalars(
            select(LedgerEntry).where(LedgerEntry.ledger_id == ledger_id).order_by(LedgerEntry.id))]
        return row, entries

    def ledger(self, ledger_id: str) -> LedgerRecord:
        """The ledger with ``ledger_id``.

        Raises
        ------
        NotFound
            No such ledger.
        """
        with self._tx.read() as session:
            row, entries = self._snapshot(session, ledger_id)
            return _ledger(row, entries)

    def of_dataset(self, dataset_id: str) -> LedgerRecord:
        """The ledger a dataset draws on.

        Raises
        ------
        NotFound
            No such dataset.
        """
        with self._tx.read() as session:
            ledger_id = session.scalar(select(Dataset.ledger_id).where(Dataset.id == dataset_id))
            if ledger_id is None:
                raise NotFound(f"dataset {shown(dataset_id)} not found")
            row, entries = self._snapshot(session, ledger_id)
            return _ledger(row, entries)

    def remaining(self, dataset_id: str) -> tuple[float, float]:
        """``(ε, δ)`` still available to the dataset's ledger.

        Raises
        ------
        NotFound
            No such dataset.
        """
        ledger = self.of_dataset(dataset_id)
        return ledger.epsilon_remaining, ledger.delta_remaining

    def entries(self, ledger_id: str) -> list[EntryRecord]:
        """Every entry of a ledger, oldest first."""
        with self._tx.read() as session:
            return self._snapshot(session, ledger_id)[1]

    def entry_of_job(self, job_id: str) -> EntryRecord | None:
        """A job's entry, or None before it was admitted."""
        with self._tx.read() as session:
            row = session.scalar(select(LedgerEntry).where(LedgerEntry.job_id == job_id))
            return None if row is None else _entry(row)

    # ------------------------------------------------------------------ writing
    def create(self, session: Session, *, owner_common_name: str, epsilon_budget: float,
               delta_budget: float, accountant: str = "prv") -> str:
        """Add a new, empty ledger inside the caller's transaction; returns its id.

        Raises
        ------
        InvalidInput
            A negative or non-finite budget, or an unknown accountant.
        """
        if accountant not in ("prv", "rdp"):
            raise InvalidInput(f"ledger accountant must be 'prv' or 'rdp', got {accountant!r}")
        ledger_id = str(uuid.uuid4())
        session.add(PrivacyLedger(
            id=ledger_id, owner_common_name=owner_common_name,
            epsilon_budget=check_privacy_amount(epsilon_budget, "epsilon budget"),
            delta_budget=check_privacy_amount(delta_budget, "delta budget"), accountant=accountant,
            epsilon_committed=0.0, version=0, created_at=utcnow(),
        ))
        return ledger_id

    def charge_release(self, ledger_id: str, dataset_id: str, history: History) -> float:
        """Charge a settled release (the published row counts) to a ledger; returns the new ε.

        Raises
        ------
        PrivacyBudgetExceeded
            The release does not fit the remaining budget.
        """
        return self._add(ledger_id, dataset_id, history, kind="row_counts", settled=True)

    def admit(self, job_id: str, plan_json: str, history: History | None) -> float:
        """Reserve a job's whole plan and store the plan on the job, atomically.

        The plan's history is composed with every entry of the job's ledger; the job is
        admitted only if the result fits the budget. Returns the ledger's new ε. A job
        that charges nothing (``history`` None: the privacy audit's check of itself,
        which releases nothing to anyone but the operator) only gets its plan stored.

        Raises
        ------
        PrivacyBudgetExceeded
            The composition exceeds the budget; the message states both (public figures:
            the budget and histories of plans made from published counts).
        NotFound
            No such job.
        FailedPrecondition
            The job already has a reservation, or is no longer PENDING.
        """
        with self._tx.read() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {shown(job_id)} not found")
            dataset = session.get(Dataset, job.dataset_id)
            assert dataset is not None
            ledger_id, dataset_id = dataset.ledger_id, dataset.id

        def store(session: Session) -> None:
            job = session.get(Job, job_id)
            assert job is not None
            if job.state != JobState.PENDING.value:
                # Cancelled while its plan was being calibrated: nothing to reserve.
                raise FailedPrecondition(f"job {job_id} is {job.state}, no longer waiting for admission")
            if session.scalar(select(LedgerEntry.id).where(LedgerEntry.job_id == job_id)) is not None:
                raise FailedPrecondition(f"job {job_id} already holds a reservation")
            job.plan_json = plan_json

        if history is None:
            with self._tx.transaction() as session:
                store(session)
            return self.ledger(ledger_id).epsilon_committed
        return self._add(ledger_id, dataset_id, history, kind="job", settled=False, job_id=job_id,
                         also=store)

    def _add(self, ledger_id: str, dataset_id: str, history: History, *, kind: str, settled: bool,
             job_id: str | None = None, also: Callable[[Session], None] | None = None) -> float:
        new = EntryRecord(id=0, ledger_id=ledger_id, dataset_id=dataset_id, job_id=job_id, kind=kind,
                          planned=history, spent=history if settled else None, epsilon_fixed=0.0,
                          delta_fixed=0.0, epsilon_spent=0.0, settled=settled)
        for _ in range(MAX_RESERVE_ATTEMPTS):
            with self._tx.read() as session:
                row, entries = self._snapshot(session, ledger_id)
                version, budget, delta = row.version, row.epsilon_budget, row.delta_budget
                accountant = row.accountant
            # The expensive part (PRV) runs outside the write lock.
            epsilon = compose(accountant, [*entries, new], delta)
            if epsilon > budget + BUDGET_TOLERANCE:
                spent = compose(accountant, entries, delta)
                raise PrivacyBudgetExceeded(
                    f"not enough privacy budget left: with this {'job' if kind == 'job' else kind} "
                    f"the ledger would have spent ε={epsilon:.4g} of its ε={budget:g} at δ={delta:g} "
                    f"(ε={spent:.4g} committed so far, composed by {accountant.upper()})"
                )
            with self._tx.transaction() as session:
                locked = session.scalar(
                    select(PrivacyLedger).where(PrivacyLedger.id == ledger_id).with_for_update())
                assert locked is not None
                if locked.version != version:
                    continue  # another writer changed the ledger: compose again
                if also is not None:
                    also(session)
                session.add(LedgerEntry(
                    ledger_id=ledger_id, dataset_id=dataset_id, job_id=job_id, kind=kind,
                    planned_json=_dump(history), spent_json=_dump(history) if settled else None,
                    settled=settled, created_at=utcnow(),
                ))
                locked.epsilon_committed = epsilon
                locked.version += 1
                return epsilon
        raise FailedPrecondition("the privacy ledger is changing too fast to reserve; try again")

    def record_spend(self, job_id: str, epsilon: float) -> float:
        """Record the ε a running job has spent so far (its own accountant; display only).

        ε only grows: a lower value than the stored one is ignored. Returns the stored ε.

        Raises
        ------
        NotFound
            The job holds no reservation.
        InvalidInput
            ``epsilon`` is negative or not finite.
        """
        epsilon = check_privacy_amount(epsilon, "epsilon spent")
        with self._tx.transaction() as session:
            row = session.scalar(select(LedgerEntry).where(LedgerEntry.job_id == job_id))
            if row is None:
                raise NotFound(f"no privacy reservation for job {shown(job_id)}")
            row.epsilon_spent = max(row.epsilon_spent, epsilon)
            return row.epsilon_spent

    def settle(self, job_id: str, *, spent: History | None,
               epsilon_spent: float | None = None) -> str | None:
        """Close a job's reservation; returns its ledger's id (None for a job never admitted).

        Parameters
        ----------
        spent : History or None
            The steps and releases the job provably took; None when that is unknown
            (the job keeps charging its whole plan).
        epsilon_spent : float, optional
            The job's own final ε, for display.

        The ledger's cached ε is recomputed afterwards (:meth:`refresh`), at once unless
        the call joined a caller's transaction: the caller refreshes after committing.
        """
        with self._tx.transaction() as session:
            row = session.scalar(select(LedgerEntry).where(LedgerEntry.job_id == job_id))
            if row is None or row.settled:
                return None
            row.settled = True
            row.spent_json = row.planned_json if spent is None else _dump(spent)
            if epsilon_spent is not None:
                row.epsilon_spent = max(row.epsilon_spent, check_privacy_amount(epsilon_spent, "epsilon"))
            ledger = session.get(PrivacyLedger, row.ledger_id)
            assert ledger is not None
            ledger.version += 1
            ledger_id = row.ledger_id
        if not self._tx.in_transaction():
            self.refresh(ledger_id)
        return ledger_id

    def refresh(self, ledger_id: str) -> float:
        """Recompute a ledger's cached ε from its entries (stored unless a writer moved it)."""
        with self._tx.read() as session:
            row, entries = self._snapshot(session, ledger_id)
            version, accountant, delta = row.version, row.accountant, row.delta_budget
        epsilon = compose(accountant, entries, delta)
        with self._tx.transaction() as session:
            locked = session.scalar(
                select(PrivacyLedger).where(PrivacyLedger.id == ledger_id).with_for_update())
            if locked is not None and locked.version == version:
                locked.epsilon_committed = epsilon
        return epsilon

    def set_budget(self, ledger_id: str, epsilon: float, delta: float) -> LedgerRecord:
        """Change a ledger's budget; its entries are composed again at the new δ.

        Raises
        ------
        FailedPrecondition
            The new budget is below what is already committed at the new δ.
        NotFound
            No such ledger.
        """
        epsilon = check_privacy_amount(epsilon, "epsilon budget")
        delta = check_privacy_amount(delta, "delta budget")
        for _ in range(MAX_RESERVE_ATTEMPTS):
            with self._tx.read() as session:
                row, entries = self._snapshot(session, ledger_id)
                version, accountant = row.version, row.accountant
            committed = compose(accountant, entries, delta)
            if committed > epsilon + BUDGET_TOLERANCE:
                raise FailedPrecondition(
                    f"new budget (epsilon={epsilon:g}, delta={delta:g}) is below what jobs already "
                    f"reserved or spent (epsilon={committed:.4g} at delta={delta:g})"
                )
            with self._tx.transaction() as session:
                locked = session.scalar(
                    select(PrivacyLedger).where(PrivacyLedger.id == ledger_id).with_for_update())
                assert locked is not None
                if locked.version != version:
                    continue
                locked.epsilon_budget, locked.delta_budget = epsilon, delta
                locked.epsilon_committed = committed
                locked.version += 1
            return self.ledger(ledger_id)
        raise FailedPrecondition("the privacy ledger is changing too fast; try again")
