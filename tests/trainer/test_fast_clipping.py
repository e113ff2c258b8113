"""Ghost clipping with book-keeping: parity with Opacus hooks mode and with torch.func."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn
from torch.func import functional_call, grad, vmap

from privtrain.errors import InvalidInput
from privtrain.trainer.dp_randomness import DPRandomness, Stream
from privtrain.trainer.fast_clipping import (
    BookKeepingDPOptimizer,
    BookKeepingModule,
    pick_clipping_mode,
    prepare_private_training,
    register_norm_samplers,
)
from privtrain.trainer.fast_clipping import conv as conv_kernels
from privtrain.trainer.fast_clipping import linear as linear_kernels
from privtrain.trainer.secure_noise import SecureDPOptimizer

BATCH = 8
TOL = {"rtol": 1e-5, "atol": 1e-5}


class HalfSquaredError(nn.Module):
    """Per-sample loss ``|out_i - target_i|^2 / 2`` over all non-batch entries, then ``reduction``."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = (out - target).flatten(1).pow(2).sum(dim=1) / 2
        if self.reduction == "mean":
            return per_sample.mean()
        return per_sample.sum() if self.reduction == "sum" else per_sample


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def mnist_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(512, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def ids(shape: tuple[int, ...], vocab: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randint(0, vocab, shape)


def floats(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(BATCH, *shape)


# name -> (model factory, input factory); each model's trainable layers are of one supported type.
LAYER_CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor]]] = {
    "linear": (lambda: nn.Linear(7, 5), floats(7)),
    "linear_no_bias": (lambda: nn.Linear(7, 5, bias=False), floats(7)),
    "linear_sequence_direct": (lambda: nn.Linear(3, 4), floats(9, 3)),
    "linear_sequence_gram": (lambda: nn.Linear(40, 30), floats(3, 40)),
    "conv1d": (lambda: nn.Conv1d(6, 4, 3, stride=2, padding=2, dilation=2, groups=2), floats(6, 20)),
    "conv1d_same_reflect": (lambda: nn.Conv1d(3, 5, 4, padding="same", padding_mode="reflect"), floats(3, 11)),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), floats(3, 9, 9)),
    "conv2d_stride_padding": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2)), floats(3, 10, 8)),
    "conv2d_dilation": (lambda: nn.Conv2d(2, 3, 3, dilation=(2, 3), padding=1), floats(2, 12, 12)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), floats(4, 9, 9)),
    "conv2d_depthwise": (lambda: nn.Conv2d(4, 4, 3, groups=4, bias=False), floats(4, 7, 7)),
    "conv2d_mnist_first": (lambda: nn.Conv2d(1, 16, 8, 2, padding=3), floats(1, 28, 28)),
    "layer_norm": (lambda: nn.LayerNorm(5), floats(3, 5)),
    "layer_norm_2d_shape": (lambda: nn.LayerNorm((3, 5)), floats(3, 5)),
    "group_norm": (lambda: nn.GroupNorm(2, 6), floats(6, 4, 4)),
    "group_norm_no_spatial": (lambda: nn.GroupNorm(3, 6), floats(6)),
    "embedding": (lambda: nn.Embedding(11, 4), ids((BATCH, 5), 11)),
}
MODEL_CASES = {
    "mlp": (mlp, floats(784)),
    "mnist_cnn": (mnist_cnn, floats(1, 28, 28)),
    "embedding_bag_of_words": (
        lambda: nn.Sequential(nn.Embedding(20, 6), nn.LayerNorm(6), nn.Flatten(), nn.Linear(24, 3)),
        ids((BATCH, 4), 20),
    ),
}
ALL_CASES = {**LAYER_CASES, **MODEL_CASES}
# Opacus' conv grad sampler unfolds with zero padding whatever the padding mode, so its
# hooks-mode gradients are wrong here; these cases are checked against torch.func instead.
HOOKS_MODE_WRONG = {"conv1d_same_reflect"}


