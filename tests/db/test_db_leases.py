"""The job queue (issue 12): claims under leases, heartbeats, hand-over of a dead host's job."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from privtrain.platform.db import Database, DatasetRecord
from privtrain.platform.job_states import JobState

PLAN = '{"noise": "test"}'


def _admitted(db: Database, make_dataset: Callable[..., DatasetRecord],
              submit: Callable[..., str], count: int) -> list[str]:
    dataset = make_dataset(db, epsilon=100.0)
    jobs = [submit(db, dataset.id) for _ in range(count)]
    for job in jobs:
        db.budget.admit(job, PLAN, [(1.0, 0.1, 10)])
    return jobs


def test_a_job_is_claimed_once_in_submission_order_and_only_once_admitted(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
) -> None:
    dataset = make_dataset(db, epsilon=100.0)
    not_admitted, first, second = (submit(db, dataset.id) for _ in range(3))
    for job in (first, second):
        db.budget.admit(job, PLAN, [(1.0, 0.1, 10)])
    a = db.leases.claim("host-a", 10.0, 3)
    b = db.leases.claim("host-b", 10.0, 3)
    assert (a and a.id, b and b.id) == (first, second)
    assert db.leases.claim("host-c", 10.0, 3) is None  # the oldest is not admitted yet
    assert db.jobs.get(not_admitted).state is JobState.PENDING
    job = db.jobs.get(first)
    assert (job.state, job.lease_owner, job.attempts) == (JobState.RUNNING, "host-a", 1)
    assert job.started_at is not None and job.lease_expires_at is not None


def test_twenty_concurrent_claims_take_each_job_exactly_once(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
) -> None:
    """Eight hosts race for twenty jobs (SKIP LOCKED on PostgreSQL, the write lock on SQLite)."""
    jobs = _admitted(db, make_dataset, submit, 20)
    taken: list[tuple[str, str]] = []
    lock = threading.Lock()

    def host(name: str) -> None:
        while (job := db.leases.claim(name, 10.0, 3)) is not None:
            with lock:
                taken.append((name, job.id))

    threads = [threading.Thread(target=host, args=(f"host-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(job for _, job in taken) == sorted(jobs)
    assert all(db.jobs.get(job).lease_owner == name for name, job in taken)


def test_heartbeat_keeps_the_lease_and_reports_a_cancel(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
) -> None:
    (job_id,) = _admitted(db, make_dataset, submit, 1)
    claimed = db.leases.claim("host-a", 10.0, 3)
    assert claimed is not None
    beat = db.leases.heartbeat(job_id, "host-a", 10.0, worker_pid=123)
    assert beat.held and not beat.cancel_requested
    assert db.jobs.get(job_id).worker_pid == 123
    assert not db.leases.heartbeat(job_id, "host-b", 10.0).held
    assert db.leases.request_cancel(job_id)
    assert not db.leases.request_cancel(job_id)  # asked once
    assert db.leases.heartbeat(job_id, "host-a", 10.0).cancel_requested
    # A job asked to cancel is never claimed again, even once its host is gone.
    assert db.leases.give_back(job_id, "host-a", died=True)
    assert db.leases.claim("host-b", 10.0, 3) is None


def test_an_expired_lease_is_reclaimed_once_and_the_job_resumed_by_another_host(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
) -> None:
    (job_id,) = _admitted(db, make_dataset, submit, 1)
    assert db.leases.claim("host-a", 0.05, 3) is not None
    db.leases.progress(job_id, 7, 1)
    db.leases.progress(job_id, 5, 0)  # never goes down
    time.sleep(0.1)
    stale = db.leases.owned()[0]
    assert stale.lease_owner == "host-a" and (stale.steps_done, stale.releases_done) == (7, 1)
    assert db.leases.reclaim(stale)
    assert not db.leases.reclaim(stale)  # the same expiry is handed on only once
    assert not db.leases.heartbeat(job_id, "host-a", 10.0).held  # the old host is fenced off
    assert not db.jobs.transition(job_id, JobState.RUNNING, JobState.SUCCEEDED, owner="host-a")
    resumed = db.leases.claim("host-b", 10.0, 3)
    assert resumed is not None and resumed.id == job_id
    # A host that died is not the job's failure: no failed attempt is counted.
    assert (resumed.attempts, resumed.failed_attempts, resumed.steps_done) == (2, 0, 7)
    assert db.jobs.transition(job_id, JobState.RUNNING, JobState.SUCCEEDED, owner="host-b")
    done = db.jobs.get(job_id)
    assert done.lease_owner is None and done.lease_expires_at is None


def test_a_job_whose_workers_keep_dying_is_not_claimed_past_the_limit(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
) -> None:
    (job_id,) = _admitted(db, make_dataset, submit, 1)
    for attempt in range(2):
        assert db.leases.claim(f"host-{attempt}", 10.0, 2) is not None
        assert db.leases.give_back(job_id, f"host-{attempt}", died=True)
    assert db.leases.claim("host-x", 10.0, 2) is None
    assert [j.id for j in db.leases.unowned()] == [job_id]
    # A host that gives a job back without dying (shutdown, storage) does not count.
    assert db.leases.claim("host-y", 10.0, 3) is not None
    assert db.leases.give_back(job_id, "host-y", died=False, retry_after_s=30.0)
    assert db.jobs.get(job_id).failed_attempts == 2
    assert db.leases.claim("host-z", 10.0, 3) is None  # not before its retry time


def test_request_ids_are_scoped_to_their_submitter(
    db: Database, make_dataset: Callable[..., DatasetRecord],
) -> None:
    """Issue 12: another trainer reusing a request_id gets its own job, not the first one's."""
    dataset = make_dataset(db)
    spec = '{"model": "linear"}'
    first, created = db.jobs.submit(request_id="r-1", dataset_id=dataset.id,
                                    submitter_common_name="alice", spec_json=spec)
    again, created_again = db.jobs.submit(request_id="r-1", dataset_id=dataset.id,
                                          submitter_common_name="alice", spec_json=spec)
    other, created_other = db.jobs.submit(request_id="r-1", dataset_id=dataset.id,
                                          submitter_common_name="mallory", spec_json=spec)
    assert created and not created_again and again.id == first.id
    assert created_other and other.id != first.id


@pytest.mark.parametrize("owner", ["host-a", None])
def test_terminal_states_clear_the_lease(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str],
    owner: str | None,
) -> None:
    (job_id,) = _admitted(db, make_dataset, submit, 1)
    assert db.leases.claim("host-a", 10.0, 3) is not None
    if owner is None:
        assert db.leases.give_back(job_id, "host-a", died=False)
    assert db.jobs.transition(job_id, JobState.RUNNING, JobState.CANCELLED, owner=owner)
    job = db.jobs.get(job_id)
    assert (job.state, job.lease_owner, job.lease_expires_at) == (JobState.CANCELLED, None, None)
