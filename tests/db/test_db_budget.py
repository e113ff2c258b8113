"""The privacy ledger: reservations, idempotent submission, monotone spend, settlement."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound
from privtrain.platform.db import Database, DatasetRecord, JobRecord, PrivacyBudgetExceeded
from privtrain.platform.job_states import JobState


def test_job_over_remaining_budget_is_refused_with_both_numbers(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0)
    submit(db, dataset.id, epsilon=2.5)
    with pytest.raises(PrivacyBudgetExceeded) as raised:
        submit(db, dataset.id, epsilon=0.75)
    message = str(raised.value)
    assert "epsilon=0.75" in message and "epsilon=0.5" in message
    assert isinstance(raised.value, FailedPrecondition)
    assert len(db.jobs.list()) == 1


def test_delta_is_checked_too(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=10.0, delta=1e-5)
    with pytest.raises(PrivacyBudgetExceeded, match="delta=2e-05"):
        submit(db, dataset.id, epsilon=1.0, delta=2e-5)


def test_budget_that_fits_exactly_up_to_float_rounding_is_accepted(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=0.3)
    for _ in range(3):
        submit(db, dataset.id, epsilon=0.1, delta=0.0)  # 0.1 * 3 > 0.3 in binary
    with pytest.raises(PrivacyBudgetExceeded):
        submit(db, dataset.id, epsilon=1e-6, delta=0.0)


def test_same_request_id_returns_same_job_and_reserves_once(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)

    def again() -> tuple[JobRecord, bool]:
        return db.jobs.submit(
            request_id="req-42",
            dataset_id=dataset.id,
            submitter_common_name="trainer",
            spec_json='{"epochs": 1}',
            epsilon=1.0,
            delta=1e-6,
        )

    first, created_first = again()
    repeat, created_again = again()
    assert (created_first, created_again) == (True, False)
    assert repeat == first
    assert db.budget.remaining(dataset.id) == pytest.approx((2.0, 9e-6))


def test_retry_of_a_job_that_used_the_last_budget_still_returns_it(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=1.0)
    job_id = submit(db, dataset.id, epsilon=1.0, request_id="only")
    assert submit(db, dataset.id, epsilon=1.0, request_id="only") == job_id


def test_eight_concurrent_submits_against_budget_three_admit_exactly_three(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait()
        try:
            submit(db, dataset.id, epsilon=1.0, delta=1e-6)
            outcomes.append("ok")
        except PrivacyBudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] * 3 + ["refused"] * 5
    assert len(db.jobs.list(dataset_id=dataset.id)) == 3
    assert db.budget.remaining(dataset.id)[0] == pytest.approx(0.0)


def test_record_spend_never_decreases(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0)
    job_id = submit(db, dataset.id, epsilon=1.0)
    assert db.budget.record_spend(job_id, 0.4) == 0.4
    assert db.budget.record_spend(job_id, 0.2) == 0.4
    assert db.budget.spend(job_id).epsilon_spent == 0.4
    # Above the reservation is stored too: it is the truth, and it is charged.
    assert db.budget.record_spend(job_id, 1.25) == 1.25
    assert db.budget.remaining(dataset.id)[0] == pytest.approx(1.75)
    with pytest.raises(InvalidInput):
        db.budget.record_spend(job_id, float("inf"))
    with pytest.raises(NotFound):
        db.budget.record_spend("missing", 0.1)


def test_settle_unknown_spend_charges_full_reservation(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    job_id = submit(db, dataset.id, epsilon=1.0, delta=1e-6)
    db.budget.record_spend(job_id, 0.3)
    assert db.budget.settle(job_id, epsilon_spent=None) == 1.0
    assert db.budget.spend(job_id).settled
    assert db.budget.remaining(dataset.id) == pytest.approx((2.0, 9e-6))


def test_settle_finished_job_releases_the_unspent_part(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    job_id = submit(db, dataset.id, epsilon=1.0, delta=1e-6)
    db.budget.record_spend(job_id, 0.6)
    # A final value below what was recorded never lowers the ledger.
    assert db.budget.settle(job_id, epsilon_spent=0.5) == 0.6
    assert db.budget.remaining(dataset.id) == pytest.approx((2.4, 9e-6))
    # Settling again with "unknown" must not undercount either (max rule).
    assert db.budget.settle(job_id, epsilon_spent=None) == 1.0


def test_job_that_never_started_settles_with_zero(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    job_id = submit(db, dataset.id, epsilon=1.0, delta=1e-6)
    assert db.jobs.transition(job_id, JobState.PENDING, JobState.CANCELLED)
    assert db.budget.settle(job_id, epsilon_spent=0.0) == 0.0
    assert db.budget.remaining(dataset.id) == pytest.approx((3.0, 1e-5))


def test_terminal_transition_and_settlement_commit_together(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0)
    job_id = submit(db, dataset.id, epsilon=1.0)
    db.jobs.transition(job_id, JobState.PENDING, JobState.RUNNING)
    with pytest.raises(RuntimeError), db.transaction():
        db.jobs.transition(job_id, JobState.RUNNING, JobState.FAILED, error="worker died")
        db.budget.settle(job_id, epsilon_spent=None)
        raise RuntimeError("crash before commit")
    assert db.jobs.get(job_id).state is JobState.RUNNING
    assert not db.budget.spend(job_id).settled