def make_case(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Model, input batch and regression target (random, with a larger scale on half the samples)."""
    torch.manual_seed(seed)
    factory, inputs = ALL_CASES[name]
    model = factory()
    x = inputs()
    with torch.no_grad():
        target = torch.randn_like(model(x))
    target[: BATCH // 2] *= 10  # so that some samples are clipped and some are not
    return model, x, target


def reference_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample gradients ``{name: (batch, *shape)}`` of the per-sample loss, by torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    loss = HalfSquaredError()

    def one(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return loss(functional_call(model, p, (xi.unsqueeze(0),)), ti.unsqueeze(0))

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, target)  # type: ignore[no-any-return]


def reference_norms(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    per_sample = reference_grads(model, x, target)
    return torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in per_sample.values()]).sum(dim=0).sqrt()


def reference_clipped(model: nn.Module, x: torch.Tensor, target: torch.Tensor, c: float) -> list[torch.Tensor]:
    """``sum_i min(1, c / (norm_i + 1e-6)) grad_i / batch`` from torch.func per-sample gradients."""
    per_sample = reference_grads(model, x, target)
    coef = (c / (reference_norms(model, x, target) + 1e-6)).clamp(max=1.0)
    return [torch.einsum("b,b...->...", coef, g) / len(x) for g in per_sample.values()]


def median_norm(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    return float(reference_norms(model, x, target).median())


def dp_step_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor, mode: str, c: float) -> list[torch.Tensor]:
    """``p.grad`` after one noiseless DP step (clipped, summed, divided by the batch size)."""
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    criterion = HalfSquaredError()
    dp = {"noise_multiplier": 0.0, "max_grad_norm": c, "expected_batch_size": len(x)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "hooks":
            gsm = GradSampleModule(model, loss_reduction="mean")
            opt: DPOptimizer = DPOptimizer(sgd, loss_reduction="mean", **dp)
            criterion(gsm(x), target).backward()
        elif mode == "opacus_ghost":
            register_norm_samplers()
            fast = GradSampleModuleFastGradientClipping(model, loss_reduction="mean", max_grad_norm=c)
            opt = DPOptimizerFastGradientClipping(sgd, loss_reduction="mean", **dp)
            DPLossFastGradientClipping(fast, opt, criterion, "mean")(fast(x), target).backward()
        else:
            module, opt, _ = prepare_private_training(model, sgd, mode="ghost",
                                                      randomness=DPRandomness.fresh(), **dp)
            criterion(module(x), target).backward()
        opt.step()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_per_sample_norms_equal_torch_func(case: str) -> None:
    model, x, target = make_case(case)
    expected = reference_norms(model, x, target)
    module = BookKeepingModule(copy.deepcopy(model), max_grad_norm=1.0)
    HalfSquaredError()(module(x), target).backward()
    assert module.per_sample_gradient_norms is not None
    torch.testing.assert_close(module.per_sample_gradient_norms, expected, **TOL)


@pytest.mark.parametrize("case", sorted(ALL_CASES))
@pytest.mark.parametrize("mode", ["bookkeeping", "opacus_ghost"])
def test_clipped_gradients_equal_hooks_mode(case: str, mode: str) -> None:
    model, x, target = make_case(case)
    c = median_norm(model, x, target)
    if case in HOOKS_MODE_WRONG:
        expected = reference_clipped(model, x, target, c)
    else:
        expected = dp_step_grads(copy.deepcopy(model), x, target, "hooks", c)
    got = dp_step_grads(copy.deepcopy(model), x, target, mode, c)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("case", ["conv1d_same_reflect", "embedding_bag_of_words", "conv2d_groups"])
def test_clipped_gradients_equal_torch_func(case: str) -> None:
    model, x, target = make_case(case)
    c = median_norm(model, x, target)
    got = dp_step_grads(copy.deepcopy(model), x, target, "bookkeeping", c)
    for g, e in zip(got, reference_clipped(model, x, target, c), strict=True):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("force_gram", [True, False])
@pytest.mark.parametrize("case", ["conv1d", "conv2d", "conv2d_groups", "conv2d_stride_padding", "conv2d_mnist_first"])
def test_conv_gram_and_direct_forms_agree(case: str, force_gram: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_kernels, "use_gram", lambda layer, positions: force_gram)
    model, x, target = make_case(case)
    c = median_norm(model, x, target)
    expected = dp_step_grads(copy.deepcopy(model), x, target, "hooks", c)
    got = dp_step_grads(copy.deepcopy(model), x, target, "bookkeeping", c)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("layer", [
    nn.Conv2d(16, 32, 4, 2), nn.Conv2d(1, 16, 8, 2, padding=3),
    nn.Conv2d(4, 8, (3, 5), stride=(2, 1), dilation=(2, 3), groups=2, padding=2),
    nn.Conv1d(6, 4, 3, stride=2, dilation=2, groups=2),
], ids=["mnist_second", "mnist_first", "dilated_grouped_2d", "dilated_grouped_1d"])
def test_strided_unfold_equals_torch_unfold(layer: nn.Module) -> None:
    """The view-based unfold is bit-identical to ``F.unfold`` (im2col) for any stride/dilation/groups."""
    torch.manual_seed(0)
    spatial = [13, 17] if isinstance(layer, nn.Conv2d) else [19]
    x = conv_kernels._pad(layer, torch.randn(3, layer.in_channels, *spatial))
    kernel, dilation, stride = conv_kernels._as_2d(layer)
    ref = torch.nn.functional.unfold(x if x.dim() == 4 else x.unsqueeze(2), kernel,
                                     dilation=dilation, stride=stride)
    got = conv_kernels._unfold(layer, x)
    assert torch.equal(got, ref.view(3, layer.groups, -1, ref.shape[-1]))


def test_linear_picks_the_cheaper_form_by_shape() -> None:
    assert linear_kernels.use_gram(positions=3, fan_in=40, fan_out=30)
    assert not linear_kernels.use_gram(positions=9, fan_in=3, fan_out=4)


def test_embedding_padding_idx_gets_no_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Embedding(7, 3, padding_idx=0)
    x = torch.randint(0, 7, (BATCH, 6))
    x[:, :2] = 0
    target = torch.randn(BATCH, 6, 3)
    module = BookKeepingModule(copy.deepcopy(model), max_grad_norm=1e6)
    HalfSquaredError()(module(x), target).backward()
    assert module.per_sample_gradient_norms is not None
    torch.testing.assert_close(module.per_sample_gradient_norms, reference_norms(model, x, target), **TOL)


def test_noise_is_the_jobs_secret_draw_in_both_modes() -> None:
    """σ = 1.3, C = 0.5: the noised gradient is Opacus' noiseless fast-clipping gradient plus
    σ·C·z / B, z the job's NOISE draw 0 (all parameters at once, in parameter order); hooks mode
    (SecureDPOptimizer) adds the very same noise for the same key; the next step uses draw 1."""
    model, x, target = make_case("mlp")
    key = bytes(range(32))
    total = sum(p.numel() for p in model.parameters())
    z = DPRandomness(key).standard_normal(Stream.NOISE, 0, total)
    m = copy.deepcopy(model)
    module = BookKeepingModule(m, max_grad_norm=0.5)
    reference = DPOptimizerFastGradientClipping(
        torch.optim.SGD(m.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=0.5,
        expected_batch_size=BATCH)
    HalfSquaredError()(module(x), target).backward()
    reference.step()
    expected, offset = [], 0
    for p in m.parameters():
        noise = z[offset:offset + p.numel()].view_as(p) * (1.3 * 0.5 / BATCH)
        expected.append(p.grad + noise)
        offset += p.numel()
    for mode in ("ghost", "hooks"):
        m = copy.deepcopy(model)
        randomness = DPRandomness(key)
        wrapped, opt, _ = prepare_private_training(
            m, torch.optim.SGD(m.parameters(), lr=0.0), noise_multiplier=1.3, max_grad_norm=0.5,
            expected_batch_size=BATCH, randomness=randomness, mode=mode,  # type: ignore[arg-type]
        )
        assert opt.generator is None
        assert isinstance(opt, BookKeepingDPOptimizer if mode == "ghost" else SecureDPOptimizer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            HalfSquaredError()(wrapped(x), target).backward()
        opt.step()
        for g, e in zip([p.grad for p in m.parameters()], expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
        assert randomness.peek(Stream.NOISE) == 1


def test_physical_batches_accumulate_like_hooks_mode() -> None:
    model, x, target = make_case("mnist_cnn")
    c = median_norm(model, x, target)
    results = []
    for mode in ("hooks", "ghost"):
        m = copy.deepcopy(model)
        module, opt, _ = prepare_private_training(
            m, torch.optim.SGD(m.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=c,
            expected_batch_size=BATCH, randomness=DPRandomness.fresh(), mode=mode,  # type: ignore[arg-type]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for part, last in ((slice(0, 3), False), (slice(3, BATCH), True)):
                opt.zero_grad(set_to_none=True)
                HalfSquaredError()(module(x[part]), target[part]).backward()
                opt.signal_skip_step(do_skip=not last)
                opt.step()
        results.append([p.grad.clone() for p in m.parameters()])
    for g, e in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(g, e, **TOL)


def test_empty_batch_gives_zero_clipped_sum() -> None:
    model, x, target = make_case("mnist_cnn")
    module, opt, _ = prepare_private_training(
        model, torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=1.0,
        expected_batch_size=BATCH, randomness=DPRandomness.fresh(),
    )
    before = [p.detach().clone() for p in model.parameters()]
    HalfSquaredError()(module(x[:0]), target[:0]).backward()
    opt.step()
    for p, b in zip(model.parameters(), before, strict=True):
        assert p.grad is not None and not p.grad.any()
        torch.testing.assert_close(p.detach(), b)


def test_evaluation_passes_use_the_models_own_forward() -> None:
    model, x, _ = make_case("mlp")
    plain = copy.deepcopy(model)
    module = BookKeepingModule(model, max_grad_norm=1.0)
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain(x))
    assert not module._records
    model.eval()
    module(x)
    assert not module._records
    assert module.remove() is model
    assert "forward" not in model[0].__dict__


def test_pick_clipping_mode_is_ghost_when_every_trainable_layer_has_a_norm() -> None:
    assert pick_clipping_mode(mlp()) == "ghost"
    assert pick_clipping_mode(mnist_cnn()) == "ghost"
    frozen = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2))
    frozen[0].requires_grad_(False)
    assert pick_clipping_mode(frozen) == "ghost"


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 4), nn.InstanceNorm1d(4, affine=True)),
        nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True)),
        nn.Sequential(nn.Conv3d(1, 2, 2)),
    ],
)
def test_layers_without_norms_fall_back_to_hooks(model: nn.Module) -> None:
    assert pick_clipping_mode(model) == "hooks"
    with pytest.raises(InvalidInput, match=r"\(\w+\)"):
        BookKeepingModule(model, max_grad_norm=1.0)


def test_a_layer_used_twice_is_refused() -> None:
    layer = nn.Linear(3, 3)
    module = BookKeepingModule(nn.Sequential(layer, nn.ReLU(), layer), max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match="twice"):
        module(torch.randn(2, 3))
