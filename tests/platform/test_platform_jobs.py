"""Training jobs at the real server: admission, ledger, idempotency, streams, sealed parameters, alerts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from server_harness import (
    PEOPLE,
    AnonymizedAdult,
    RunningServer,
    adult_spec,
    ledger_entry,
    start_server,
    upload_adult,
    wait_terminal,
)

from privtrain.platform.convert import sealed_from_proto
from privtrain.platform.job_states import JobState
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.secure_transport.envelope import (
    SealedChunk,
    TamperedEnvelope,
    generate_recipient_keypair,
    open_sealed,
)
from privtrain.secure_transport.pki import load_certificate
from privtrain.trainer.evaluate import evaluate_parameters


def _events(events: list[pb.JobEvent], kind: str) -> list:
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


def _wait_for_step(client, admin, job_id: str, step: int) -> int:
    """Follow the stream until ``step`` is reported; returns the worker pid (an admin figure)."""
    for event in client.watch(job_id, timeout_s=120):
        if event.WhichOneof("event") == "step" and event.step.step >= step:
            pid = admin.get_job(job_id).monitoring.worker_pid
            assert pid > 0, "no worker pid"  # os.kill(0, ...) would signal the test's own group
            return pid
    raise AssertionError(f"job {job_id} ended before step {step}")


def _wait_for_checkpoint(home: Path, job_id: str) -> None:
    """Wait until the job has written one checkpoint (within-epoch, every 0.5 s in these tests)."""
    checkpoints = home / "jobs" / job_id / "checkpoints"
    deadline = time.monotonic() + 60
    while not list(checkpoints.glob("*.json")):
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.05)


def _next_worker(admin, job_id: str, old_pid: int) -> int:
    """Wait until the job runs in a new worker process; returns its pid."""
    deadline = time.monotonic() + 60
    while True:
        pid = admin.get_job(job_id).monitoring.worker_pid
        if pid not in (0, old_pid):
            return pid
        assert time.monotonic() < deadline, "the job was not resumed within 60 s"
        time.sleep(0.05)


def test_job_runs_to_success_and_parameters_round_trip(running: RunningServer, adult: AnonymizedAdult) -> None:
    """PENDING at once, admitted with a plan, RUNNING, steps with growing ε, SUCCEEDED; the
    ledger charges the plan's history; sealed parameters verify, decrypt and give the
    operator's exact accuracy on the client, while the trainer got a noisy release."""
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=2.0, epochs=2))
        assert job.state == "PENDING"  # work is never inside the unary handler
        events = wait_terminal(trainer, job.id)
        states = [s.state for s in _events(events, "state")]
        assert states == ["PENDING", "RUNNING", "SUCCEEDED"]
        steps = _events(events, "step")
        assert [s.step for s in steps] == list(range(1, len(steps) + 1))
        eps = [s.epsilon for s in steps]
        assert eps == sorted(eps) and eps[-1] <= 2.0
        done = trainer.get_job(job.id)
        exact = admin.get_job(job.id).monitoring
        assert done.state == "SUCCEEDED"
        assert done.result.steps == len(steps) == done.plan.steps
        assert done.result.epsilon == pytest.approx(done.plan.epsilon, rel=1e-6)
        assert done.epsilon_spent == pytest.approx(done.result.epsilon)
        assert (done.result.train_rows, done.result.test_rows) == (ds.published_train_rows,
                                                                    ds.published_test_rows)
        blob = trainer.download_parameters(job.id)
    assert blob.signer.role.value == "parameter-signer"
    table = pq.read_table(adult.parquet).to_pandas()
    accuracy, rows = evaluate_parameters(blob.plaintext, table)
    assert accuracy == pytest.approx(exact.test_accuracy, abs=1e-12)
    assert rows == exact.test_rows
    assert accuracy > 0.78
    # The release: (correct + N(0, 20²)) / published rows, so within a few tenths of a percent.
    assert abs(done.result.test_accuracy - accuracy) < 5 * 40 / ds.published_test_rows
    entry = ledger_entry(running, job.id)
    assert entry.settled and entry.spent == entry.planned


