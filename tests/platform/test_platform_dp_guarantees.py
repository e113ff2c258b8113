"""Issue 9's reproductions against a real server: each attack on the DP guarantee now fails.

The trainer is the party DP protects the data from. Here it tries what an auditor tried on
the first version: twin jobs with the same seed, choosing its own rows, reading exact
figures, re-uploading to reset a budget; and the ledger is checked against Google's PLD
accountant (dp-accounting) on the very histories it composed.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path

import dp_accounting
import grpc
import pytest
from dp_accounting.pld import pld_privacy_accountant
from server_harness import (
    POLICY,
    AnonymizedAdult,
    RunningServer,
    adult_spec,
    upload_adult,
    wait_terminal,
)

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.datasets.adult import fetch_adult
from privtrain.errors import InvalidInput
from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb
from privtrain.trainer.spec import TrainingSpec


def _pld_epsilon(histories: list[list[tuple[float, float, int]]], delta: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant()
    for history in histories:
        for sigma, q, count in history:
            event = dp_accounting.GaussianDpEvent(sigma)
            if q < 1:
                event = dp_accounting.PoissonSampledDpEvent(q, event)
            accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
    return accountant.get_epsilon(delta)


def test_twin_jobs_with_the_same_spec_and_seed_get_different_parameters(
    running: RunningServer, adult: AnonymizedAdult,
) -> None:
    """Issue 9, point 1: noise and sampling come from a per-job secret, not from the seed, so
    two identical submissions release different parameters (and accuracies)."""
    ds = upload_adult(running, adult, epsilon=5.0)
    spec = adult_spec(ds.id, target_epsilon=0.5, seed=7)
    digests, accuracies = [], []
    with running.client("trainer") as trainer:
        for _ in range(2):
            job = trainer.submit(spec)
            wait_terminal(trainer, job.id)
            done = trainer.get_job(job.id)
            assert done.state == "SUCCEEDED", done.error
            digests.append(hashlib.sha256(trainer.download_parameters(job.id).plaintext).hexdigest())
            accuracies.append(done.result.test_accuracy)
    assert digests[0] != digests[1]
    assert accuracies[0] != accuracies[1]
    keys = [(running.server.config.jobs_dir / j / "dp-randomness.json").read_bytes()
            for j in sorted(p.name for p in running.server.config.jobs_dir.iterdir())]
    assert len(set(keys)) == 2
    for job_dir in running.server.config.jobs_dir.iterdir():
        assert (job_dir.stat().st_mode & 0o777) == 0o700
        assert ((job_dir / "dp-randomness.json").stat().st_mode & 0o777) == 0o600


def test_a_trainer_cannot_choose_rows_by_value() -> None:
    """Issue 9, point 2: the split is the owner's; the API has no field to select rows."""
    with pytest.raises(ValueError, match="split_column"):
        pb.JobSpec(dataset_id="d", target_column="income", split_column="capital_loss")
    with pytest.raises(InvalidInput, match="unknown field"):
        TrainingSpec.from_dict({"dataset_id": "d", "target_column": "income",
                                "split_column": "capital_loss", "train_split": "4356"})


def test_the_trainer_sees_only_dp_public_or_paid_for_figures(
    running: RunningServer, adult: AnonymizedAdult,
) -> None:
    """Issue 9, point 2: no exact loss, batch size, throughput, accuracy or row count reaches
    the trainer; its accuracy is a noisy release; the operator keeps the exact figures."""
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer, running.client("admin") as admin:
        job = trainer.submit(adult_spec(ds.id, batch_size=256))
        events = wait_terminal(trainer, job.id)
        done = trainer.get_job(job.id)
        seen_by_admin = admin.get_job(job.id)
        admin_events = list(admin.watch(job.id, timeout_s=60))
    steps = [e.step for e in events if e.WhichOneof("event") == "step"]
    assert steps and not any(s.HasField("monitoring") for s in steps)
    assert {e.WhichOneof("event") for e in events} <= {"state", "step", "epoch"}
    assert not done.HasField("monitoring")
    (epoch,) = [e.epoch for e in events if e.WhichOneof("event") == "epoch"]
    assert not epoch.HasField("exact_test_accuracy")
    exact = seen_by_admin.monitoring
    assert epoch.test_accuracy == done.result.test_accuracy != exact.test_accuracy
    assert (done.result.train_rows, done.result.test_rows) == (ds.published_train_rows,
                                                                ds.published_test_rows)
    admin_steps = [e.step for e in admin_events if e.WhichOneof("event") == "step"]
    assert all(s.HasField("monitoring") and s.monitoring.batch_size >= 0 for s in admin_steps)
    assert exact.train_rows > 0 and exact.final_loss > 0


