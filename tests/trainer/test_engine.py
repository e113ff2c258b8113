"""DP-SGD engine on real Opacus: empty batches, accounting, parameters."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from privtrain.datasets.image_arrays import draw_split, encode_image_arrays
from privtrain.datasets.pack_images import image_manifest
from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import EpsilonTracker, calibrate_noise_multiplier, epsilon_for
from privtrain.trainer.checkpoints import load_checkpoint, load_parameters
from privtrain.trainer.engine import (
    StepReport,
    TableSplit,
    count_correct,
    model_from_parameters,
    train,
    train_images,
)
from privtrain.trainer.evaluate import evaluate_image_parameters, evaluate_parameters
from privtrain.trainer.plan import plan_job
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
        # (epoch, released accuracy or None, exact accuracy, ε)
        self.epochs: list[tuple[int, float | None, float, float]] = []

    def on_start(self, info: dict) -> None:
        self.info = info

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)

    def on_epoch(self, epoch: int, released_accuracy: float | None, exact_accuracy: float,
                 epsilon: float) -> None:
        self.epochs.append((epoch, released_accuracy, exact_accuracy, epsilon))


SPLIT = TableSplit(column="split", train="train", test="test")


def _train(spec: TrainingSpec, table: pd.DataFrame, out: Path, reporter: Recorder, *,
           published: tuple[int, int] | None = None, **kwargs: object):
    """``train`` on the owner's split; the plan uses ``published`` row counts (default: exact)."""
    if published is None:
        published = (int((table["split"] == "train").sum()), int((table["split"] == "test").sum()))
    return train(spec, table, DOMAINS, SPLIT, out, reporter, plan=plan_job(spec, *published), **kwargs)


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
    steps, the accountant's ε is the one for 600 steps), draws its noise (the NOISE stream
    advanced once per step) and carries no loss.
    """
    spec = TrainingSpec(
        dataset_id="d", target_column="label", model="logistic_regression", batch_size=1,
        max_physical_batch_size=max_physical_batch_size, epochs=30, target_epsilon=50.0,
        noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5, momentum=0.9,
        learning_rate=0.1, accountant="rdp", release_test_accuracy="none",
    )
    rec = Recorder()
    result = _train(spec, _table(20), tmp_path, rec)
    assert result.steps == 600 == len(rec.steps)
    empty = [s for s in rec.steps if s.batch_size == 0]
    assert 150 < len(empty) < 260  # (1 - 0.05)^20 ≈ 0.36 of 600
    assert all(s.loss is None for s in empty)
    assert all(s.loss is not None and math.isfinite(s.loss) for s in rec.steps if s.batch_size)
    expected = epsilon_for("rdp", 1.0, 0.05, 600, 1e-5)
    assert result.noise_multiplier == 1.0
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    assert result.epsilon <= 50.0
    _, state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0030.safetensors")
    assert state["randomness"]["NOISE"] == 600 and state["randomness"]["SAMPLING"] == 600
    assert result.test_accuracy is None and [e[1] for e in rec.epochs] == [None] * 30


def test_adult_like_run_meets_target_and_parameters_round_trip(tmp_path: Path) -> None:
    """Achieved ε ≤ target (the three noisy accuracy releases included), reported ε never
    decreases nor under-reports, q comes from the published training rows, and the saved
    parameters (no ``_module.`` prefix) reproduce the server's exact accuracy."""
    spec = TrainingSpec(
        dataset_id="d", target_column="label", model="mlp", hidden_sizes=(16,), batch_size=64,
        max_physical_batch_size=32, epochs=3, target_epsilon=2.0, target_delta=1e-5,
        learning_rate=0.5, accountant="prv", seed=3,
    )
    table = _table(2000)
    rec = Recorder()
    plan = plan_job(spec, 2013, 1990)  # published (noisy) counts, not the exact 2000 and 2000
    result = train(spec, table, DOMAINS, SPLIT, tmp_path, rec, plan=plan)
    assert result.sample_rate == 64 / 2013 and result.steps == 3 * (2013 // 64)
    assert (result.train_rows, result.test_rows) == (2013, 1990)
    assert (result.exact_train_rows, result.exact_test_rows) == (2000, 2000)
    assert result.epsilon <= 2.0
    assert result.epsilon > 1.5  # calibration is tight, not wasteful
    eps = [s.epsilon for s in rec.steps]
    assert eps == sorted(eps)
    for report in rec.steps[:: max(1, len(rec.steps) // 7)]:
        assert report.epsilon >= plan.epsilon_after(report.step) - 1e-9
    assert eps[-1] == pytest.approx(result.epsilon, rel=1e-3)
    # The noise comes from secret randomness, so accuracy varies run to run (one run of
    # the suite gave 0.84): 0.75 is still far above chance (0.5).
    assert result.exact_test_accuracy > 0.75
    # Each release: (correct + N(0, 20²)) / 1990 published rows, so within 5 std of the exact count.
    assert [e[0] for e in rec.epochs] == [1, 2, 3]
    for _, released, exact, _ in rec.epochs:
        assert released is not None and abs(released * 1990 - exact * 2000) < 100
    assert result.test_accuracy == rec.epochs[-1][1] and result.exact_test_accuracy == rec.epochs[-1][2]

    tensors, metadata = load_parameters(result.parameters_path.read_bytes())
    assert not any(k.startswith("_module.") for k in tensors)
    model, encoder = model_from_parameters(tensors, metadata)
    x, y = encoder.encode(table[table.split == "test"])
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(result.exact_test_accuracy, abs=1e-12)

    tensors_ckpt, state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0003.safetensors")
    assert state["step"] == result.steps
    epoch = [result.noise_multiplier, result.sample_rate, result.steps // 3]
    assert state["accountant"]["history"] == [epoch, [20.0, 1.0, 1]] * 3
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


def test_rows_with_an_undeclared_or_missing_label_are_left_out(tmp_path: Path) -> None:
    """A label outside the manifest's classes, or none, drops that row alone: whether such a row
    exists must not decide whether the job fails (that would release it). The error for no
    trainable rows at all depends on the owner's split alone."""
    table = _table(50)
    table.loc[0, "label"] = "maybe"  # a training row
    table.loc[3, "label"] = None  # a training row
    table.loc[60, "label"] = "maybe"  # a test row
    spec = TrainingSpec(dataset_id="d", target_column="label", model="logistic_regression",
                        batch_size=8, max_physical_batch_size=8, epochs=1, target_epsilon=10.0,
                        accountant="rdp")
    rec = Recorder()
    result = _train(spec, table, tmp_path / "ok", rec, published=(50, 50))
    assert (result.exact_train_rows, result.exact_test_rows) == (48, 49)
    assert (result.train_rows, result.test_rows) == (50, 50)
    assert result.steps == 6 and math.isfinite(result.final_loss)
    # The client-side re-evaluation selects the rows as the server does: the server's exact figure.
    assert evaluate_parameters(result.parameters_path.read_bytes(), table) == (
        pytest.approx(result.exact_test_accuracy, abs=1e-12), 49)

    no_labels = table.assign(label=np.where(table["split"] == "train", "maybe", table["label"]))
    with pytest.raises(InvalidInput, match="no training rows with a declared label"):
        _train(spec, no_labels, tmp_path / "none", Recorder(), published=(50, 50))


def test_twin_jobs_with_the_same_spec_and_seed_train_differently(tmp_path: Path) -> None:
    """The seed fixes the initialisation only: two jobs with the same spec, seed and data draw
    their own secret batches and noise, so their parameters differ; each job's key is its own
    0600 file in its 0700 folder, and the checkpoints carry the stream counters, never the key."""
    spec = TrainingSpec(dataset_id="d", target_column="label", model="logistic_regression",
                        batch_size=20, max_physical_batch_size=20, epochs=2, target_epsilon=5.0,
                        learning_rate=0.1, accountant="rdp", seed=7)
    table = _table(200)
    results = [_train(spec, table, tmp_path / name, Recorder()) for name in ("a", "b")]
    a, _ = load_parameters(results[0].parameters_path.read_bytes())
    b, _ = load_parameters(results[1].parameters_path.read_bytes())
    assert a.keys() == b.keys() and all(not torch.equal(a[k], b[k]) for k in a)
    assert results[0].parameters_sha256 != results[1].parameters_sha256
    keys = []
    for name in ("a", "b"):
        folder = tmp_path / name
        assert folder.stat().st_mode & 0o777 == 0o700
        assert (folder / "dp-randomness.json").stat().st_mode & 0o777 == 0o600
        assert (folder / "parameters.safetensors").stat().st_mode & 0o777 == 0o600
        key = json.loads((folder / "dp-randomness.json").read_text())["key"]
        keys.append(key)
        for checkpoint in (folder / "checkpoints").iterdir():
            assert checkpoint.stat().st_mode & 0o777 == 0o600
            assert key.encode() not in checkpoint.read_bytes()
        _, state = load_checkpoint(folder / "checkpoints" / "epoch-0002.safetensors")
        assert state["randomness"]["NOISE"] == state["randomness"]["SAMPLING"] == 2 * 10
    assert keys[0] != keys[1]


def test_accuracy_is_released_as_the_spec_asks_and_charged_in_the_plan(tmp_path: Path) -> None:
    """``final``: one noisy release after the last epoch (None before it), one (20, 1, 1) entry in
    the accountant; ``none``: no release at all and nothing charged for it."""
    common: dict = {"dataset_id": "d", "target_column": "label", "model": "logistic_regression",
                    "batch_size": 20, "max_physical_batch_size": 20, "epochs": 3,
                    "noise_multiplier": 2.0, "target_epsilon": 20.0, "learning_rate": 0.1,
                    "accountant": "rdp"}
    table = _table(100)
    histories = {}
    for release in ("final", "none"):
        spec = TrainingSpec(**common, release_test_accuracy=release)
        rec = Recorder()
        result = _train(spec, table, tmp_path / release, rec)
        released = [e[1] for e in rec.epochs]
        assert all(0.0 <= e[2] <= 1.0 for e in rec.epochs)
        if release == "final":
            assert released[:2] == [None, None] and released[2] is not None
            assert result.test_accuracy == released[2]
        else:
            assert released == [None] * 3 and result.test_accuracy is None
        _, state = load_checkpoint(tmp_path / release / "checkpoints" / "epoch-0003.safetensors")
        histories[release] = state["accountant"]["history"]
    assert histories["none"] == [[2.0, 0.2, 15]]
    assert histories["final"] == [[2.0, 0.2, 15], [20.0, 1.0, 1]]


def test_image_job_trains_on_the_owners_split_and_the_client_recomputes_its_accuracy(tmp_path: Path) -> None:
    """A packed image file: the rows its ``split`` tensor marks 1 are held out, the others trained
    on; q comes from the published counts; ``evaluate_image_parameters`` on the same file gives
    the server's exact test accuracy over the same test rows."""
    rng = np.random.default_rng(0)
    rows = 300
    labels = rng.integers(0, 2, rows).astype(np.int64)
    features = (rng.normal(size=(rows, 1, 4, 4)) + 2.0 * labels[:, None, None, None]).astype(np.float32)
    split = draw_split(rows, 0.25)
    data = encode_image_arrays(features, labels * 2 + 3, split)  # label values 3 and 5
    manifest = image_manifest("test", data, rows, (1, 4, 4), (3, 5))
    spec = TrainingSpec(dataset_id="d", target_column="label", model="sequential",
                        model_options={"layers": [{"type": "Flatten"}, {"type": "Linear", "args": [16, 2]}]},
                        batch_size=30, max_physical_batch_size=30, epochs=2, target_epsilon=8.0,
                        learning_rate=1.0, accountant="rdp")
    rec = Recorder()
    result = train_images(spec, data, manifest, tmp_path, rec, plan=plan_job(spec, 230, 70))
    test_rows = int(split.sum())
    assert (result.exact_train_rows, result.exact_test_rows) == (rows - test_rows, test_rows)
    assert (result.train_rows, result.test_rows) == (230, 70) and result.sample_rate == 30 / 230
    assert result.steps == 2 * (230 // 30)
    accuracy, counted = evaluate_image_parameters(result.parameters_path.read_bytes(), data)
    assert counted == test_rows and accuracy == pytest.approx(result.exact_test_accuracy, abs=1e-12)
    assert result.exact_test_accuracy > 0.75  # two classes 2 std apart in every pixel
    assert [e[2] for e in rec.epochs][-1] == result.exact_test_accuracy


def test_count_correct_counts_argmax_hits() -> None:
    """``count_correct`` returns an int count (the DP release adds noise to it), over batches."""
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    features = np.array([[1, 0], [0, 1], [1, 0], [0, 2]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1], dtype=np.int64)
    correct = count_correct(model, features, labels, torch.device("cpu"))
    assert correct == 3 and isinstance(correct, int)


def test_split_column_cannot_be_a_feature() -> None:
    """The owner's split column is not a feature: naming it in feature_columns is refused."""
    from privtrain.trainer.engine import build_encoder

    spec = TrainingSpec(dataset_id="d", target_column="label", feature_columns=("f0", "split"))
    with pytest.raises(InvalidInput, match=r"\['split'\] cannot be features"):
        build_encoder(spec, DOMAINS, SPLIT)
    encoder = build_encoder(TrainingSpec(dataset_id="d", target_column="label"), DOMAINS, SPLIT)
    assert [c.name for c in encoder.columns] == ["f0", "f1", "f2", "f3"]


def test_per_layer_clipping_trains_with_the_flat_privacy_analysis(tmp_path: Path) -> None:
    """Per-layer clipping (C / sqrt(L) per tensor) spends exactly the ε of flat clipping for
    the same σ, q and steps, and changes the update (the clipping differs)."""
    common = dict(dataset_id="d", target_column="label", model="mlp", hidden_sizes=(8,),
                  batch_size=50, max_physical_batch_size=50, epochs=2, noise_multiplier=1.0,
                  target_epsilon=50.0, accountant="rdp", seed=5)
    table = _table(400)
    flat = _train(TrainingSpec(**common), table, tmp_path / "flat", Recorder())
    layered = _train(TrainingSpec(**common, clipping="per_layer"), table, tmp_path / "layered", Recorder())
    assert layered.steps == flat.steps
    assert layered.epsilon == pytest.approx(flat.epsilon, rel=1e-12)
    a, _ = load_parameters(flat.parameters_path.read_bytes())
    b, _ = load_parameters(layered.parameters_path.read_bytes())
    assert any(not torch.equal(a[k], b[k]) for k in a)


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
    _train(spec, _table(1000), tmp_path, Recorder(), on_evaluation=lambda d, t: calls.append((d, t)))
    per_epoch = [(300, 1000), (600, 1000), (900, 1000), (1000, 1000)]
    assert calls == per_epoch * 2
