"""Noise schedules: decaying σ whose calibrated scale keeps the composed ε within the target."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from adult_tensors import Recorder, accuracy_on, adult_tensors, plan_for
from torch import nn

from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import restore_accountant
from privtrain.trainer.dp_sgd import JobCancelled, run_dp_sgd
from privtrain.trainer.noise_schedule import calibrate_schedule, epoch_shape
from privtrain.trainer.plan import plan_job
from privtrain.trainer.spec import TrainingSpec

# The binary search stops at a relative bracket of 0.5% on σ; ε moves by about as much.
CALIBRATION_SLACK = 0.02


def _google_epsilon(accountant: str, history: list[tuple[float, float, int]], delta: float) -> float:
    import dp_accounting
    from dp_accounting import pld, rdp

    reference = (pld.PLDAccountant(value_discretization_interval=1e-4) if accountant == "prv"
                 else rdp.RdpAccountant())
    for sigma, q, steps in history:
        reference.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return float(reference.get_epsilon(delta))


def test_schedule_shapes_decay_as_configured() -> None:
    assert epoch_shape("constant", 0.5, 1, 3) == (1.0, 1.0, 1.0)
    assert epoch_shape("exponential", 0.5, 1, 3) == (1.0, 0.5, 0.25)
    assert epoch_shape("step", 0.5, 2, 5) == (1.0, 1.0, 0.5, 0.5, 0.25)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrated_schedule_meets_the_target_and_matches_dp_accounting(accountant: str) -> None:
    """Exponential decay γ = 0.8 over 4 epochs of 50 steps at q = 0.02: σ falls by 0.8 each
    epoch; ε ≤ target and within the calibration slack of it; our ε for that σ sequence
    equals Google dp-accounting's (PLD for PRV, RDP for RDP) within 1%."""
    plan = calibrate_schedule(epoch_shape("exponential", 0.8, 1, 4), target_epsilon=2.0,
                              target_delta=1e-5, sample_rate=0.02, steps_per_epoch=50,
                              accountant=accountant)
    sigmas = [plan.sigma_at(step) for step in (1, 50, 51, 101, 151, 200)]
    assert sigmas[0] == sigmas[1]
    assert sigmas[2:] == pytest.approx([sigmas[0] * 0.8 ** e for e in (1, 2, 3, 3)])
    history = plan.history(plan.total_steps)
    assert [n for _, _, n in history] == [50] * 4
    epsilon = plan.epsilon(accountant, 1e-5)
    assert 2.0 * (1 - CALIBRATION_SLACK) <= epsilon <= 2.0
    assert epsilon == pytest.approx(_google_epsilon(accountant, history, 1e-5), rel=0.01)


def _spec(**overrides: object) -> TrainingSpec:
    values: dict = dict(dataset_id="adult", target_column="income", model="logistic_regression",
                        epochs=3, batch_size=256, max_physical_batch_size=256, target_epsilon=1.0,
                        target_delta=1e-5, accountant="rdp", learning_rate=0.5, seed=5, device="cpu",
                        noise_schedule="exponential", noise_gamma=0.7, release_test_accuracy="final")
    values.update(overrides)
    return TrainingSpec(**values)


def _run(spec: TrainingSpec, adult: tuple, out: Path, **kwargs: object) -> tuple:
    train, x_test, y_test = adult
    torch.manual_seed(spec.seed)
    model = nn.Linear(train.tensors[0].shape[1], 2)
    recorder = Recorder()
    result = run_dp_sgd(spec, model, train, accuracy_on(x_test, y_test), out, recorder,
                        plan=plan_for(spec, train, len(y_test)), **kwargs)
    return result, recorder


def test_job_records_the_scheduled_sigma_of_every_step_and_resume_reproduces_it(tmp_path: Path) -> None:
    """Adult, 3 epochs, σ × 0.7 per epoch: the accountant holds one (σ_e, q, steps) segment per
    epoch with σ_e = σ_0 · 0.7^e, then the final accuracy release; reported ε never decreases
    and ends ≤ target; a job with the same randomness key (the saved key in its folder)
    cancelled after epoch 2 and resumed ends with the same ε and bit-identical parameters."""
    adult = adult_tensors(6000)
    spec = _spec()
    full, recorder = _run(spec, adult, tmp_path / "full")
    state = json.loads(sorted((tmp_path / "full" / "checkpoints").glob("*.json"))[-1].read_text())
    history = restore_accountant(state["accountant"]).history
    steps_per_epoch = recorder.info["steps_per_epoch"]
    assert history == [*[(pytest.approx(full.noise_multiplier * 0.7 ** e), full.sample_rate, steps_per_epoch)
                         for e in range(3)], (20.0, 1.0, 1)]
    eps = [s.epsilon for s in recorder.steps]
    assert eps == sorted(eps) and 0 < eps[-1] == pytest.approx(full.epsilon) and full.epsilon <= 1.0

    partial = Recorder()
    cut = 2 * steps_per_epoch
    (tmp_path / "cut").mkdir()
    shutil.copy(tmp_path / "full" / "dp-randomness.json", tmp_path / "cut" / "dp-randomness.json")
    with pytest.raises(JobCancelled):
        run_dp_sgd(spec, _fresh(adult, spec), adult[0], accuracy_on(*adult[1:]), tmp_path / "cut",
                   partial, plan=plan_for(spec, adult[0], len(adult[2])),
                   should_stop=lambda: len(partial.steps) >= cut and bool(partial.epochs[1:]))
    assert len(partial.steps) == cut
    resumed, again = _run(spec, adult, tmp_path / "cut", resume=True)
    assert again.info["resumed_at_step"] == cut
    assert resumed.epsilon == full.epsilon
    assert resumed.noise_multiplier == full.noise_multiplier
    assert resumed.test_accuracy == full.test_accuracy
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)


