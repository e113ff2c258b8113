"""A job's privacy plan: q and steps from the published row counts, the accuracy releases charged."""

from __future__ import annotations

import json

import pytest

from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import epsilon_for_history
from privtrain.trainer.plan import MAX_STEPS, JobPlan, plan_job, schedule
from privtrain.trainer.spec import TrainingSpec


def _spec(**overrides: object) -> TrainingSpec:
    values: dict = {"dataset_id": "d", "target_column": "label", "batch_size": 64, "epochs": 3,
                    "target_epsilon": 2.0, "target_delta": 1e-5, "accountant": "rdp"}
    values.update(overrides)
    return TrainingSpec(**values)


def test_plan_takes_q_and_steps_from_the_published_counts_and_charges_every_release() -> None:
    """2,013 published training rows, batch 64: q = 64/2013, ⌊1/q⌋ = 31 steps an epoch; three
    accuracy releases of σ = 20 (q = 1) compose with the 93 steps within the target."""
    plan = plan_job(_spec(), 2013, 1990)
    assert (plan.train_rows, plan.test_rows) == (2013, 1990)
    assert plan.sample_rate == 64 / 2013 and plan.steps_per_epoch == 31 and plan.total_steps == 93
    assert plan.release_epochs == (1, 2, 3) and plan.accuracy_noise == 20.0
    sigma = plan.noise.scale
    assert plan.history() == [(sigma, 64 / 2013, 93), (20.0, 1.0, 3)]
    assert plan.epsilon == pytest.approx(epsilon_for_history("rdp", plan.history(), 1e-5), rel=1e-12)
    assert 2.0 * 0.98 <= plan.epsilon <= 2.0
    assert [plan.releases_by(s) for s in (30, 31, 61, 62, 93)] == [0, 1, 1, 2, 3]
    assert plan.epsilon_after(31) == pytest.approx(
        epsilon_for_history("rdp", [(sigma, 64 / 2013, 31), (20.0, 1.0, 1)], 1e-5), rel=1e-12)
    assert plan.epsilon_after(93) == pytest.approx(plan.epsilon, rel=1e-12)
    assert schedule(_spec(), 2013) == (64 / 2013, 31, 93)


def test_releases_cost_budget_so_fewer_releases_allow_less_noise() -> None:
    every = plan_job(_spec(), 2013, 1990)
    final = plan_job(_spec(release_test_accuracy="final"), 2013, 1990)
    none = plan_job(_spec(release_test_accuracy="none"), 2013, 1990)
    assert final.release_epochs == (3,) and final.history()[-1] == (20.0, 1.0, 1)
    assert none.release_epochs == () and none.accuracy_noise == 0.0
    assert none.history() == [(none.noise.scale, 64 / 2013, 93)]
    assert none.noise.scale < final.noise.scale < every.noise.scale
    noisier = plan_job(_spec(test_accuracy_noise=200.0), 2013, 1990)
    # Nearly free releases (σ = 200) need no more noise than none, to the calibration's 0.5%.
    assert none.noise.scale <= noisier.noise.scale < every.noise.scale


def test_plan_round_trips_through_json() -> None:
    """The plan stored with the job and sent to its worker is the plan admitted."""
    for spec in (_spec(), _spec(noise_schedule="exponential", noise_gamma=0.8),
                 _spec(release_test_accuracy="none")):
        plan = plan_job(spec, 5000, 1000)
        again = JobPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again == plan
        assert again.epsilon_after(again.total_steps) == pytest.approx(plan.epsilon, rel=1e-9)


def test_prv_job_is_calibrated_with_prv() -> None:
    """The job's own accountant decides: PRV's ε ≤ target, where RDP's bound for the same σ is
    above it (RDP would have asked for more noise)."""
    plan = plan_job(_spec(accountant="prv", target_epsilon=1.0, epochs=1,
                          release_test_accuracy="final"), 20_000, 5000)
    assert plan.accountant == "prv" and plan.epsilon <= 1.0
    assert epsilon_for_history("rdp", plan.history(), 1e-5) > 1.0


@pytest.mark.parametrize(("spec", "train_rows", "test_rows", "message"), [
    (_spec(), 2000, 0, "the dataset publishes no test rows; use release_test_accuracy 'none'"),
    (_spec(batch_size=500), 400, 100,
     r"batch_size 500 exceeds the 400 training rows \(the dataset's published count\)"),
    (_spec(batch_size=1, epochs=200), 10_000, 100, f"the limit is {MAX_STEPS:,}"),
    (_spec(test_accuracy_noise=0.5, target_epsilon=0.5), 2000, 100,
     "test-accuracy releases alone spend"),
    (_spec(noise_multiplier=0.3), 2000, 100, "noise_multiplier 0.3 spends"),
])
def test_plans_that_cannot_run_are_invalid_input(spec: TrainingSpec, train_rows: int, test_rows: int,
                                                 message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        plan_job(spec, train_rows, test_rows)
    assert info.value.grpc_code == "INVALID_ARGUMENT"


def test_no_test_rows_is_fine_when_nothing_is_released() -> None:
    plan = plan_job(_spec(release_test_accuracy="none"), 2000, 0)
    assert plan.test_rows == 0 and plan.release_epochs == ()


def test_releases_alone_past_the_target_are_refused_before_the_calibration() -> None:
    """1,000 epochs of accuracy releases spend the target by themselves: found with one cheap
    evaluation (the calibration over a million PRV steps first took minutes)."""
    import time

    started = time.monotonic()
    with pytest.raises(InvalidInput, match="releases alone spend"):
        plan_job(_spec(epochs=1000, batch_size=30, accountant="prv", target_epsilon=1.0),
                 30_000, 15_000)
    assert time.monotonic() - started < 10
