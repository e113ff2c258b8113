"""Declarative layers take only what the server can build safely (issue 12): JSON scalars
and short integer lists, never a device, a dtype or sparse gradients, and a model whose
activations exceed the memory budget is refused before anything is allocated."""

from __future__ import annotations

import time

import pytest

from privtrain.errors import InvalidInput
from privtrain.trainer.spec import TrainingSpec
from privtrain.trainer.validation import prepare_model


def _prepare(layers: list, shape: tuple[int, ...] = (10,), **options: object) -> None:
    spec = TrainingSpec(dataset_id="d", target_column="label", model="sequential",
                        model_options={"layers": layers, **options})
    prepare_model(spec, shape, 2)


@pytest.mark.parametrize(("layer", "needle"), [
    ({"type": "Linear", "args": [10, 2], "kwargs": {"device": "cuda"}}, "may not set 'device'"),
    ({"type": "Linear", "args": [10, 2, True, "cuda"]}, "may not set 'device'"),
    ({"type": "Linear", "args": [10, 2], "kwargs": {"dtype": "float64"}}, "may not set 'dtype'"),
    ({"type": "Embedding", "args": [10, 2], "kwargs": {"sparse": True}}, "may not set 'sparse'"),
    ({"type": "Embedding", "args": [10, 2], "kwargs": {"_freeze": True}}, "may not set '_freeze'"),
    ({"type": "Identity", "args": [1, 2]}, "takes no arguments"),
    ({"type": "Linear", "args": [10, 10**12]}, "is beyond"),
    ({"type": "Linear", "args": [10, {"a": 1}]}, "must be a number, a boolean"),
    ({"type": "Linear", "args": [10, 2], "kwargs": {"bogus": 1}}, "unexpected keyword argument"),
    ({"type": "Linear", "args": [10, 2], "extra": 1}, "must be an object with keys among"),
    ({"type": "LSTM", "args": [10, 2]}, "is not one of"),
])
def test_layer_arguments_that_crashed_or_misplace_the_model_are_refused(layer: dict,
                                                                        needle: str) -> None:
    """``{"device": "cuda"}`` failed an assertion inside torch on a server without CUDA."""
    with pytest.raises(InvalidInput) as err:
        _prepare([layer])
    assert needle in str(err.value)


@pytest.mark.parametrize("options", [{"layers": "abc"}, {"layers": [1]}, {"layers": []},
                                     {"layers": [{"type": "Flatten"}], "forward": "x"},
                                     {"layers": [{"type": "Flatten"}], "forward": ["nope"]},
                                     {"layers": [{"type": "Flatten", "name": "forward"}]},
                                     {"layers": [{"type": "Flatten"}] * 257}])
def test_malformed_layer_lists_are_invalid_input(options: dict) -> None:
    spec = TrainingSpec(dataset_id="d", target_column="label", model="sequential",
                        model_options=options)
    with pytest.raises(InvalidInput):
        prepare_model(spec, (10,), 2)


def test_activations_past_the_budget_are_refused_before_any_allocation() -> None:
    """A padding of 100,000 makes (200,001)² activations per channel: measured on the meta
    device and refused at once, where the dry run used to allocate hundreds of gigabytes."""
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="byte budget"):
        _prepare([{"type": "Conv2d", "args": [1, 1, 1], "kwargs": {"padding": 100_000}},
                  {"type": "Flatten"}], shape=(1, 8, 8))
    with pytest.raises(InvalidInput, match="byte budget"):
        _prepare([{"type": "AdaptiveAvgPool2d", "args": [100_000]}, {"type": "Flatten"}],
                 shape=(1, 8, 8))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("model", "options", "needle"), [
    ("resnet", {"blocks": 10**6}, "blocks in 1..16"),
    ("resnet", {"width": 0}, "width and groups must be >= 1"),
    ("mlp", {"hidden_sizes": [4] * 65}, "65 hidden layers; the limit is 64"),
])
def test_architecture_options_that_would_build_millions_of_modules_are_refused(
        model: str, options: dict, needle: str) -> None:
    spec = TrainingSpec(dataset_id="d", target_column="label", model=model, model_options=options,
                        hidden_sizes=(4,) if model == "mlp" else (64,))
    started = time.monotonic()
    with pytest.raises(InvalidInput, match=needle.replace("(", r"\(").replace(".", r"\.")):
        prepare_model(spec, (1, 8, 8) if model == "resnet" else (10,), 2)
    assert time.monotonic() - started < 5