def _fresh(adult: tuple, spec: TrainingSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    return nn.Linear(adult[0].tensors[0].shape[1], 2)


def test_fixed_sigma_with_a_schedule_is_checked_against_the_target() -> None:
    """A given σ is the first epoch's; if the decayed sequence overspends, INVALID_ARGUMENT."""
    with pytest.raises(InvalidInput, match="noise_multiplier 0.8 spends") as info:
        plan_job(_spec(noise_multiplier=0.8, noise_gamma=0.5), 6000, 2000)
    assert info.value.grpc_code == "INVALID_ARGUMENT"
    plan = plan_job(_spec(noise_multiplier=8.0, noise_gamma=0.9), 6000, 2000)
    assert plan.noise.scale == 8.0 and plan.epsilon <= 1.0


def test_schedule_options_are_validated_with_one_clear_line() -> None:
    with pytest.raises(InvalidInput, match="noise_schedule must be one of"):
        _spec(noise_schedule="cosine")
    with pytest.raises(InvalidInput, match=r"noise_gamma must be in \(0, 1\]"):
        _spec(noise_gamma=1.5)
    with pytest.raises(InvalidInput, match="noise_step_epochs must be an integer >= 1"):
        _spec(noise_schedule="step", noise_step_epochs=0)




@pytest.mark.parametrize(("overrides", "message"), [
    ({"epochs": 2, "noise_gamma": 1e-300}, r"noise_gamma 1e-300 makes the last epoch's σ .* the limit is 0.001"),
    ({"epochs": 3, "noise_gamma": 1e-200}, r"1e-200\^2 = 1e-400 times the first; the limit is 0.001"),
    ({"epochs": 15, "noise_gamma": 0.5}, r"use noise_gamma >= 0.6106"),
    ({"epochs": 100, "noise_gamma": 0.9}, r"uses 100 noise levels; the limit is 20"),
    ({"epochs": 100, "noise_schedule": "step", "noise_step_epochs": 4}, r"use noise_step_epochs >= 5"),
    ({"epochs": 2, "noise_schedule": "step", "noise_step_epochs": 1_000_000},
     r"noise_step_epochs 1000000 must be below epochs 2"),
])
def test_schedules_outside_the_sane_sigma_ratio_are_refused_naming_the_option_and_limit(
        overrides: dict, message: str) -> None:
    """σ falling more than 1000x within a job, more than 20 σ levels, or a step schedule that
    never steps: one InvalidInput line, raised when the spec is built (before any accounting)."""
    with pytest.raises(InvalidInput, match=message) as info:
        _spec(**overrides)
    assert "\n" not in str(info.value) and info.value.grpc_code == "INVALID_ARGUMENT"


def test_schedule_at_the_floor_calibrates_quickly_within_the_target() -> None:
    """The tester's 2-epoch ε=0.5 job with the smallest allowed γ (0.001, σ falling 1000x):
    RDP calibration (the final accuracy release included) ends within seconds with ε ≤ target
    and a last σ of scale·γ."""
    spec = _spec(epochs=2, target_epsilon=0.5, batch_size=64, noise_gamma=1e-3)
    started = time.monotonic()
    plan = plan_job(spec, 1437, 360).noise
    assert time.monotonic() - started < 10
    assert plan.sample_rate == 64 / 1437 and plan.steps_per_epoch == 1437 // 64
    assert plan.releases == ((20.0, 1.0, 1),)
    assert 0.5 * (1 - CALIBRATION_SLACK) <= plan.epsilon("rdp", 1e-5) <= 0.5
    assert plan.sigma_at(plan.total_steps) == pytest.approx(plan.scale * 1e-3)


def test_calibration_refuses_a_shape_below_the_floor_instead_of_searching_it() -> None:
    with pytest.raises(InvalidInput, match=r"factors must lie in \[0.001, 1\]"):
        calibrate_schedule((1.0, 1e-300), target_epsilon=0.5, target_delta=1e-5, sample_rate=0.04,
                           steps_per_epoch=22, accountant="rdp")


def test_accountant_failure_is_invalid_input_naming_the_sigmas() -> None:
    """Opacus' RDP analysis raises ValueError ("result of subtraction must be non-negative")
    at σ = 1e8 next to σ = 1; it reaches the caller as InvalidInput naming the σ range."""
    from privtrain.trainer.accounting import epsilon_for_history

    with pytest.raises(InvalidInput, match=r"rdp accountant cannot evaluate σ from 1 to 1e\+08"):
        epsilon_for_history("rdp", [(1e8, 0.011, 89), (1.0, 0.011, 89)], 1e-5)


def test_sigma_above_the_limit_is_refused_naming_the_schedule() -> None:
    with pytest.raises(InvalidInput, match=r"noise_schedule 'exponential' \(noise_gamma 0.7, 3 epochs\): "
                                           r"noise_multiplier σ 3e\+06 is above the limit 1e\+06"):
        plan_job(_spec(noise_multiplier=3e6), 6000, 2000)
