"""bf16 autocast and torch.compile as job options: same privacy, float32 parameters."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from adult_tensors import Recorder, accuracy_on, adult_tensors, plan_for
from opacus import GradSampleModule
from torch import nn

from privtrain.errors import InvalidInput
from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.dp_sgd import physical_step, run_dp_sgd
from privtrain.trainer.secure_noise import SecureDPOptimizer, attach_randomness
from privtrain.trainer.spec import TrainingSpec


@pytest.fixture(scope="module")
def adult() -> tuple:
    return adult_tensors(6000)


def _spec(**overrides: object) -> TrainingSpec:
    values: dict = dict(dataset_id="adult", target_column="income", model="mlp", epochs=2,
                        batch_size=200, max_physical_batch_size=100, target_epsilon=2.0,
                        target_delta=1e-5, accountant="rdp", learning_rate=0.3, seed=2, device="cpu")
    values.update(overrides)
    return TrainingSpec(**values)


def _model(spec: TrainingSpec) -> nn.Module:
    torch.manual_seed(spec.seed)
    return nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 2))


def _run(spec: TrainingSpec, adult: tuple, out: Path, mode: str, key: bytes) -> tuple:
    """One job; ``key`` is its randomness key, shared by the runs a test compares so that they
    draw the same batches and noise (as two jobs never do)."""
    train, x_test, y_test = adult
    recorder = Recorder()
    result = run_dp_sgd(spec, _model(spec), train, accuracy_on(x_test, y_test), out, recorder,
                        plan=plan_for(spec, train, len(y_test)), randomness=DPRandomness(key),
                        clipping_mode=mode)
    return result, recorder


@pytest.mark.parametrize(("mode", "clipping"), [("ghost", "flat"), ("hooks", "flat"),
                                                 ("hooks", "per_layer"), ("ghost", "adaptive")])
def test_bf16_job_trains_with_float32_parameters_and_fp32_epsilon(tmp_path: Path, adult: tuple,
                                                                  mode: str, clipping: str) -> None:
    """On CPU (autocast works the same way as on CUDA): loss falls, parameters stay float32,
    ε is the fp32 job's to the last digit, exact accuracy close to fp32's (same batches and noise)."""
    key = os.urandom(32)
    fp32, _ = _run(_spec(clipping=clipping), adult, tmp_path / "fp32", mode, key)
    bf16, recorder = _run(_spec(clipping=clipping, precision="bf16"), adult, tmp_path / "bf16", mode, key)
    assert recorder.info["precision"] == "bf16" and recorder.info["clipping_mode"] == mode
    losses = [s.loss for s in recorder.steps if s.loss is not None]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.epsilon == fp32.epsilon
    assert abs(bf16.exact_test_accuracy - fp32.exact_test_accuracy) < 0.03


def test_bf16_per_sample_gradients_are_clipped_in_float32() -> None:
    """Hooks mode: the per-sample gradients the optimizer clips are float32 after a bf16 step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 8), nn.ReLU(), nn.Linear(8, 2))
    module = GradSampleModule(model, loss_reduction="mean")
    optimizer = attach_randomness(SecureDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
        expected_batch_size=4), DPRandomness.fresh())
    x, y = torch.randn(4, 7), torch.randint(0, 2, (4,))
    physical_step(module, optimizer, nn.CrossEntropyLoss(), x, y, torch.device("cpu"),
                  autocast_dtype=torch.bfloat16)
    assert {p.grad_sample.dtype for p in model.parameters()} == {torch.float32}
    assert {p.summed_grad.dtype for p in model.parameters()} == {torch.float32}


def test_compiled_evaluation_gives_the_eager_accuracy(tmp_path: Path, adult: tuple) -> None:
    """compile=True compiles only the evaluation forward: with the same randomness key, training
    is bit-identical and the held-out accuracy (exact and released) equals the eager job's."""
    key = os.urandom(32)
    eager, _ = _run(_spec(), adult, tmp_path / "eager", "ghost", key)
    compiled, _ = _run(_spec(compile=True), adult, tmp_path / "compiled", "ghost", key)
    assert compiled.exact_test_accuracy == eager.exact_test_accuracy
    assert compiled.test_accuracy == eager.test_accuracy
    for a, b in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(InvalidInput, match="precision must be one of"):
        _spec(precision="fp16")
