"""Built-in architectures: tables, images, text, and a declarative layer list.

Every built-in model is Opacus-compatible as built (GroupNorm, not BatchNorm;
no in-place activations; DPLSTM, not LSTM). The ``sequential`` model accepts
any whitelisted layers, so it can also describe models that need fixing or
refusing at submission (see :mod:`privtrain.trainer.validation`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from opacus.layers import DPLSTM
from torch import nn

from privtrain.errors import shown
from privtrain.trainer.models import register_model
from privtrain.trainer.spec import MAX_HIDDEN_LAYERS


@register_model("logistic_regression")
def logistic_regression(input_shape: tuple[int, ...], n_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """Multinomial logistic regression on ``(features,)`` inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), n_classes))


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], n_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """Linear + ReLU blocks of widths ``options["hidden_sizes"]`` (default [64]), then a head."""
    hidden = [int(h) for h in options.get("hidden_sizes", [64])]
    if len(hidden) > MAX_HIDDEN_LAYERS:
        raise ValueError(f"{len(hidden)} hidden layers; the limit is {MAX_HIDDEN_LAYERS}")
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden_sizes must be >= 1, got {shown(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = _numel(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


@register_model("cnn")
def cnn(input_shape: tuple[int, ...], n_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """The convolutional net of Opacus' MNIST example (Papernot et al. 2020, "Tempered Sigmoid
    Activations for Deep Learning with Differential Privacy"), for ``(C, H, W)`` inputs."""
    channels = _image_channels(input_shape)
    features = nn.Sequential(
        nn.Conv2d(channels, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
    )
    flat = _flat_size(features, input_shape)
    return nn.Sequential(features, nn.Linear(flat, 32), nn.ReLU(), nn.Linear(32, n_classes))


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with GroupNorm (Wu & He 2018) instead of BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.GroupNorm(min(groups, cout), cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet")
def resnet(input_shape: tuple[int, ...], n_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """A small ResNet: stem, three stages of ``blocks`` basic blocks (widths w, 2w, 4w), pooling.

    Options: ``width`` (default 16), ``blocks`` per stage (default 1), ``groups`` for GroupNorm
    (default 8).
    """
    width, blocks, groups = int(options.get("width", 16)), int(options.get("blocks", 1)), int(options.get("groups", 8))
    if not (1 <= width and 1 <= blocks <= MAX_RESNET_BLOCKS and 1 <= groups):
        raise ValueError(f"width and groups must be >= 1 and blocks in 1..{MAX_RESNET_BLOCKS}, got "
                         f"{shown(width)}, {shown(groups)} and {shown(blocks)}")
    layers: list[nn.Module] = [nn.Conv2d(_image_channels(input_shape), width, 3, 1, 1, bias=False),
                               nn.GroupNorm(min(groups, width), width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for b in range(blocks):
            layers.append(_BasicBlock(cin, cout, 2 if (stage > 0 and b == 0) else 1, groups))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, n_classes)]
    return nn.Sequential(*layers)


class _TextLSTM(nn.Module):
    """Token ids ``(batch, T)`` → embedding → DPLSTM → last hidden state → logits."""

    def __init__(self, vocab: int, dim: int, hidden: int, n_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = DPLSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.head(out[:, -1, :])


@register_model("lstm_text")
def lstm_text(input_shape: tuple[int, ...], n_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """Embedding + DPLSTM text classifier; options ``vocab_size`` (required), ``embedding_dim``
    (default 64), ``hidden_size`` (default 64)."""
    return _TextLSTM(int(options["vocab_size"]), int(options.get("embedding_dim", 64)),
                     int(options.get("hidden_size", 64)), n_classes)


# Layers a declarative model may use, by torch.nn class name.
SEQUENTIAL_LAYERS = frozenset({
    "Linear", "Conv1d", "Conv2d", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm",
    "InstanceNorm2d", "ReLU", "LeakyReLU", "GELU", "Tanh", "Sigmoid", "ELU", "MaxPool2d",
    "AvgPool2d", "AdaptiveAvgPool2d", "Flatten", "Dropout", "Embedding", "Identity",
})
# Constructor parameters a declarative layer may not set, and why (``device="cuda"`` on a
# server without CUDA failed an assertion inside torch).
REFUSED_LAYER_ARGUMENTS = {
    "device": "where a model runs is the server's choice (the job's device option)",
    "dtype": "parameters stay float32 (the job's precision option sets the autocast)",
    "sparse": "sparse gradients have no per-sample form",
}
LAYER_KEYS = frozenset({"name", "type", "args", "kwargs"})
MAX_SEQUENTIAL_LAYERS = 256
MAX_FORWARD_STEPS = 1024
MAX_RESNET_BLOCKS = 16
MAX_LAYER_INT = 2**31 - 1
MAX_LAYER_STRING = 32
MAX_LAYER_TUPLE = 8


class NamedSequence(nn.Module):
    """Named modules applied in the order ``forward_order`` gives (names may repeat or be unused)."""

    def __init__(self, modules: Mapping[str, nn.Module], forward_order: Sequence[str]) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.forward_order = list(forward_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.forward_order:
            x = getattr(self, name)(x)
        return x


@register_model("sequential")
def sequential(input_shape: tuple[int, ...], n_classes: int, options: Mapping[str, Any]) -> nn.Module:
    """A declarative model: ``layers`` = [{"name", "type", "args", "kwargs"}, ...] of whitelisted
    ``torch.nn`` layers (at most :data:`MAX_SEQUENTIAL_LAYERS`), applied in ``forward`` order
    (default: the listed order; at most :data:`MAX_FORWARD_STEPS` steps).

    Arguments are JSON scalars (integers within ±2**31, finite numbers, booleans, short
    strings, null) or short lists of integers (a kernel size, a shape); a layer may not set
    :data:`REFUSED_LAYER_ARGUMENTS` nor a private (``_``) parameter.
    """
    layers = options.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError("layers must be a non-empty list of {\"name\", \"type\", \"args\", "
                         "\"kwargs\"} objects")
    if len(layers) > MAX_SEQUENTIAL_LAYERS:
        raise ValueError(f"{len(layers)} layers; the limit is {MAX_SEQUENTIAL_LAYERS}")
    modules: dict[str, nn.Module] = {}
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not set(layer) <= LAYER_KEYS:
            raise ValueError(f"layer {i} must be an object with keys among {sorted(LAYER_KEYS)}")
        name = layer.get("name", f"layer{i}")
        if (not isinstance(name, str) or not name.isidentifier() or len(name) > 64
                or name in modules):
            raise ValueError(f"layer {i} name {shown(name)} is not a unique identifier")
        modules[name] = _declared_layer(i, layer)
    forward = options.get("forward", list(modules))
    if not isinstance(forward, list) or not forward or not all(isinstance(n, str) for n in forward):
        raise ValueError("forward must be a non-empty list of layer names")
    if len(forward) > MAX_FORWARD_STEPS:
        raise ValueError(f"forward has {len(forward)} steps; the limit is {MAX_FORWARD_STEPS}")
    unknown = [n for n in forward if n not in modules]
    if unknown:
        raise ValueError(f"forward names unknown layers {shown(unknown)}")
    return NamedSequence(modules, forward)


def _declared_layer(i: int, layer: Mapping[str, Any]) -> nn.Module:
    """One layer of a declarative model, its arguments checked before torch sees them."""
    kind = layer.get("type")
    if not isinstance(kind, str) or kind not in SEQUENTIAL_LAYERS:
        raise ValueError(f"layer {i} type {shown(kind)} is not one of {sorted(SEQUENTIAL_LAYERS)}")
    args, kwargs = layer.get("args", []), layer.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError(f"layer {i} ({kind}): args must be a list and kwargs an object")
    cls = getattr(nn, kind)
    signature = inspect.signature(cls)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"layer {i} ({kind}): {exc}") from None
    values: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind in (inspect.Parameter.VAR_POSITIONAL,
                                               inspect.Parameter.VAR_KEYWORD):
            if value:
                raise ValueError(f"layer {i} ({kind}) takes no arguments")
            continue
        if name in REFUSED_LAYER_ARGUMENTS or name.startswith("_"):
            why = REFUSED_LAYER_ARGUMENTS.get(name, "it is torch's private parameter")
            raise ValueError(f"layer {i} ({kind}) may not set {name!r}: {why}")
        values[name] = _layer_argument(i, kind, name, value)
    return cls(**values)  # type: ignore[no-any-return]


def _layer_argument(i: int, kind: str, name: str, value: Any) -> Any:
    """A JSON scalar or a short list of integers (as a tuple), within bounds."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_LAYER_INT:
            raise ValueError(f"layer {i} ({kind}) {name} {shown(value)} is beyond ±{MAX_LAYER_INT}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"layer {i} ({kind}) {name} must be a finite number")
        return value
    if isinstance(value, str):
        if len(value) > MAX_LAYER_STRING:
            raise ValueError(f"layer {i} ({kind}) {name} {shown(value)} is too long")
        return value
    if (isinstance(value, list) and 0 < len(value) <= MAX_LAYER_TUPLE
            and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= MAX_LAYER_INT
                    for v in value)):
        return tuple(value)
    raise ValueError(f"layer {i} ({kind}) {name} must be a number, a boolean, a short string, "
                     f"null or a list of at most {MAX_LAYER_TUPLE} integers, got {shown(value)}")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _image_channels(shape: tuple[int, ...]) -> int:
    if len(shape) != 3:
        raise ValueError(f"an image model needs (C, H, W) inputs, got shape {shape}")
    return shape[0]


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Width of ``features``' output for one sample, found by running it once."""
    device = next(features.parameters()).device
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape, device=device)).shape[1])
