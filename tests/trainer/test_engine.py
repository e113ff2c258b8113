"""DP-SGD engine on real Opacus: empty batches, accounting, parameters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import EpsilonTracker, calibrate_noise_multiplier, epsilon_for
from privtrain.trainer.checkpoints import load_checkpoint, load_parameters
from privtrain.trainer.engine import StepReport, model_from_parameters, train
from privtrain.trainer.spec import TrainingSpec

DOMAINS = {
    "f0": {"type": "numeric", "lower": -4, "upper": 4},
    "f1": {"type": "numeric", "lower": -4, "upper": 4},
    "f2": {"type": "numeric", "lower": -4, "upper": 4},
    "f3": {"type": "numeric", "lower": -4, "upper": 4},
    "label": {"type": "categorical", "values": ["no", "yes"]},
    "split": {"type": "categorical", "values": ["train", "test"]},
}


class Recorder:
    """Collects what the engine reports."""

    def __init__(self) -> None:
        self.info: dict = {}
        self.steps: list[StepReport] = []
        self.epochs: list[tuple[int, float, float]] = []

    def on_start(self, info: dict) -> None:
        self.info = info

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)

    def on_epoch(self, epoch: int, test_accuracy: float, epsilon: float) -> None:
        self.epochs.append((epoch, test_accuracy, epsilon))


def _table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    train = pd.DataFrame({f"f{i}": x[:, i] for i in range(4)} | {"label": label, "split": "train"})
    return pd.concat([train, train.assign(split="test")], ignore_index=True)


@pytest.mark.parametrize("max_physical_batch_size", [1, 2])
def test_empty_poisson_batches_are_real_steps(tmp_path: Path, max_physical_batch_size: int) -> None:
    """C-T01: 20 rows, logical batch 1 (q = 0.05), 30 epochs: empty batches are DP steps.

    About a third of the steps draw no sample: no crash, each still counts (600
    steps, the accountant's ε is the one for 600 steps) and carries no loss.
    """
    spec = TrainingSpec(
        dataset_id="d", target_column="label", model="logistic_regression", batch_size=1,
        max_physical_batch_size=max_physical_batch_size, epochs=30, target_epsilon=50.0,
        target_delta=1e-5, momentum=0.9, learning_rate=0.1, accountant="rdp",
    )
    rec = Recorder()
    result = train(spec, _table(20), DOMAINS, tmp_path, rec)
    assert result.steps == 600 == len(rec.steps)
    empty = [s for s in rec.steps if s.batch_size == 0]
    assert 150 < len(empty) < 260  # (1 - 0.05)^20 ≈ 0.36 of 600
    assert all(s.loss is None for s in empty)
    assert all(s.loss is not None and math.isfinite(s.loss) for s in rec.steps if s.batch_size)
    expected = epsilon_for("rdp", result.noise_multiplier, 0.05, 600, 1e-5)
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    assert result.epsilon <= 50.0


def test_adult_like_run_meets_target_and_parameters_round_trip(tmp_path: Path) -> None:
    """Achieved ε ≤ target, reported ε never decreases nor under-reports, and the
    saved parameters (no ``_module.`` prefix) reproduce the server's accuracy."""
    spec = TrainingSpec(
        dataset_id="d", target_column="label", model="mlp", hidden_sizes=(16,), batch_size=64,
        max_physical_batch_size=32, epochs=3, target_epsilon=2.0, target_delta=1e-5,
        learning_rate=0.5, accountant="prv", seed=3,
    )
    table = _table(2000)
    rec = Recorder()
    result = train(spec, table, DOMAINS, tmp_path, rec)
    assert result.epsilon <= 2.0
    assert result.epsilon > 1.5  # calibration is tight, not wasteful
    eps = [s.epsilon for s in rec.steps]
    assert eps == sorted(eps)
    for report in rec.steps[:: max(1, len(rec.steps) // 7)]:
        exact = epsilon_for("prv", result.noise_multiplier, result.sample_rate, report.step, 1e-5)
        assert report.epsilon >= exact - 1e-9
    assert eps[-1] == pytest.approx(result.epsilon, rel=1e-6)
    assert result.test_accuracy > 0.85

    tensors, metadata = load_parameters(result.parameters_path.read_bytes())
    assert not any(k.startswith("_module.") for k in tensors)
    model, encoder = model_from_parameters(tensors, metadata)
    x, y = encoder.encode(table[table.split == "test"])
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(result.test_accuracy, abs=1e-12)

    tensors_ckpt, state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0003.safetensors")
    assert state["step"] == result.steps
    assert state["accountant"]["history"] == [[result.noise_multiplier, result.sample_rate, result.steps]]
    assert any(k.startswith("optimizer.") and k.endswith("momentum_buffer") for k in tensors_ckpt)


def test_calibrated_sigma_never_exceeds_target() -> None:
    """The calibrated σ's ε is at most the target for both accountants."""
    for accountant in ("prv", "rdp"):
        for target in (0.5, 3.0):
            sigma = calibrate_noise_multiplier(
                target_epsilon=target, target_delta=1e-5, sample_rate=0.01, steps=500,
                accountant=accountant,
            )
            eps = epsilon_for(accountant, sigma, 0.01, 500, 1e-5)
            assert eps <= target
            assert eps > 0.95 * target


def test_epsilon_tracker_is_an_upper_bound_and_exact_at_the_end() -> None:
    """Between evaluations the tracker reports the next evaluation point's ε."""
    tracker = EpsilonTracker("rdp", 1.0, 0.02, 100, 1e-5)
    values = [tracker.after(step) for step in range(1, 101)]
    assert values == sorted(values)
    for step, value in zip(range(1, 101), values, strict=True):
        assert value >= epsilon_for("rdp", 1.0, 0.02, step, 1e-5) - 1e-12
    assert values[-1] == pytest.approx(epsilon_for("rdp", 1.0, 0.02, 100, 1e-5))


def test_bad_spec_is_refused_naming_the_field() -> None:
    """Validation happens before anything runs, and says which field is wrong."""
    with pytest.raises(InvalidInput, match="max_grad_norm"):
        TrainingSpec(dataset_id="d", target_column="label", max_grad_norm=-1.0)
    with pytest.raises(InvalidInput, match="accountant"):
        TrainingSpec(dataset_id="d", target_column="label", accountant="gdp")
    with pytest.raises(InvalidInput, match="unknown field"):
        TrainingSpec.from_dict({"dataset_id": "d", "target_column": "label", "sigma": 1})


def test_target_outside_manifest_domain_is_refused(tmp_path: Path) -> None:
    """Labels must be among the manifest's declared classes."""
    table = _table(50)
    table.loc[0, "label"] = "maybe"
    spec = TrainingSpec(dataset_id="d", target_column="label", batch_size=8, epochs=1)
    with pytest.raises(InvalidInput, match="maybe"):
        train(spec, table, DOMAINS, tmp_path, Recorder())


def test_per_layer_clipping_trains_with_the_flat_privacy_analysis(tmp_path: Path) -> None:
    """Per-layer clipping (C / sqrt(L) per tensor) spends exactly the ε of flat clipping for
    the same σ, q and steps, and changes the update (the clipping differs)."""
    common = dict(dataset_id="d", target_column="label", model="mlp", hidden_sizes=(8,),
                  batch_size=50, max_physical_batch_size=50, epochs=2, noise_multiplier=1.0,
                  target_epsilon=50.0, accountant="rdp", seed=5)
    table = _table(400)
    flat = train(TrainingSpec(**common), table, DOMAINS, tmp_path / "flat", Recorder())
    layered = train(TrainingSpec(**common, clipping="per_layer"), table, DOMAINS,
                    tmp_path / "layered", Recorder())
    assert layered.steps == flat.steps
    assert layered.epsilon == pytest.approx(flat.epsilon, rel=1e-12)
    a, _ = load_parameters(flat.parameters_path.read_bytes())
    b, _ = load_parameters(layered.parameters_path.read_bytes())
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(InvalidInput, match="per_layer"):
        TrainingSpec(**common, clipping="per_layer", world_size=2)


def test_evaluation_reports_progress_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each epoch's test-set evaluation reports rows done after every batch, ending at the
    test-set size, so the stall monitor sees a long evaluation as progress."""
    import privtrain.trainer.engine as engine

    monkeypatch.setattr(engine, "EVAL_BATCH", 300)
    spec = TrainingSpec(
        dataset_id="d", target_column="label", model="logistic_regression", batch_size=64,
        max_physical_batch_size=64, epochs=2, target_epsilon=3.0, target_delta=1e-5,
        learning_rate=0.1, accountant="rdp",
    )
    calls: list[tuple[int, int]] = []
    train(spec, _table(1000), DOMAINS, tmp_path, Recorder(), on_evaluation=lambda d, t: calls.append((d, t)))
    per_epoch = [(300, 1000), (600, 1000), (900, 1000), (1000, 1000)]
    assert calls == per_epoch * 2
