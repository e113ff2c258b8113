"""`privtrain audit run` against a real server on the anonymized Adult (issue 9's must-show):
the one-run audit (Steinke, Nasr & Jagielski 2023) never proves more than the job's ε under
DP-SGD, and it catches a run without noise or clipping."""

from __future__ import annotations

import json

import grpc
import pytest
from server_harness import AnonymizedAdult, RunningServer, upload_adult

from privtrain.platform.cli import main
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb


def _audit(running: RunningServer, dataset_id: str, capsys: pytest.CaptureFixture[str],
           *options: str) -> dict:
    capsys.readouterr()
    person = "admin" if "none" in options else "trainer"  # the no-DP audit is the admin's
    code = main(["audit", "run", "--dataset", dataset_id, "--canaries", "1000", "--epochs", "2",
                 "--json", "--server", running.target,
                 "--bundle", str(running.bundles[person].directory), *options])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    return json.loads(out[-1])


@pytest.mark.slow
def test_audit_of_dp_sgd_stays_below_epsilon_and_catches_no_dp(
    running: RunningServer, adult: AnonymizedAdult, capsys: pytest.CaptureFixture[str],
) -> None:
    """--mechanism dp at ε = 2, three runs (three fresh keys): ε_lower ≤ 2, charged like jobs;
    --mechanism none (admin): ε_lower ≥ 1, nothing charged, no parameters to download.
    (Slow: four trainings on Adult; CI runs it.)"""
    ds = upload_adult(running, adult, epsilon=20.0)
    lower = []
    for _ in range(3):
        figures = _audit(running, ds.id, capsys, "--epsilon", "2")
        assert set(figures) >= {"epsilon", "epsilon_lower", "canaries", "guesses", "correct",
                                "confidence", "mechanism"}
        assert figures["mechanism"] == "dp" and figures["epsilon"] <= 2.0
        assert (figures["canaries"], figures["guesses"], figures["confidence"]) == (1000, 200, 0.95)
        lower.append(figures["epsilon_lower"])
    assert all(0 <= value <= 2.0 for value in lower), lower
    charged = running.server.db.budget.of_dataset(ds.id).epsilon_committed
    assert charged > 2.0  # three audits of ε = 2 composed (and the published counts)

    none = _audit(running, ds.id, capsys, "--epsilon", "2", "--mechanism", "none")
    assert none["mechanism"] == "none" and none["epsilon"] is None
    assert none["epsilon_lower"] >= 1.0, none
    assert none["correct"] > 0.85 * none["guesses"]
    assert running.server.db.budget.of_dataset(ds.id).epsilon_committed == pytest.approx(charged)
    with running.client("trainer") as trainer:
        with pytest.raises(grpc.RpcError) as err:
            trainer.download_parameters(figures["job_id"])
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:  # the no-DP audit is the admin's alone
            trainer.get_job(none["job_id"])
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_one_audit_run_catches_a_run_without_dp(
    running: RunningServer, adult: AnonymizedAdult, capsys: pytest.CaptureFixture[str],
) -> None:
    """The quick check of the default suite: the audit must catch a run without noise or
    clipping (ε_lower ≥ 1); it charges nothing."""
    ds = upload_adult(running, adult, epsilon=5.0)
    before = running.server.db.budget.of_dataset(ds.id).epsilon_committed
    none = _audit(running, ds.id, capsys, "--epsilon", "2", "--mechanism", "none")
    assert none["epsilon_lower"] >= 1.0, none
    assert running.server.db.budget.of_dataset(ds.id).epsilon_committed == pytest.approx(before)


def test_a_trainer_may_not_run_the_audit_without_dp(running: RunningServer,
                                                    adult: AnonymizedAdult) -> None:
    ds = upload_adult(running, adult)
    with running.client("trainer") as trainer, pytest.raises(grpc.RpcError) as err:
        trainer.submit_audit(pb.JobSpec(dataset_id=ds.id, target_epsilon=2.0),
                             pb.AuditSettings(canaries=100, mechanism="none"))
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
