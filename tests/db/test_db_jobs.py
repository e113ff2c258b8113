"""The job state machine, applied in SQL as compare-and-set."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import pytest

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound
from privtrain.platform.db import Database, DatasetRecord, InvalidTransition
from privtrain.platform.job_states import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    JobState,
    check_transition,
)


def _params(pairs: set[tuple[JobState, JobState]]) -> list[object]:
    ordered = sorted(pairs, key=lambda pair: (pair[0].value, pair[1].value))
    return [pytest.param(pair, id=f"{pair[0].value}->{pair[1].value}") for pair in ordered]


ALLOWED = _params(set(ALLOWED_TRANSITIONS))
DISALLOWED = _params(set(itertools.product(JobState, JobState)) - ALLOWED_TRANSITIONS)
TERMINAL = [pytest.param(state, id=state.value) for state in JobState if state in TERMINAL_STATES]


@pytest.fixture
def job_id(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> str:
    return submit(db, make_dataset(db, epsilon=100.0).id)


def test_new_job_is_pending_with_parsed_spec(db: Database, job_id: str) -> None:
    job = db.jobs.get(job_id)
    assert job.state is JobState.PENDING
    assert job.spec == {"model": "linear", "epochs": 3}
    assert job.started_at is None and job.finished_at is None
    assert db.jobs.unfinished() == [job]


@pytest.mark.parametrize("pair", ALLOWED)
def test_allowed_transitions_succeed(
    db: Database, job_id: str, pair: tuple[JobState, JobState]
) -> None:
    current, new = pair
    if current is JobState.RUNNING:
        assert db.jobs.transition(job_id, JobState.PENDING, JobState.RUNNING, worker_pid=4242)
    assert db.jobs.transition(
        job_id, current, new, error="boom" if new is JobState.FAILED else None
    )
    job = db.jobs.get(job_id)
    assert job.state is new
    if new is JobState.RUNNING:
        assert job.started_at is not None and job.finished_at is None
    if new in TERMINAL_STATES:
        assert job.finished_at is not None
        assert job not in db.jobs.unfinished()
    if current is JobState.RUNNING:
        assert job.worker_pid == 4242
    if new is JobState.FAILED:
        assert job.error == "boom"


@pytest.mark.parametrize("pair", DISALLOWED)
def test_disallowed_pairs_raise_invalid_transition(pair: tuple[JobState, JobState]) -> None:
    with pytest.raises(InvalidTransition) as raised:
        check_transition(*pair)
    assert isinstance(raised.value, FailedPrecondition)
    assert pair[0].value in str(raised.value) and pair[1].value in str(raised.value)


def test_wrong_expected_state_returns_false_and_changes_nothing(db: Database, job_id: str) -> None:
    before = db.jobs.get(job_id)
    assert not db.jobs.transition(job_id, JobState.RUNNING, JobState.SUCCEEDED)
    assert db.jobs.get(job_id) == before


@pytest.mark.parametrize("terminal", TERMINAL)
def test_terminal_states_stay_terminal(db: Database, job_id: str, terminal: JobState) -> None:
    assert db.jobs.transition(job_id, JobState.PENDING, JobState.RUNNING)
    assert db.jobs.transition(job_id, JobState.RUNNING, terminal)
    for new in JobState:
        with pytest.raises(InvalidTransition, match="terminal"):
            db.jobs.transition(job_id, terminal, new)
    assert db.jobs.get(job_id).state is terminal


def test_cancel_racing_start_has_exactly_one_winner(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=100.0)
    for _ in range(5):
        job_id = submit(db, dataset.id)
        barrier = threading.Barrier(2)
        won: dict[JobState, bool] = {}

        def attempt(
            new: JobState,
            job_id: str = job_id,
            barrier: threading.Barrier = barrier,
            won: dict[JobState, bool] = won,
        ) -> None:
            barrier.wait()
            won[new] = db.jobs.transition(job_id, JobState.PENDING, new)

        threads = [
            threading.Thread(target=attempt, args=(state,))
            for state in (JobState.RUNNING, JobState.CANCELLED)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(won.values()) == [False, True]
        winner = next(state for state, ok in won.items() if ok)
        assert db.jobs.get(job_id).state is winner


def test_unknown_job_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        db.jobs.get("missing")
    with pytest.raises(NotFound):
        db.jobs.transition("missing", JobState.PENDING, JobState.RUNNING)
    with pytest.raises(NotFound):
        db.jobs.set_result("missing", {})


def test_result_is_stored_as_json(db: Database, job_id: str) -> None:
    db.jobs.set_result(job_id, {"accuracy": 0.9, "epsilon": 1.5})
    assert db.jobs.get(job_id).result == {"accuracy": 0.9, "epsilon": 1.5}
    with pytest.raises(InvalidInput):
        db.jobs.set_result(job_id, {"loss": float("nan")})


def test_list_filters_by_state_and_dataset(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    first = make_dataset(db, name="first", epsilon=10.0)
    second = make_dataset(db, name="second", epsilon=10.0)
    a = submit(db, first.id)
    b = submit(db, second.id)
    db.jobs.transition(b, JobState.PENDING, JobState.RUNNING)
    assert [job.id for job in db.jobs.list()] == [a, b]
    assert [job.id for job in db.jobs.list(state=JobState.RUNNING)] == [b]
    assert [job.id for job in db.jobs.list(dataset_id=first.id)] == [a]
    assert db.jobs.list(state=JobState.RUNNING, dataset_id=first.id) == []
    assert [job.id for job in db.jobs.unfinished()] == [a, b]


def test_malformed_spec_is_invalid_input(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    dataset = make_dataset(db)
    with pytest.raises(InvalidInput, match="spec"):
        db.jobs.submit(
            request_id=None,
            dataset_id=dataset.id,
            submitter_common_name="t",
            spec_json="[1, 2]",
        )
    with pytest.raises(NotFound):
        db.jobs.submit(
            request_id=None,
            dataset_id="missing",
            submitter_common_name="t",
            spec_json="{}",
        )
