"""What every per-layer kernel provides, and the registry that maps layer types to kernels.

A kernel knows two things about one layer type, given the layer's input
(``activations``) and the gradient of the *per-sample* losses with respect to its
output (``backprops``, batch first):

``norms``
    the squared per-sample gradient norm of each trainable parameter, shape
    ``(batch,)``, plus whatever it wants to reuse later (for example the
    per-sample gradients when it chose to materialize them);
``clipped_sum``
    ``sum_i coef[i] * grad_i`` for each parameter, the clipped gradient sum of
    DP-SGD, computed from the same activations and backprops without a second
    backward pass (the "book-keeping" of Bu et al. 2023, "Differentially Private
    Optimization on Large Model at Small Cost").

Kernels register themselves with :func:`register_kernel`, the same way Opacus
registers grad samplers with ``register_grad_sampler``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SquaredNorms = dict[str, torch.Tensor]
"""Parameter name (``"weight"``, ``"bias"``) -> squared per-sample norms, ``(batch,)``."""

NormsFn = Callable[[Any, list[torch.Tensor], torch.Tensor], tuple[SquaredNorms, Any]]
ClippedSumFn = Callable[[Any, list[torch.Tensor], torch.Tensor, torch.Tensor, Any], dict[str, torch.Tensor]]
SupportsFn = Callable[[Any], str | None]


@dataclass(frozen=True)
class LayerKernel:
    """Per-sample norms and clipped sums for one layer type.

    Attributes
    ----------
    norms : callable
        ``norms(layer, activations, backprops) -> (squared_norms, state)``.
    clipped_sum : callable
        ``clipped_sum(layer, activations, backprops, coef, state) -> {name: grad}``
        where ``coef`` is ``(batch,)`` and each grad has the parameter's shape.
    unsupported : callable
        ``unsupported(layer) -> reason or None``: a configuration of the layer the
        kernel cannot handle (for example ``Embedding(scale_grad_by_freq=True)``,
        whose gradient is not a sum of per-sample terms).
    """

    norms: NormsFn
    clipped_sum: ClippedSumFn
    unsupported: SupportsFn


_KERNELS: dict[type[nn.Module], LayerKernel] = {}


def register_kernel(
    *layer_types: type[nn.Module], unsupported: SupportsFn = lambda layer: None
) -> Callable[[type[Any]], type[Any]]:
    """Class decorator: a class with static ``norms`` and ``clipped_sum`` becomes the kernel of ``layer_types``."""

    def decorate(cls: type[Any]) -> type[Any]:
        kernel = LayerKernel(norms=cls.norms, clipped_sum=cls.clipped_sum, unsupported=unsupported)
        for layer_type in layer_types:
            _KERNELS[layer_type] = kernel
        return cls

    return decorate


def kernel_for(layer: nn.Module) -> LayerKernel | None:
    """The kernel of ``type(layer)`` (exact type, as Opacus matches), or None."""
    return _KERNELS.get(type(layer))


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be ghost-clipped, or None when it can."""
    kernel = kernel_for(layer)
    if kernel is None:
        return f"no per-sample norm kernel for {type(layer).__name__}"
    return kernel.unsupported(layer)


def registered_kernels() -> dict[type[nn.Module], LayerKernel]:
    """Layer type -> kernel, for every registered type."""
    return dict(_KERNELS)


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """``(batch, ...)`` -> ``(batch,)``: sum of squares of each sample's entries."""
    return x.reshape(len(x), -1).pow(2).sum(dim=1)


def weighted_sum(coef: torch.Tensor, per_sample: torch.Tensor) -> torch.Tensor:
    """``sum_i coef[i] * per_sample[i]``; ``per_sample`` is ``(batch, *shape)``, result ``shape``."""
    return (coef.to(per_sample.dtype) @ per_sample.reshape(len(per_sample), -1)).view(per_sample.shape[1:])