def test_over_budget_job_is_not_admitted_and_reserves_nothing(running: RunningServer,
                                                              adult: AnonymizedAdult) -> None:
    """A job whose plan, composed with the ledger, exceeds the budget FAILs at admission
    with the figures (all public); the budget is untouched. (PRV here: an RDP-calibrated job
    of ε = 1.5 composes to less than 1 under the ledger's PRV, and would fit.)"""
    ds = upload_adult(running, adult, epsilon=1.0)
    with running.client("trainer") as trainer:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=1.5, target_delta=1e-5,
                                        accountant="prv"))
        events = wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
        assert _events(events, "state")[-1].state == "FAILED"
        assert "not admitted: not enough privacy budget left" in final.error
        assert trainer.list_datasets()[0].epsilon_remaining == pytest.approx(ds.epsilon_remaining)
    assert ledger_entry(running, job.id) is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [({"target_column": "no_such_column"}, "no_such_column"),
     ({"target_column": "split"}, "split column"),
     ({"max_grad_norm": -1.0}, "max_grad_norm"),
     ({"model": "transformer"}, "transformer"),
     ({"batch_size": 10_000_000}, "batch_size"),
     ({"target_delta": 1e-3}, "must be below 1/"),
     ({"model": "mlp", "hidden_sizes": [100_000, 100_000]}, "parameters")],
)
def test_bad_spec_is_invalid_argument_before_any_reservation(
    running: RunningServer, adult: AnonymizedAdult, overrides: dict, needle: str
) -> None:
    """Bad fields are refused naming the field, and cost no ε."""
    ds = upload_adult(running, adult, epsilon=2.0)
    with running.client("trainer") as trainer:
        with pytest.raises(grpc.RpcError) as err:
            trainer.submit(adult_spec(ds.id, **overrides))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert needle in err.value.details()
        assert trainer.list_datasets()[0].epsilon_remaining == ds.epsilon_remaining
        assert trainer.list_jobs() == []


def test_retried_submission_returns_the_same_job(running: RunningServer, adult: AnonymizedAdult) -> None:
    """C-T06: submission returns at once (admission happens later), so a client with a 0.3 s
    deadline gets its job id; a retry with the same request id returns the same job."""
    ds = upload_adult(running, adult, epsilon=1.0)
    with running.client("trainer") as trainer:
        request = pb.SubmitJobRequest(request_id="retry-1", spec=adult_spec(ds.id, target_epsilon=0.6))
        first = trainer.training.SubmitJob(request, timeout=0.3)
        second = trainer.training.SubmitJob(request, timeout=5)
        assert first.id == second.id
        assert len(trainer.list_jobs()) == 1
        trainer.cancel(first.id)


def test_tampered_sealed_chunk_is_rejected(running: RunningServer, adult: AnonymizedAdult) -> None:
    """Flip one ciphertext byte of the parameter stream: the client refuses the blob."""
    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer:
        job = trainer.submit(adult_spec(ds.id))
        wait_terminal(trainer, job.id)
        private, public = generate_recipient_keypair()
        parts = [sealed_from_proto(p) for p in trainer.training.DownloadParameters(
            pb.DownloadParametersRequest(job_id=job.id, recipient_public_key=public), timeout=30)]
    ca = load_certificate(running.pki.ca_cert)
    assert open_sealed(parts, private, ca).plaintext  # untouched stream opens
    index = next(i for i, p in enumerate(parts) if isinstance(p, SealedChunk))
    chunk = parts[index]
    flipped = bytes([chunk.ciphertext[0] ^ 1]) + chunk.ciphertext[1:]
    parts[index] = SealedChunk(index=chunk.index, ciphertext=flipped)
    with pytest.raises(TamperedEnvelope, match="chunk 0"):
        open_sealed(parts, private, ca)


def test_download_needs_a_succeeded_job_and_a_real_key(running: RunningServer, adult: AnonymizedAdult) -> None:
    """FAILED_PRECONDITION before success; INVALID_ARGUMENT for a malformed recipient key."""
    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer:
        job = trainer.submit(adult_spec(ds.id, epochs=3, batch_size=64))
        with pytest.raises(grpc.RpcError) as err:
            trainer.download_parameters(job.id)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        trainer.cancel(job.id)
        wait_terminal(trainer, job.id)
        with pytest.raises(grpc.RpcError) as err:
            list(trainer.training.DownloadParameters(
                pb.DownloadParametersRequest(job_id=job.id, recipient_public_key=b"short"), timeout=5))
        assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)


