"""A sample whose gradient is not finite contributes nothing, in every clipping mode.

If a NaN or an infinity reached the clipped sum, the released parameters would be NaN
exactly when such a sample was in the batch: a release no noise hides. It is zeroed
before clipping (norm 0 ≤ C), so the sum equals the sum without that sample.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.dp_sgd import run_dp_sgd
from privtrain.trainer.fast_clipping import prepare_private_training
from privtrain.trainer.plan import plan_job
from privtrain.trainer.secure_noise import SecureDPPerLayerOptimizer, attach_randomness
from privtrain.trainer.spec import TrainingSpec

KEY = bytes(range(32))
BATCH = 6
BAD = 2  # the row made non-finite


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _batch(bad: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Six rows (large targets on some, so that some are clipped); row 2 holds ``bad`` if given."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 4, generator=gen) * torch.tensor([[5.0], [0.1], [1.0], [3.0], [0.2], [8.0]])
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    if bad is not None:
        x[BAD, 1] = bad
    return x, y


def _without_bad_row(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = [i for i in range(BATCH) if i != BAD]
    return x[keep], y[keep]


def _dp_step(mode: str, x: torch.Tensor, y: torch.Tensor, noise: float) -> tuple[list, list]:
    """One DP-SGD step on ``(x, y)`` with the logical batch size fixed at 6: (p.grad, parameters)."""
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    randomness = DPRandomness(KEY)
    if mode == "per_layer":
        module: nn.Module = GradSampleModule(model, loss_reduction="mean")
        opt = attach_randomness(SecureDPPerLayerOptimizer(
            sgd, noise_multiplier=noise, max_grad_norm=[0.5] * 4, expected_batch_size=BATCH,
            loss_reduction="mean"), randomness)
    else:
        module, opt, _ = prepare_private_training(
            model, sgd, noise_multiplier=noise, max_grad_norm=1.0, expected_batch_size=BATCH,
            randomness=randomness, mode=mode)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.functional.cross_entropy(module(x), y).backward()
    opt.step()
    return ([p.grad.detach().clone() for p in model.parameters()],
            [p.detach().clone() for p in model.parameters()])


@pytest.mark.parametrize("mode", ["hooks", "ghost", "per_layer"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_sample_adds_exactly_nothing(mode: str, bad: float) -> None:
    """Noise 0: the batch whose row 2 makes its loss non-finite gives the clipped sum of the batch
    without row 2 (same logical batch size), and the parameters stay finite."""
    x, y = _batch(bad)
    with torch.no_grad():
        assert not bool(torch.isfinite(nn.functional.cross_entropy(_model()(x), y)))
    grads, params = _dp_step(mode, x, y, noise=0.0)
    expected_grads, expected_params = _dp_step(mode, *_without_bad_row(x, y), noise=0.0)
    assert any(bool(g.abs().sum() > 0) for g in expected_grads)
    for g, e in zip(grads, expected_grads, strict=True):
        assert bool(torch.isfinite(g).all())
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    for p, e in zip(params, expected_params, strict=True):
        assert bool(torch.isfinite(p).all())
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_with_noise_the_release_is_the_one_without_the_sample(mode: str) -> None:
    """σ = 1 and the same key: the noised step with the NaN row equals the one without it."""
    x, y = _batch(math.nan)
    grads, _ = _dp_step(mode, x, y, noise=1.0)
    expected, _ = _dp_step(mode, *_without_bad_row(x, y), noise=1.0)
    clean, _ = _dp_step(mode, *_without_bad_row(x, y), noise=0.0)
    for g, e, c in zip(grads, expected, clean, strict=True):
        assert bool(torch.isfinite(g).all())
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(g, c)  # the noise is there


class _Quiet:
    def __init__(self) -> None:
        self.losses: list[float | None] = []

    def on_start(self, info: dict) -> None:
        pass

    def on_step(self, report: object) -> None:
        self.losses.append(report.loss)  # type: ignore[attr-defined]

    def on_epoch(self, epoch: int, released: float | None, exact: float, eps: float) -> None:
        pass


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_job_with_a_nan_row_trains_to_finite_parameters(tmp_path: Path, mode: str) -> None:
    """Three training rows of NaNs in a 60-row job: the steps they join report a NaN loss (to the
    operator), yet the parameters end finite and the final loss is the last finite one. The
    job's key is fixed: with a fresh one, some batch misses all three rows with probability
    1 - (1 - (2/3)^3)^9 ≈ 0.96 only, and one of each kind of step is needed here."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(60, 4, generator=gen), torch.randint(0, 2, (60,), generator=gen)
    x[[7, 30, 51]] = math.nan
    spec = TrainingSpec(dataset_id="d", target_column="label", model="mlp", batch_size=20,
                        max_physical_batch_size=20, epochs=3, target_epsilon=10.0,
                        learning_rate=0.5, accountant="rdp", release_test_accuracy="none")
    reporter = _Quiet()
    result = run_dp_sgd(spec, _model(), TensorDataset(x, y), lambda m: (0, 1), tmp_path, reporter,
                        plan=plan_job(spec, 60, 1), clipping_mode=mode,
                        randomness=DPRandomness(bytes(range(32))))
    assert result.steps == 9
    assert all(bool(torch.isfinite(p).all()) for p in result.model.parameters())
    assert math.isfinite(result.final_loss)
    assert any(loss is not None and math.isnan(loss) for loss in reporter.losses)
    assert result.final_loss in [loss for loss in reporter.losses if loss is not None]
