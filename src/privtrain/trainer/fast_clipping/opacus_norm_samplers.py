"""This package's per-sample norms, registered as Opacus norm samplers.

``register_norm_samplers()`` installs, through Opacus' own
``register_norm_sampler``, a norm sampler for every layer type with a kernel
here (Linear, Conv1d, Conv2d, LayerNorm, GroupNorm, Embedding). Opacus'
``GradSampleModuleFastGradientClipping`` (``grad_sample_mode="ghost"``) then
computes ghost norms for conv nets too, instead of falling back to per-sample
gradients for every layer but Linear and Embedding. It still runs its two
backward passes; :class:`~privtrain.trainer.fast_clipping.BookKeepingModule`
needs one.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleHooksFastGradientClipping, register_norm_sampler
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from torch import nn

from privtrain.trainer.fast_clipping.kernels import LayerKernel, registered_kernels


def _norm_sampler(kernel: LayerKernel):  # type: ignore[no-untyped-def]
    def norm_sample(
        layer: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        if kernel.unsupported(layer) is not None:
            # No decomposition for this configuration: per-sample gradients, as Opacus would.
            sampler = GradSampleHooksFastGradientClipping.GRAD_SAMPLERS.get(
                type(layer), ft_compute_per_sample_gradient
            )
            grads = sampler(layer, activations, backprops)
            return {p: g.reshape(len(g), -1).norm(2, dim=1) for p, g in grads.items()}
        squared, _ = kernel.norms(layer, activations, backprops)
        return {getattr(layer, name): value.sqrt() for name, value in squared.items()}

    return norm_sample


def register_norm_samplers() -> None:
    """Make Opacus' ghost mode use this package's norms for every supported layer type (idempotent)."""
    for layer_type, kernel in registered_kernels().items():
        register_norm_sampler(layer_type)(_norm_sampler(kernel))