def test_five_jobs_of_epsilon_one_fit_a_budget_of_three_composed_as_pld(
    running: RunningServer, adult: AnonymizedAdult,
) -> None:
    """Issue 9, point 6: basic composition would charge 5 (refusing the fourth job); the ledger
    composes the jobs' (σ, q, steps) histories, admits all five, and its ε equals
    dp-accounting's PLD composition of the same histories within 1%."""
    ds = upload_adult(running, adult, epsilon=3.0, delta=2e-5)
    budget = running.server.db.budget
    with running.client("trainer") as trainer:
        jobs = [trainer.submit(adult_spec(ds.id, target_epsilon=1.0, target_delta=1e-5,
                                          accountant="prv", release_test_accuracy="final"))
                for _ in range(5)]
        deadline = time.monotonic() + 240
        while any(budget.entry_of_job(j.id) is None for j in jobs):
            states = [trainer.get_job(j.id) for j in jobs]
            assert all(j.state != "FAILED" for j in states), [j.error for j in states]
            assert time.monotonic() < deadline, "not all five admitted within 240 s"
            time.sleep(0.5)
        admitted = [trainer.get_job(j.id) for j in jobs]
        ledger = budget.of_dataset(ds.id)  # all five reserved, none settled below its plan yet
        entries = budget.entries(ledger.id)
        remaining = trainer.list_datasets()[0].epsilon_remaining
        for job in admitted:  # the reservations are what this test is about; no need to train on
            with contextlib.suppress(grpc.RpcError):  # it may have ended meanwhile
                trainer.cancel(job.id)
    assert all(0.9 < j.plan.epsilon <= 1.0 for j in admitted)
    assert len(entries) == 6  # the published counts and five jobs
    pld = _pld_epsilon([e.planned for e in entries], 2e-5)
    assert ledger.epsilon_committed == pytest.approx(pld, rel=0.01)
    assert ledger.epsilon_committed <= 3.0 < sum(j.plan.epsilon for j in admitted)
    assert remaining == pytest.approx(3.0 - ledger.epsilon_committed)


def test_the_same_people_anonymized_again_under_another_key_share_one_budget(
    running: RunningServer, adult: AnonymizedAdult, tmp_path: Path,
) -> None:
    """Issue 9, point 5: the same input file anonymized again with a fresh key is another file
    (other pseudonyms, other SHA-256), but the same people: uploaded under another name it joins
    the first upload's ledger (its input's SHA-256 is in the signed manifest) instead of opening
    a fresh budget, and asking for a fresh budget is refused."""
    first = upload_adult(running, adult, epsilon=3.0)
    key = tmp_path / "another.hmac"
    generate_key(key)
    again = tmp_path / "adult.again.parquet"
    owner = adult.bundles["data-owner"]
    anonymize_file(fetch_adult(), POLICY, key, again, signing_key_path=owner.key,
                   signing_cert_path=owner.cert)
    again_manifest = again.with_name(again.name + ".manifest.json")
    assert hashlib.sha256(again.read_bytes()).digest() != hashlib.sha256(adult.parquet.read_bytes()).digest()
    with running.client("data-owner") as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.upload(again, again_manifest, name="adult-again", epsilon_budget=30.0,
                          delta_budget=2e-5, split=adult.split)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        second = client.upload(again, again_manifest, name="adult-again", epsilon_budget=3.0,
                               delta_budget=2e-5, split=adult.split)
        datasets = {d.name: d for d in client.list_datasets()}
    assert second.ledger_id == first.ledger_id
    assert datasets["adult-again"].epsilon_remaining == pytest.approx(datasets["adult"].epsilon_remaining)
    assert datasets["adult"].epsilon_remaining < 3.0  # the noisy published counts are charged to it
