"""The privacy ledger: composition by the accountant, reservations, settlement, never under-reporting."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound
from privtrain.platform.db import Database, DatasetRecord, PrivacyBudgetExceeded
from privtrain.platform.db.budget import compose
from privtrain.platform.job_states import JobState
from privtrain.trainer.accounting import epsilon_for_history

# One job of the demo's shape: σ, q, 305 steps, plus one accuracy release (σ = 20, q = 1).
JOB = [(0.82, 0.01637, 305), (20.0, 1.0, 1)]


def _pld_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Google's PLD accountant (dp-accounting) on the same (σ, q, count) history."""
    accountant = pld_privacy_accountant.PLDAccountant()
    for sigma, q, count in history:
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return accountant.get_epsilon(delta)


def _admit(db: Database, job_id: str, history: list[tuple[float, float, int]]) -> float:
    return db.budget.admit(job_id, json.dumps({"epsilon": 1.0, "delta": 1e-5}), history)


def test_jobs_compose_by_the_accountant_not_by_summing(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """Five jobs whose own ε is about 3 each fit a budget of 7: composed, not summed (15)."""
    dataset = make_dataset(db, epsilon=7.0, delta=2e-5)
    single = epsilon_for_history("prv", JOB, 1e-5)
    assert single > 2.9
    for _ in range(5):
        _admit(db, submit(db, dataset.id), JOB)
    ledger = db.budget.of_dataset(dataset.id)
    assert ledger.epsilon_committed < 7.0 < 5 * single
    assert ledger.epsilon_committed == pytest.approx(_pld_epsilon(JOB * 5, 2e-5), rel=0.01)


def test_a_plan_that_does_not_fit_is_refused_and_reserves_nothing(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.5, delta=2e-5)  # one job: 2.79, two: 3.72
    first = submit(db, dataset.id)
    committed = _admit(db, first, JOB)
    second = submit(db, dataset.id)
    with pytest.raises(PrivacyBudgetExceeded, match="would have spent") as raised:
        _admit(db, second, JOB)
    assert isinstance(raised.value, FailedPrecondition)
    assert db.budget.entry_of_job(second) is None
    assert db.jobs.get(second).plan_json is None
    assert db.budget.of_dataset(dataset.id).epsilon_committed == committed


def test_a_job_is_admitted_once(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=10.0, delta=2e-5)
    job_id = submit(db, dataset.id)
    _admit(db, job_id, JOB)
    with pytest.raises(FailedPrecondition, match="already holds a reservation"):
        _admit(db, job_id, JOB)
    with pytest.raises(NotFound):
        _admit(db, "missing", JOB)


def test_same_request_id_returns_same_job(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    first = submit(db, dataset.id, request_id="req-42")
    assert submit(db, dataset.id, request_id="req-42") == first
    assert len(db.jobs.list()) == 1


def test_four_concurrent_admissions_never_overspend(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """Reservations are composed outside the write lock and stored only if the ledger did not
    move: of four racing jobs, exactly as many as fit are admitted (two: 3.72 ≤ 4 < 4.49)."""
    dataset = make_dataset(db, epsilon=4.0, delta=2e-5)
    assert epsilon_for_history("prv", JOB * 2, 2e-5) < 4.0 < epsilon_for_history("prv", JOB * 3, 2e-5)
    fits = 2
    jobs = [submit(db, dataset.id) for _ in range(4)]
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def worker(job_id: str) -> None:
        barrier.wait()
        try:
            _admit(db, job_id, JOB)
            outcomes.append("ok")
        except PrivacyBudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker, args=(j,)) for j in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == fits and outcomes.count("refused") == 4 - fits
    assert db.budget.of_dataset(dataset.id).epsilon_committed <= 4.0


def test_record_spend_never_decreases(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=10.0, delta=2e-5)
    job_id = submit(db, dataset.id)
    _admit(db, job_id, JOB)
    assert db.budget.record_spend(job_id, 0.4) == 0.4
    assert db.budget.record_spend(job_id, 0.2) == 0.4
    with pytest.raises(InvalidInput):
        db.budget.record_spend(job_id, float("inf"))
    with pytest.raises(NotFound):
        db.budget.record_spend("missing", 0.1)


def test_settlement_charges_what_was_taken_or_the_whole_plan(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """A clean stop charges its steps; an unknown end (None) keeps charging the whole plan."""
    dataset = make_dataset(db, epsilon=10.0, delta=2e-5)
    stopped, died = submit(db, dataset.id), submit(db, dataset.id)
    _admit(db, stopped, JOB)
    _admit(db, died, JOB)
    before = db.budget.of_dataset(dataset.id).epsilon_committed
    taken = [(0.82, 0.01637, 100)]
    assert db.budget.settle(stopped, spent=taken) == dataset.ledger_id
    assert db.budget.settle(died, spent=None) == dataset.ledger_id
    after = db.budget.of_dataset(dataset.id).epsilon_committed
    assert after < before
    assert after == pytest.approx(compose("prv", db.budget.entries(dataset.ledger_id), 2e-5))
    assert db.budget.entry_of_job(stopped).charged == taken
    assert db.budget.entry_of_job(died).charged == JOB
    # Settling twice changes nothing (the first settlement stands).
    db.budget.settle(died, spent=[])
    assert db.budget.entry_of_job(died).charged == JOB


def test_job_that_never_started_settles_with_nothing(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    job_id = submit(db, dataset.id)
    _admit(db, job_id, [(1.0, 0.01, 100)])
    assert db.jobs.transition(job_id, JobState.PENDING, JobState.CANCELLED)
    db.budget.settle(job_id, spent=[])
    assert db.budget.remaining(dataset.id) == pytest.approx((3.0, 1e-5))


def test_terminal_transition_and_settlement_commit_together(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=10.0, delta=2e-5)
    job_id = submit(db, dataset.id)
    _admit(db, job_id, JOB)
    db.jobs.transition(job_id, JobState.PENDING, JobState.RUNNING)
    with pytest.raises(RuntimeError), db.transaction():
        db.jobs.transition(job_id, JobState.RUNNING, JobState.FAILED, error="worker died")
        db.budget.settle(job_id, spent=None)
        raise RuntimeError("crash before commit")
    assert db.jobs.get(job_id).state is JobState.RUNNING
    assert not db.budget.entry_of_job(job_id).settled


def test_budget_change_recomposes_at_the_new_delta(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """ε committed depends on δ: a smaller δ raises it; a budget below it is refused."""
    dataset = make_dataset(db, epsilon=10.0, delta=2e-5)
    _admit(db, submit(db, dataset.id), JOB)
    at_2e5 = db.budget.of_dataset(dataset.id).epsilon_committed
    ledger = db.budget.set_budget(dataset.ledger_id, 10.0, 1e-7)
    assert ledger.epsilon_committed > at_2e5
    with pytest.raises(FailedPrecondition, match="below what jobs already reserved"):
        db.budget.set_budget(dataset.ledger_id, ledger.epsilon_committed / 2, 1e-7)


def test_fixed_entries_from_before_composition_add_by_basic_composition() -> None:
    """A reservation migrated from the summing ledger keeps its (ε, δ): histories are composed
    at δ − Σδ_fixed, then Σε_fixed is added."""
    from privtrain.platform.db.budget import EntryRecord

    fixed = EntryRecord(id=1, ledger_id="l", dataset_id="d", job_id="j", kind="fixed", planned=[],
                        spent=[], epsilon_fixed=0.5, delta_fixed=1e-5, epsilon_spent=0.5, settled=True)
    job = EntryRecord(id=2, ledger_id="l", dataset_id="d", job_id="k", kind="job", planned=JOB,
                      spent=None, epsilon_fixed=0.0, delta_fixed=0.0, epsilon_spent=0.0, settled=False)
    assert compose("prv", [fixed, job], 2e-5) == pytest.approx(
        epsilon_for_history("prv", JOB, 1e-5) + 0.5)
    assert compose("prv", [fixed, job], 1e-5) == float("inf")


def test_a_job_cancelled_while_its_plan_was_calibrated_reserves_nothing(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """Admission composes outside the write lock; a cancel in between wins, and the late
    reservation is refused instead of charging a job that will never run."""
    dataset = make_dataset(db, epsilon=10.0, delta=2e-5)
    job_id = submit(db, dataset.id)
    assert db.jobs.transition(job_id, JobState.PENDING, JobState.CANCELLED)
    with pytest.raises(FailedPrecondition, match="no longer waiting for admission"):
        _admit(db, job_id, JOB)
    assert db.budget.entry_of_job(job_id) is None
    assert db.budget.of_dataset(dataset.id).epsilon_committed == 0.0
