"""Submission-time model checks: refused naming the culprit, or fixed and then trainable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from privtrain.errors import InvalidInput
from privtrain.trainer.dp_sgd import run_dp_sgd
from privtrain.trainer.models import model_names
from privtrain.trainer.plan import plan_job
from privtrain.trainer.spec import TrainingSpec
from privtrain.trainer.validation import dry_run, prepare_model

C_T02_LAYERS = [
    {"name": "conv", "type": "Conv2d", "args": [1, 8, 3]},
    {"name": "bn", "type": "BatchNorm2d", "args": [8]},
    {"name": "act", "type": "ReLU", "kwargs": {"inplace": True}},
    {"name": "flat", "type": "Flatten"},
    {"name": "fc", "type": "Linear", "args": [288, 2]},
]


def _spec(**overrides: object) -> TrainingSpec:
    fields: dict[str, object] = dict(dataset_id="d", target_column="label", model="sequential",
                                     batch_size=4, max_physical_batch_size=4, epochs=1,
                                     target_epsilon=50.0, accountant="rdp", learning_rate=0.1)
    fields.update(overrides)
    return TrainingSpec(**fields)  # type: ignore[arg-type]


class _Quiet:
    def on_start(self, info: dict) -> None:
        self.info = info

    def on_step(self, report: object) -> None:
        pass

    def on_epoch(self, epoch: int, released: float | None, exact: float, eps: float) -> None:
        self.epochs = epoch


def _half_right(model: torch.nn.Module) -> tuple[int, int]:
    """An ``evaluate`` stand-in: 8 of 16 test rows correct."""
    return 8, 16


def test_batchnorm_and_inplace_relu_are_refused_naming_the_modules() -> None:
    """C-T02: without fix_model the job is refused at submission, naming BatchNorm and the ReLU."""
    with pytest.raises(InvalidInput) as err:
        prepare_model(_spec(model_options={"layers": C_T02_LAYERS}), (1, 8, 8), 2)
    message = str(err.value)
    assert "BatchNorm" in message and "'act'" in message and "fix_model" in message


def test_batchnorm_and_inplace_relu_are_fixed_and_one_epoch_completes(tmp_path: Path) -> None:
    """C-T02: with fix_model, BatchNorm becomes GroupNorm, the ReLU out of place, and one epoch
    on 16 random 1x8x8 images completes with every step a DP step."""
    spec = _spec(model_options={"layers": C_T02_LAYERS}, fix_model=True)
    prepared = prepare_model(spec, (1, 8, 8), 2)
    assert any("BatchNorm2d -> GroupNorm" in f for f in prepared.fixes)
    assert any("act" in f and "out-of-place" in f for f in prepared.fixes)
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 2, (16,), generator=gen))
    reporter = _Quiet()
    result = run_dp_sgd(spec, prepared.model, data, _half_right, tmp_path, reporter,
                        plan=plan_job(spec, len(data), 16))
    assert result.steps == 4 and reporter.epochs == 1
    assert result.epsilon <= 50.0


C_T03_LAYERS = [
    {"name": "a", "type": "Linear", "args": [4, 2]},
    {"name": "spare", "type": "Linear", "args": [2, 10]},
]


def test_declared_but_unused_layer_is_refused_naming_its_parameters() -> None:
    """C-T03: the dry run finds spare.weight and spare.bias before any budget is spent."""
    with pytest.raises(InvalidInput) as err:
        prepare_model(_spec(model_options={"layers": C_T03_LAYERS, "forward": ["a"]}), (4,), 2)
    assert "spare.weight" in str(err.value) and "spare.bias" in str(err.value)


def test_declared_but_unused_layer_can_be_frozen_and_trained(tmp_path: Path) -> None:
    """C-T03: with freeze_unused the spare layer is frozen on purpose and training runs."""
    spec = _spec(model_options={"layers": C_T03_LAYERS, "forward": ["a"]}, freeze_unused=True,
                 batch_size=5, max_physical_batch_size=5)
    prepared = prepare_model(spec, (4,), 2)
    assert set(prepared.frozen) == {"spare.weight", "spare.bias"}
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(20, 4, generator=gen), torch.randint(0, 2, (20,), generator=gen))
    before = prepared.model.spare.weight.detach().clone()
    result = run_dp_sgd(spec, prepared.model, data, _half_right, tmp_path, _Quiet(),
                        plan=plan_job(spec, len(data), 16))
    assert result.steps == 4
    torch.testing.assert_close(prepared.model.spare.weight, before)


class _TiedHead(torch.nn.Module):
    """Embedding and output layer sharing one weight (weight tying)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).mean(dim=1))


def test_tied_parameters_are_refused_naming_both() -> None:
    """One tensor reached by two layers has no single per-sample gradient: refused, named."""
    with pytest.raises(InvalidInput, match=r"embedding\.weight is also head\.weight"):
        dry_run(_TiedHead(), torch.zeros(2, 3, dtype=torch.long), freeze_unused=False)


