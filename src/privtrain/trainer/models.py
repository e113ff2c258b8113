"""Registry of model architectures, looked up by the name in the job spec.

Every registered model is Opacus-compatible as built (no BatchNorm, no
in-place activations), so ``ModuleValidator`` finds nothing to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from privtrain.errors import InvalidInput

ModelFactory = Callable[[int, int, Sequence[int]], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding ``factory(in_features, n_classes, hidden_sizes)`` under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, in_features: int, n_classes: int, hidden_sizes: Sequence[int]) -> nn.Module:
    """Instantiate a registered model mapping ``(batch, in_features)`` float32 to ``(batch, n_classes)`` logits.

    Raises
    ------
    InvalidInput
        ``name`` is not registered.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise InvalidInput(f"unknown model {name!r}; available: {model_names()}") from None
    return factory(in_features, n_classes, hidden_sizes)


@register_model("logistic_regression")
def logistic_regression(in_features: int, n_classes: int, hidden_sizes: Sequence[int]) -> nn.Module:
    """Multinomial logistic regression: one Linear layer."""
    return nn.Sequential(nn.Linear(in_features, n_classes))


@register_model("mlp")
def mlp(in_features: int, n_classes: int, hidden_sizes: Sequence[int]) -> nn.Module:
    """Linear + ReLU blocks of the given widths, then a Linear head."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)