def test_stalled_worker_fires_no_progress_then_resolves(running: RunningServer, adult: AnonymizedAdult) -> None:
    """SIGSTOP the worker: NO_PROGRESS fires (stored, streamed to admins); SIGCONT: it resolves;
    the job succeeds. The trainer's stream carries no alert (monitoring figures)."""
    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, epochs=1, batch_size=128))
        pid = _wait_for_step(trainer, admin, job.id, 10)
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30
            while not admin.list_alerts(state="FIRING", job_id=job.id):
                assert time.monotonic() < deadline, "no alert within 30 s"
                time.sleep(0.2)
        finally:
            os.kill(pid, signal.SIGCONT)
        events = wait_terminal(admin, job.id)
        trainer_events = wait_terminal(trainer, job.id)
        alerts = admin.list_alerts(job_id=job.id)
    # A loaded machine may stall the thawed worker again; every alert must end RESOLVED.
    assert alerts and {(a.kind, a.state) for a in alerts} == {("NO_PROGRESS", "RESOLVED")}
    streamed = [(a.kind, a.state) for a in _events(events, "alert") if a.kind == "NO_PROGRESS"]
    assert streamed[:2] == [("NO_PROGRESS", "FIRING"), ("NO_PROGRESS", "RESOLVED")]
    assert _events(trainer_events, "alert") == []
    assert _events(events, "state")[-1].state == "SUCCEEDED"


def test_killed_worker_resumes_from_its_checkpoint_and_succeeds(
    tmp_path: Path, adult: AnonymizedAdult
) -> None:
    """Issue 12: SIGKILL of the worker mid-run fires DEAD_WORKER; the job resumes in a new
    worker from its latest checkpoint (every 0.5 s here), the alert resolves, the job SUCCEEDS
    within its target and the ledger charges exactly its plan (no step twice)."""
    rs = start_server(tmp_path / "home", adult.pki, adult.bundles, checkpoint_every_s=0.5)
    try:
        ds = upload_adult(rs, adult, epsilon=3.0)
        with rs.client("trainer") as trainer, rs.client("admin") as admin:
            job = trainer.submit(adult_spec(ds.id, target_epsilon=1.0, epochs=2, batch_size=128))
            pid = _wait_for_step(trainer, admin, job.id, 20)
            _wait_for_checkpoint(tmp_path / "home", job.id)
            os.kill(pid, signal.SIGKILL)
            events = wait_terminal(trainer, job.id)
            final = trainer.get_job(job.id)
            seen_by_admin = admin.get_job(job.id)
            alerts = {(a.kind, a.state) for a in admin.list_alerts(job_id=job.id)}
        assert final.state == "SUCCEEDED", final.error
        assert [r.attempt for r in _events(events, "resumed")] == [2]
        assert _events(events, "resumed")[0].from_checkpoint
        assert ("DEAD_WORKER", "RESOLVED") in alerts and ("DEAD_WORKER", "FIRING") not in alerts
        assert (seen_by_admin.monitoring.attempts, seen_by_admin.monitoring.failed_attempts) == (2, 1)
        steps = [e.step for e in _events(events, "step")]
        assert steps == sorted(set(steps)) and steps[-1] == final.plan.steps  # each step once
        assert final.result.epsilon <= 1.0
        entry = ledger_entry(rs, job.id)
        assert entry.settled and entry.charged == entry.planned
    finally:
        rs.server.stop(1.0)


def test_a_job_whose_workers_keep_dying_fails_with_an_alert_and_is_charged_what_it_took(
    tmp_path: Path, adult: AnonymizedAdult
) -> None:
    """Issue 12: with max_failed_attempts 2, two SIGKILLs end the job FAILED with the reason and
    a RESUMES_EXHAUSTED alert (DEAD_WORKER resolved); it is charged the steps that reached the
    server, fewer than its plan."""
    rs = start_server(tmp_path / "home", adult.pki, adult.bundles, max_failed_attempts=2)
    try:
        ds = upload_adult(rs, adult, epsilon=3.0)
        with rs.client("trainer") as trainer, rs.client("admin") as admin:
            job = trainer.submit(adult_spec(ds.id, target_epsilon=1.0, epochs=3, batch_size=64))
            pid = _wait_for_step(trainer, admin, job.id, 5)
            os.kill(pid, signal.SIGKILL)
            pid = _next_worker(admin, job.id, pid)
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            events = wait_terminal(trainer, job.id)
            final = trainer.get_job(job.id)
            alerts = {(a.kind, a.state) for a in admin.list_alerts(job_id=job.id)}
        assert final.state == "FAILED" and "2 times" in final.error
        assert ("RESUMES_EXHAUSTED", "FIRING") in alerts
        assert ("DEAD_WORKER", "FIRING") not in alerts
        last = max(e.step for e in _events(events, "step"))
        entry = ledger_entry(rs, job.id)
        assert entry.settled
        assert sum(n for _, q, n in entry.charged if q < 1) == last < final.plan.steps
    finally:
        rs.server.stop(1.0)