def test_a_layer_applied_twice_trains_in_hooks_mode(tmp_path: Path) -> None:
    """Reusing a layer is legal (Opacus accumulates its per-sample gradients over uses) but
    ghost clipping cannot do it, so the engine picks hooks mode for such a model."""
    layers = [{"name": "a", "type": "Linear", "args": [4, 4]}, {"name": "head", "type": "Linear", "args": [4, 2]}]
    spec = _spec(model_options={"layers": layers, "forward": ["a", "a", "head"]}, batch_size=5,
                 max_physical_batch_size=5)
    prepared = prepare_model(spec, (4,), 2)
    assert prepared.clipping_mode == "hooks"
    gen = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(20, 4, generator=gen), torch.randint(0, 2, (20,), generator=gen))
    result = run_dp_sgd(spec, prepared.model, data, _half_right, tmp_path, _Quiet(),
                        plan=plan_job(spec, len(data), 16), clipping_mode=prepared.clipping_mode)
    assert result.steps == 4


def test_huge_model_is_refused_without_allocating_it() -> None:
    """10^10 parameters are counted on the meta device and refused."""
    with pytest.raises(InvalidInput, match="limit"):
        prepare_model(_spec(model="mlp", hidden_sizes=(100_000, 100_000)), (100,), 2)


def test_memory_estimate_caps_the_physical_batch() -> None:
    """A small memory budget lowers the physical batch; the logical batch is untouched."""
    spec = _spec(model="mlp", hidden_sizes=(256,), max_physical_batch_size=512, batch_size=512)
    roomy = prepare_model(spec, (784,), 10)
    tight = prepare_model(spec, (784,), 10, memory_budget_bytes=roomy.bytes_per_sample * 10)
    assert roomy.max_physical_batch_size == 512
    assert tight.max_physical_batch_size == 10


@pytest.mark.parametrize(("model", "shape", "options", "dtype"), [
    ("logistic_regression", (12,), {}, torch.float32),
    ("mlp", (12,), {"hidden_sizes": [8, 8]}, torch.float32),
    ("cnn", (1, 28, 28), {}, torch.float32),
    ("resnet", (3, 16, 16), {"width": 8, "blocks": 1, "groups": 4}, torch.float32),
    ("lstm_text", (12,), {"vocab_size": 50, "embedding_dim": 8, "hidden_size": 8}, torch.long),
])
def test_every_builtin_architecture_passes_the_checks_as_built(model: str, shape: tuple, options: dict,
                                                               dtype: torch.dtype) -> None:
    """Registered models need no fixing: strict validation and the dry run pass."""
    assert model in model_names()
    prepared = prepare_model(_spec(model=model, model_options=options), shape, 3, input_dtype=dtype)
    assert prepared.fixes == () and prepared.frozen == ()


def test_unknown_layer_type_is_refused() -> None:
    """The declarative model only builds whitelisted torch.nn layers."""
    with pytest.raises(InvalidInput, match="not one of"):
        prepare_model(_spec(model_options={"layers": [{"type": "Module"}]}), (4,), 2)


def test_batchnorm1d_is_refused_even_with_fix_model() -> None:
    """GroupNorm over (batch, features) would output zeros: refuse and point to LayerNorm."""
    layers = [{"name": "fc1", "type": "Linear", "args": [8, 16]},
              {"name": "bn", "type": "BatchNorm1d", "args": [16]},
              {"name": "fc2", "type": "Linear", "args": [16, 2]}]
    with pytest.raises(InvalidInput, match="LayerNorm"):
        prepare_model(_spec(model_options={"layers": layers}, fix_model=True), (8,), 2)


@pytest.mark.parametrize("forward", [[], "fc"])
def test_forward_must_be_a_non_empty_list(forward: object) -> None:
    """Not a confusing per-character or autograd error."""
    layers = [{"name": "fc", "type": "Linear", "args": [4, 2]}]
    with pytest.raises(InvalidInput, match="non-empty list"):
        prepare_model(_spec(model_options={"layers": layers, "forward": forward}), (4,), 2)


def test_fixed_noise_multiplier_far_too_small_is_refused_at_once() -> None:
    """σ = 0.1 over hundreds of steps: refused from the RDP bound, without a huge PRV domain."""
    spec = _spec(model="mlp", noise_multiplier=0.1, target_epsilon=1.0, accountant="prv",
                 batch_size=512, epochs=5)
    with pytest.raises(InvalidInput, match="RDP bound"):
        plan_job(spec, 31_000, 15_000)


def test_output_width_other_than_the_class_count_is_refused_naming_both_numbers() -> None:
    """The tester's 8x8 digits model ending in Linear(64, 3) on a 10-class target: refused at
    submission naming the model, its (2, 3) output and the 10 classes, instead of failing in
    the worker with "Target 3 is out of bounds"; the same model with Linear(64, 10) passes."""
    def layers(width: int) -> list[dict]:
        return [{"type": "Flatten"}, {"type": "Linear", "args": [64, width]}]

    with pytest.raises(InvalidInput, match=r"model 'sequential' outputs \(2, 3\) for a batch of 2; "
                                           r"the dataset's target has 10 classes") as info:
        prepare_model(_spec(model_options={"layers": layers(3)}), (1, 8, 8), 10)
    assert info.value.grpc_code == "INVALID_ARGUMENT"
    prepare_model(_spec(model_options={"layers": layers(10)}), (1, 8, 8), 10)
