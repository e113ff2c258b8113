"""Bad input and faults found by trying to break the service: each pinned to the right outcome."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
import torch
from server_harness import (
    AnonymizedAdult,
    RunningServer,
    adult_spec,
    ledger_entry,
    start_server,
    upload_adult,
    wait_terminal,
)

from privtrain.errors import FailedPrecondition
from privtrain.platform.config import ServerConfig
from privtrain.platform.server import PrivtrainServer
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


@pytest.mark.parametrize("field", ["target_epsilon", "target_delta", "epochs", "batch_size",
                                   "max_grad_norm", "learning_rate"])
def test_explicit_zero_is_refused_not_replaced_by_a_default(running: RunningServer,
                                                            adult: AnonymizedAdult, field: str) -> None:
    """A zero the user typed must not silently become the default (and spend budget)."""
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer:
        assert _code(lambda: trainer.submit(adult_spec(ds.id, **{field: 0}))) is grpc.StatusCode.INVALID_ARGUMENT
        assert trainer.list_datasets()[0].epsilon_remaining == ds.epsilon_remaining
        assert trainer.list_jobs() == []


def test_empty_dataset_id_is_invalid_argument(running: RunningServer) -> None:
    """Not INTERNAL: the message names the missing field."""
    with running.client("trainer") as trainer, pytest.raises(grpc.RpcError) as err:
        trainer.submit(pb.JobSpec(target_column="income"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset_id" in err.value.details()


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"batch_size": 40_000}, "training rows"),  # more than the train split, fewer than all rows
    ({"epochs": 100_000, "batch_size": 64}, "limit"),
])
def test_infeasible_schedules_are_refused_at_submission(running: RunningServer, adult: AnonymizedAdult,
                                                       overrides: dict, needle: str) -> None:
    """Found before any ε is reserved, not in the worker; the message quotes only the
    published count of training rows (issue 9, point 3: no counting oracle)."""
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer:
        with pytest.raises(grpc.RpcError) as err:
            trainer.submit(adult_spec(ds.id, **overrides))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert needle in err.value.details()
        assert trainer.list_jobs() == []
    if "batch_size" in overrides and overrides["batch_size"] == 40_000:
        assert f"the {ds.published_train_rows} training rows (the dataset's published count)" \
            in err.value.details()


def test_unreachable_target_fails_admission_with_the_reason(running: RunningServer,
                                                            adult: AnonymizedAdult) -> None:
    """σ is calibrated at admission (off the handler thread): an unreachable ε fails the job
    with the reason, before any ε is reserved."""
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=1e-6))
        wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
    assert final.state == "FAILED" and "not admitted" in final.error and "noise" in final.error
    assert running.server.db.budget.entry_of_job(job.id) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_cpu_server_is_refused_at_submission(running: RunningServer, adult: AnonymizedAdult) -> None:
    """FAILED_PRECONDITION with a message, before any reservation."""
    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer:
        assert _code(lambda: trainer.submit(adult_spec(ds.id, device="cuda"))) is grpc.StatusCode.FAILED_PRECONDITION


def test_reused_request_id_with_another_spec_is_refused(running: RunningServer, adult: AnonymizedAdult) -> None:
    """Same request id, different spec: not silently the old job."""
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer:
        first = trainer.submit(adult_spec(ds.id, target_epsilon=0.5), request_id="rid-1")
        with pytest.raises(grpc.RpcError) as err:
            trainer.submit(adult_spec(ds.id, target_epsilon=0.7), request_id="rid-1")
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        # Never names the earlier job: a reused id may be another trainer's.
        assert first.id not in err.value.details() and "already used" in err.value.details()
        trainer.cancel(first.id)


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "x" * 200, "nul\x00byte"])
def test_bad_dataset_names_are_refused(running: RunningServer, adult: AnonymizedAdult, name: str) -> None:
    """Names are short, printable identifiers."""
    with running.client("data-owner") as owner:
        assert _code(lambda: owner.upload(adult.parquet, adult.manifest, name=name, epsilon_budget=1,
                                          delta_budget=1e-5, split=adult.split)) \
            is grpc.StatusCode.INVALID_ARGUMENT


def test_absurd_budget_is_refused(running: RunningServer, adult: AnonymizedAdult) -> None:
    """ε = 1e308 is a typo, not a policy."""
    with running.client("data-owner") as owner:
        assert _code(lambda: owner.upload(adult.parquet, adult.manifest, name="a", epsilon_budget=1e308,
                                          delta_budget=1e-5, split=adult.split)) \
            is grpc.StatusCode.INVALID_ARGUMENT


def test_exploding_loss_raises_nan_alert_and_the_job_still_ends(running: RunningServer,
                                                                adult: AnonymizedAdult) -> None:
    """lr = 1e30 drives the loss to inf/NaN: NAN_LOSS fires (for the admin), events keep
    flowing, no INTERNAL; the trainer's stream carries neither losses nor alerts."""
    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, model="mlp", hidden_sizes=[64], learning_rate=1e30))
        events = wait_terminal(admin, job.id)
        trainer_events = wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
        kinds = {(a.kind, a.state) for a in admin.list_alerts(job_id=job.id)}
    assert "internal error" not in final.error
    assert final.state == "SUCCEEDED"
    assert ("NAN_LOSS", "RESOLVED") in kinds or ("NAN_LOSS", "FIRING") in kinds
    monitored = [e.step.monitoring for e in events if e.WhichOneof("event") == "step"]
    assert any(m.HasField("loss") and (m.loss != m.loss or abs(m.loss) == float("inf"))
               for m in monitored)
    assert all(not e.step.HasField("monitoring") for e in trainer_events
               if e.WhichOneof("event") == "step")
    assert not [e for e in trainer_events if e.WhichOneof("event") == "alert"]


