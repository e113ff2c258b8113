"""``nn.LayerNorm`` and ``nn.GroupNorm``: per-sample gradients are small, so materialize them.

With ``x_hat`` the normalized input and ``g`` the output gradient, a sample's
weight gradient is ``sum over the non-parameter positions of g * x_hat`` and its
bias gradient ``sum of g``: one value per normalized feature (LayerNorm) or per
channel (GroupNorm). That is ``(batch, parameter size)`` floats, the size of the
layer's own input at most, and cheaper than any Gram form, so the kernels keep
them and reuse them for the clipped sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from privtrain.trainer.fast_clipping.kernels import (
    SquaredNorms,
    batch_sum,
    register_kernel,
    weighted_sum,
)


def _norms_from_grads(
    layer: nn.Module, weight_grad: torch.Tensor, bias_grad: torch.Tensor
) -> tuple[SquaredNorms, Any]:
    out: SquaredNorms = {}
    state: dict[str, torch.Tensor] = {}
    if layer.weight is not None and layer.weight.requires_grad:
        out["weight"], state["weight"] = batch_sum(weight_grad), weight_grad
    if layer.bias is not None and layer.bias.requires_grad:
        out["bias"], state["bias"] = batch_sum(bias_grad), bias_grad
    return out, state


def _clipped(
    layer: nn.Module, coef: torch.Tensor, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {
        name: weighted_sum(coef, grads).view_as(getattr(layer, name))
        for name, grads in state.items()
    }


@register_kernel(nn.LayerNorm)
class LayerNormKernel:
    """Kernel of ``nn.LayerNorm``; state is the per-sample gradients."""

    @staticmethod
    def norms(
        layer: nn.LayerNorm, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> tuple[SquaredNorms, Any]:
        x = activations[0].to(backprops.dtype)
        x_hat = F.layer_norm(x, layer.normalized_shape, None, None, layer.eps)
        dims = list(range(1, x.dim() - len(layer.normalized_shape)))
        weight_grad = (backprops * x_hat).sum(dim=dims) if dims else backprops * x_hat
        bias_grad = backprops.sum(dim=dims) if dims else backprops
        return _norms_from_grads(layer, weight_grad, bias_grad)

    @staticmethod
    def clipped_sum(
        layer: nn.LayerNorm, activations: list[torch.Tensor], backprops: torch.Tensor,
        coef: torch.Tensor, state: Any,
    ) -> dict[str, torch.Tensor]:
        return _clipped(layer, coef.to(backprops.dtype), state)


@register_kernel(nn.GroupNorm)
class GroupNormKernel:
    """Kernel of ``nn.GroupNorm``; state is the per-sample gradients ``(batch, channels)``."""

    @staticmethod
    def norms(
        layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> tuple[SquaredNorms, Any]:
        x = activations[0].to(backprops.dtype)
        x_hat = F.group_norm(x, layer.num_groups, None, None, layer.eps)
        g = backprops.reshape(len(x), x.shape[1], -1)
        weight_grad = (g * x_hat.reshape(g.shape)).sum(dim=2)
        return _norms_from_grads(layer, weight_grad, g.sum(dim=2))

    @staticmethod
    def clipped_sum(
        layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor,
        coef: torch.Tensor, state: Any,
    ) -> dict[str, torch.Tensor]:
        return _clipped(layer, coef.to(backprops.dtype), state)
