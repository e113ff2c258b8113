"""Adaptive clipping (Andrew et al. 2021): privacy by construction, and a clip bound that learns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from adult_tensors import Recorder, accuracy_on, adult_tensors, plan_for
from opacus import GradSampleModule
from torch import nn

from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import epsilon_for_history, restore_accountant
from privtrain.trainer.adaptive_clipping import (
    AdaptiveBookKeepingDPOptimizer,
    AdaptiveClipDPOptimizer,
    ClipBoundEstimator,
    gradient_noise,
)
from privtrain.trainer.dp_randomness import DPRandomness, Stream
from privtrain.trainer.dp_sgd import run_dp_sgd
from privtrain.trainer.fast_clipping import BookKeepingModule
from privtrain.trainer.plan import plan_job
from privtrain.trainer.spec import TrainingSpec

ROWS = 8000


@pytest.fixture(scope="module")
def adult() -> tuple:
    return adult_tensors(ROWS)


def _spec(**overrides: object) -> TrainingSpec:
    values: dict = dict(dataset_id="adult", target_column="income", model="logistic_regression",
                        epochs=4, batch_size=256, max_physical_batch_size=128, target_epsilon=2.0,
                        target_delta=1e-5, accountant="rdp", learning_rate=0.5, seed=3, device="cpu",
                        release_test_accuracy="final")
    values.update(overrides)
    return TrainingSpec(**values)


def _run(spec: TrainingSpec, adult: tuple, out: Path, mode: str | None = None) -> tuple:
    """Train with a fixed randomness key: the quantile thresholds below are statistical, and a
    fixed key keeps them reproducible (a service job always draws a fresh key)."""
    train, x_test, y_test = adult
    torch.manual_seed(spec.seed)
    model = nn.Linear(train.tensors[0].shape[1], 2)
    recorder = Recorder()
    result = run_dp_sgd(spec, model, train, accuracy_on(x_test, y_test), out, recorder,
                        plan=plan_for(spec, train, len(y_test)), clipping_mode=mode,
                        randomness=DPRandomness(bytes(range(32))))
    return result, recorder


def _checkpoint_states(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "checkpoints").glob("epoch-*.json"))]


def test_gradient_and_count_noise_compose_to_the_calibrated_sigma() -> None:
    """Theorem 1: σ_g^-2 + (2σ_b)^-2 = σ^-2; 2σ_b <= σ is refused naming the fix."""
    sigma_g = gradient_noise(1.3, 4.0)
    assert sigma_g ** -2 + (2 * 4.0) ** -2 == pytest.approx(1.3 ** -2, rel=1e-12)
    assert sigma_g > 1.3
    with pytest.raises(InvalidInput, match="unclipped_num_std"):
        gradient_noise(2.0, 1.0)


def test_count_is_centred_and_divided_by_the_expected_batch() -> None:
    """b̃ = (Σ(1[‖g‖ ≤ C] − ½) + noise) / B + ½, accumulated over physical batches; with
    negligible count noise: 3 of 4 within C over two physical batches, B = 4, γ = 0.5,
    η = 1 → C × exp(−(0.75 − 0.5)). The count noise comes from the job's COUNT stream, one
    draw per update."""
    randomness = DPRandomness.fresh()
    estimator = ClipBoundEstimator(target_unclipped_quantile=0.5, clipbound_learning_rate=1.0,
                                   min_clipbound=1e-3, max_clipbound=1e3, unclipped_num_std=1e-9,
                                   expected_batch_size=4)
    estimator.observe(torch.tensor([0.5, 2.0]), 1.0)
    estimator.observe(torch.tensor([0.1, 0.9]), 1.0)
    assert estimator.update(1.0, randomness) == pytest.approx(
        torch.exp(torch.tensor(-0.25)).item(), rel=1e-6)
    # An empty Poisson batch reads as the unbiased ½, never a division by zero.
    estimator.observe(torch.zeros(0), 1.0)
    assert estimator.update(2.0, randomness) == pytest.approx(2.0)
    assert randomness.peek(Stream.COUNT) == 2


def test_count_noise_is_the_count_streams_draw_scaled_by_sigma_b() -> None:
    """With no samples observed, the noised fraction is z·σ_b / B + ½: the new bound is
    C × exp(−η (z·σ_b / B + ½ − γ)), z the COUNT stream's draw of that update (its counter)."""
    key = bytes(range(32))
    estimator = ClipBoundEstimator(target_unclipped_quantile=0.5, clipbound_learning_rate=1.0,
                                   min_clipbound=1e-3, max_clipbound=1e3, unclipped_num_std=3.0,
                                   expected_batch_size=10)
    bounds = [estimator.update(1.0, DPRandomness(key, {Stream.COUNT: i})) for i in range(3)]
    reference = DPRandomness(key)
    draws = [float(reference.standard_normal(Stream.COUNT, i, 1)[0]) for i in range(3)]
    assert bounds == pytest.approx([float(torch.exp(torch.tensor(-z * 3.0 / 10))) for z in draws],
                                   rel=1e-6)
    assert len(set(bounds)) == 3