def test_cancel_during_start_up_ends_cancelled_within_2_s_and_charges_nothing(
    running: RunningServer, adult: AnonymizedAdult
) -> None:
    """Issue 12: a job cancelled while its worker starts (before any step) is CANCELLED within
    2 s, charged 0, and its worker ended itself (no DEAD_WORKER, no kill)."""
    ds = upload_adult(running, adult, epsilon=3.0)
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, target_epsilon=1.0))
        for event in trainer.watch(job.id, timeout_s=60):
            if event.WhichOneof("event") == "state" and event.state.state == "RUNNING":
                asked = time.monotonic()
                trainer.cancel(job.id)
                break
        events = wait_terminal(trainer, job.id)
        ended = time.monotonic()
        final = trainer.get_job(job.id)
        kinds = {a.kind for a in admin.list_alerts(job_id=job.id)}
    assert final.state == "CANCELLED"
    assert ended - asked < 2.0
    assert not [e for e in events if e.WhichOneof("event") == "step"]
    assert "DEAD_WORKER" not in kinds
    assert final.epsilon_spent == 0.0
    entry = ledger_entry(running, job.id)
    assert entry.settled and entry.charged == []


def test_tampered_stored_dataset_fails_the_job_not_trains_on_it(running: RunningServer,
                                                                adult: AnonymizedAdult) -> None:
    """The worker re-hashes the stored file against its verified upload; the reason is the
    operator's (a worker's message may quote the rows), the trainer reads that it failed."""
    ds = upload_adult(running, adult)
    stored = running.server.config.datasets_dir / f"{ds.id}.parquet"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id))
        wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
        seen_by_admin = admin.get_job(job.id)
    assert final.state == "FAILED"
    assert "changed since its verified upload" not in final.error
    assert "changed since its verified upload" in seen_by_admin.monitoring.error_detail
    assert not final.HasField("monitoring")


def test_second_server_on_the_same_home_is_refused(running: RunningServer) -> None:
    """One home, one server: the second would mark the first one's jobs as crashed."""
    config = running.server.config
    with pytest.raises(FailedPrecondition, match="already running"):
        PrivtrainServer(ServerConfig(home=config.home, pki_dir=config.pki_dir, port=0))


def test_second_server_on_a_busy_port_is_refused(running: RunningServer, tmp_path: Path) -> None:
    """No SO_REUSEPORT: binding a port another server serves fails."""
    with pytest.raises(FailedPrecondition, match="cannot listen"):
        start_server(tmp_path / "other-home", running.pki, running.bundles, port=running.server.port)


def test_server_on_an_unmigrated_database_is_refused(running: RunningServer, tmp_path: Path) -> None:
    """Says to run `privtrain db upgrade` instead of failing on a missing table later."""
    with pytest.raises(FailedPrecondition, match="db upgrade"):
        PrivtrainServer(ServerConfig(home=tmp_path / "fresh", pki_dir=running.pki.directory, port=0))