def test_cancel_stops_a_running_job_between_steps(running: RunningServer, adult: AnonymizedAdult) -> None:
    """CANCELLED; the ledger charges exactly the relayed steps (fewer than planned)."""
    ds = upload_adult(running, adult, epsilon=3.0)
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=1.0, epochs=3, batch_size=64))
        _wait_for_step(trainer, admin, job.id, 5)
        trainer.cancel(job.id)
        events = wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
    assert _events(events, "state")[-1].state == "CANCELLED"
    last = _events(events, "step")[-1]
    assert final.epsilon_spent == pytest.approx(last.epsilon)
    assert 0 < final.epsilon_spent <= 1.0
    entry = ledger_entry(running, job.id)
    assert sum(n for _, q, n in entry.charged if q < 1) == last.step < final.plan.steps


def test_shutdown_suspends_the_job_and_a_restarted_server_resumes_it(
    tmp_path: Path, adult: AnonymizedAdult
) -> None:
    """C-T06 and issue 12: stop(0.2 s) while a job trains returns promptly (bounded here by a
    generous 10 s for a loaded machine) and the worker is gone; the job stays RUNNING without
    a host, and the restarted server resumes it to SUCCEEDED, charged exactly its plan."""
    rs = start_server(tmp_path / "home", adult.pki, adult.bundles, checkpoint_every_s=0.5)
    ds = upload_adult(rs, adult, epsilon=3.0)
    with rs.client("trainer") as trainer, rs.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=1.0, epochs=2, batch_size=64))
        pid = _wait_for_step(trainer, admin, job.id, 20)
        _wait_for_checkpoint(tmp_path / "home", job.id)
    started = time.monotonic()
    rs.server.stop(0.2)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert rs.server.db.jobs.get(job.id).lease_owner is None
    rs2 = start_server(tmp_path / "home", adult.pki, adult.bundles)
    try:
        with rs2.client("trainer") as trainer:
            events = wait_terminal(trainer, job.id)
            final = trainer.get_job(job.id)
        assert final.state == "SUCCEEDED", final.error
        assert _events(events, "resumed")[0].from_checkpoint
        assert final.result.epsilon <= 1.0
        entry = ledger_entry(rs2, job.id)
        assert entry.settled and entry.charged == entry.planned
    finally:
        rs2.server.stop(1.0)


def test_a_job_without_a_readable_plan_does_not_stop_the_host_claiming(
    running: RunningServer, adult: AnonymizedAdult
) -> None:
    """A RUNNING job row with no plan (here written straight to the database) was claimed
    and ended the worker host's claiming thread: no later job was ever run. It is now
    given back as a failed attempt, and the next job is claimed as usual."""
    ds = upload_adult(running, adult, epsilon=3.0)
    db = running.server.db
    broken, _ = db.jobs.submit(request_id=None, dataset_id=ds.id,
                               submitter_common_name=PEOPLE["trainer"],
                               spec_json=json.dumps({"dataset_id": ds.id}))
    assert db.jobs.transition(broken.id, JobState.PENDING, JobState.RUNNING)
    deadline = time.monotonic() + 30
    while db.jobs.get(broken.id).failed_attempts == 0:
        assert time.monotonic() < deadline, "the planless job was never claimed"
        time.sleep(0.2)
    assert db.jobs.get(broken.id).lease_owner is None
    with running.client("trainer") as trainer:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=1.0, epochs=1))
        deadline = time.monotonic() + 60
        while db.jobs.get(job.id).lease_owner is None:
            assert time.monotonic() < deadline, "the next job was never claimed"
            time.sleep(0.2)
        trainer.cancel(job.id)