def test_hooks_and_ghost_modes_take_the_same_adaptive_step() -> None:
    """Same data, randomness key and bound: identical parameters and next clip bound in Opacus'
    hooks mode (two physical batches, the count accumulated over both) and in ghost mode
    (one physical batch)."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randint(0, 2, (8,))
    base = nn.Linear(5, 2)
    results = []
    for mode in ("hooks", "ghost"):
        model = nn.Linear(5, 2)
        model.load_state_dict(base.state_dict())
        estimator = ClipBoundEstimator(target_unclipped_quantile=0.5, clipbound_learning_rate=0.2,
                                       min_clipbound=1e-3, max_clipbound=1e3, unclipped_num_std=2.0,
                                       expected_batch_size=8)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        randomness = DPRandomness(bytes(range(32)))
        if mode == "hooks":
            module: nn.Module = GradSampleModule(model, loss_reduction="mean")
            opt = AdaptiveClipDPOptimizer(sgd, estimator=estimator, noise_multiplier=1.0,
                                          max_grad_norm=0.3, expected_batch_size=8,
                                          randomness=randomness)
            for part, last in ((slice(0, 5), False), (slice(5, 8), True)):
                opt.zero_grad()
                # Mean loss over a physical batch, rescaled as BatchMemoryManager's batches are.
                nn.functional.cross_entropy(module(x[part]), y[part]).backward()
                opt.signal_skip_step(do_skip=not last)
                opt.step()
        else:
            module = BookKeepingModule(model, max_grad_norm=0.3)
            opt = AdaptiveBookKeepingDPOptimizer(sgd, module=module, estimator=estimator,
                                                 noise_multiplier=1.0, max_grad_norm=0.3,
                                                 expected_batch_size=8, randomness=randomness)
            opt.zero_grad()
            nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
        assert randomness.peek(Stream.NOISE) == 1 and randomness.peek(Stream.COUNT) == 1
        results.append((float(opt.max_grad_norm), [p.detach().clone() for p in model.parameters()]))
    (bound_h, params_h), (bound_g, params_g) = results
    assert bound_h == pytest.approx(bound_g, rel=1e-6)
    assert bound_h != pytest.approx(0.3)
    for a, b in zip(params_h, params_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_adaptive_clipping_spends_exactly_flat_clippings_epsilon(tmp_path: Path, adult: tuple,
                                                                mode: str) -> None:
    """Same q, steps and target: same calibrated σ and same ε as flat clipping; the accountant's
    history holds the effective σ (not the larger gradient σ_g), then the final noisy accuracy
    release (σ = test_accuracy_noise, q = 1)."""
    flat, _ = _run(_spec(), adult, tmp_path / "flat", mode)
    adaptive, recorder = _run(_spec(clipping="adaptive"), adult, tmp_path / "adaptive", mode)
    assert recorder.info["clipping_mode"] == mode
    assert adaptive.noise_multiplier == flat.noise_multiplier
    assert adaptive.epsilon == pytest.approx(flat.epsilon, rel=1e-12)
    assert adaptive.epsilon <= 2.0
    history = restore_accountant(_checkpoint_states(tmp_path / "adaptive")[-1]["accountant"]).history
    assert history == [(adaptive.noise_multiplier, adaptive.sample_rate, adaptive.steps), (20.0, 1.0, 1)]
    assert adaptive.epsilon == pytest.approx(epsilon_for_history("rdp", history, 1e-5))
    assert adaptive.exact_test_accuracy > 0.75
    assert adaptive.test_accuracy is not None
    # 20 rows of noise on 2,000 test rows: the release is within 0.05 (5 std) of the exact figure.
    assert abs(adaptive.test_accuracy - adaptive.exact_test_accuracy) < 0.05


def _per_sample_norms(model: nn.Module, train: torch.utils.data.TensorDataset) -> torch.Tensor:
    """``(rows,)`` per-sample gradient norms with ``torch.func`` (eval mode: the ghost-clipping
    wrapper stays out of the way)."""
    from torch.func import functional_call, grad, vmap

    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, *train.tensors)
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1).norm(dim=1)


def test_clip_bound_moves_toward_the_target_quantile(tmp_path: Path, adult: tuple) -> None:
    """On Adult, from 0.01 (below every early per-sample norm) C rises in the first epoch, from 20
    (above all of them) it falls; both runs end where 30-70% of the final model's per-sample
    gradients are within C (target quantile 0.5), and within 1.5× of each other."""
    finals = []
    for initial in (0.01, 20.0):
        out = tmp_path / str(initial)
        spec = _spec(clipping="adaptive", max_grad_norm=initial, clipbound_learning_rate=0.5, epochs=5)
        result, _ = _run(spec, adult, out)
        bounds = [s["max_grad_norm"] for s in _checkpoint_states(out)]
        assert (bounds[0] > initial) if initial < 1 else (bounds[0] < initial)
        unclipped = float((_per_sample_norms(result.model, adult[0]) <= bounds[-1]).float().mean())
        assert 0.3 <= unclipped <= 0.7, (initial, bounds, unclipped)
        finals.append(bounds[-1])
    assert max(finals) / min(finals) < 1.5, finals


def test_adaptive_options_are_validated_with_one_clear_line() -> None:
    with pytest.raises(InvalidInput, match="target_unclipped_quantile must be in"):
        _spec(clipping="adaptive", target_unclipped_quantile=1.5)
    with pytest.raises(InvalidInput, match="min_clipbound 5 must be below max_clipbound 1"):
        _spec(clipping="adaptive", min_clipbound=5, max_clipbound=1)
    with pytest.raises(InvalidInput, match="initial clip bound"):
        _spec(clipping="adaptive", max_grad_norm=0.5, min_clipbound=1.0, max_clipbound=2.0)
    with pytest.raises(InvalidInput, match="unclipped_num_std must be"):
        _spec(clipping="adaptive", unclipped_num_std=-1.0)


def test_count_noise_too_small_for_sigma_is_refused_at_submission() -> None:
    """batch 10 → σ_b = 0.5 by default; σ for ε = 0.2 is above 2σ_b = 1: INVALID_ARGUMENT
    from the job's plan (before any ε is reserved); a user-given σ_b large enough is accepted."""
    spec = _spec(clipping="adaptive", batch_size=10, target_epsilon=0.2, release_test_accuracy="none")
    with pytest.raises(InvalidInput, match="2 × unclipped_num_std > noise_multiplier") as info:
        plan_job(spec, ROWS, 2000)
    assert info.value.grpc_code == "INVALID_ARGUMENT"
    plan = plan_job(_spec(clipping="adaptive", batch_size=10, target_epsilon=0.2,
                          unclipped_num_std=50.0, release_test_accuracy="none"), ROWS, 2000)
    assert plan.epsilon <= 0.2 and plan.noise.scale < 100.0
