"""Registry of model architectures, looked up by the name in the job spec.

A factory takes the input shape of one sample (``(features,)`` for tables,
``(C, H, W)`` for images, ``(T,)`` for token sequences), the number of classes
and the spec's model options, and returns a module mapping a batch to
``(batch, n_classes)`` logits. Users extend it with :func:`register_model`.
Only declarative specs reach a factory: no user code runs on the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from privtrain.errors import InvalidInput, shown

ModelFactory = Callable[[tuple[int, ...], int, Mapping[str, Any]], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding ``factory(input_shape, n_classes, options)`` under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def build_model(name: str, input_shape: Sequence[int], n_classes: int,
                options: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate a registered model.

    Parameters
    ----------
    name : str
        Registered architecture.
    input_shape : sequence of int
        Shape of one sample, without the batch dimension.
    n_classes : int
        Output logits per sample.
    options : mapping
        Architecture options (``hidden_sizes``, ``width``, ``layers``, ...).

    Raises
    ------
    InvalidInput
        Unknown name, or options the architecture cannot use (the message says which).
    """
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise InvalidInput(f"unknown model {shown(name)}; available: {model_names()}") from None
    try:
        return factory(tuple(int(d) for d in input_shape), n_classes, dict(options or {}))
    except (TypeError, ValueError, KeyError, RuntimeError, ArithmeticError) as exc:
        # The reason may quote the caller's keys and values: a short prefix of it.
        raise InvalidInput(f"model {shown(name)} cannot be built from options "
                           f"{shown(dict(options or {}))}: {str(exc)[:120]}") from None


def _load_builtin() -> None:
    # The built-in architectures register themselves on import.
    from privtrain.trainer import architectures  # noqa: F401
