"""``nn.Linear``: per-sample gradient norms without per-sample gradients.

For one sample with input rows ``a`` ``(T, in)`` and output gradients ``g``
``(T, out)`` the weight gradient is ``g^T a``. Its squared Frobenius norm is
``<a a^T, g g^T>`` (the "ghost norm", Goodfellow 2015; Li et al. 2022, "Large
Language Models Can Be Strong Differentially Private Learners"), which costs
``T^2 (in + out)`` instead of the ``T * in * out`` of materializing ``g^T a``.
For ``T = 1`` (a plain MLP) it is ``|a|^2 |g|^2``. The kernel picks the cheaper
of the two per call, by shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from privtrain.trainer.fast_clipping.kernels import (
    SquaredNorms,
    batch_sum,
    register_kernel,
    weighted_sum,
)


def use_gram(positions: int, fan_in: int, fan_out: int) -> bool:
    """True when the Gram (ghost) norm is cheaper than the per-sample gradient.

    Gram costs ``T^2 (in + out)`` multiply-adds per sample, the direct per-sample
    gradient ``T * in * out`` (and as much memory per sample).
    """
    return positions * positions * (fan_in + fan_out) <= positions * fan_in * fan_out


def _as_sequence(x: torch.Tensor) -> torch.Tensor:
    """``(batch, ..., features)`` -> ``(batch, positions, features)``."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


@register_kernel(nn.Linear)
class LinearKernel:
    """Kernel of ``nn.Linear``; state is the per-sample weight gradient when materialized."""

    @staticmethod
    def norms(
        layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> tuple[SquaredNorms, Any]:
        a = activations[0].to(backprops.dtype)
        g = backprops
        out: SquaredNorms = {}
        state = None
        if a.dim() == 2:
            g2 = g.pow(2).sum(dim=1)
            if layer.weight.requires_grad:
                out["weight"] = g2 * a.pow(2).sum(dim=1)
            if layer.bias is not None and layer.bias.requires_grad:
                out["bias"] = g2
            return out, state
        a3, g3 = _as_sequence(a), _as_sequence(g)
        if layer.weight.requires_grad:
            if use_gram(a3.shape[1], a3.shape[2], g3.shape[2]):
                aat = torch.bmm(a3, a3.transpose(1, 2))
                ggt = torch.bmm(g3, g3.transpose(1, 2))
                out["weight"] = (aat * ggt).sum(dim=(1, 2)).clamp(min=0)
            else:
                state = torch.bmm(g3.transpose(1, 2), a3)  # (batch, out, in)
                out["weight"] = batch_sum(state)
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = g3.sum(dim=1).pow(2).sum(dim=1)
        return out, state

    @staticmethod
    def clipped_sum(
        layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor,
        coef: torch.Tensor, state: Any,
    ) -> dict[str, torch.Tensor]:
        a = activations[0].to(backprops.dtype)
        g = _as_sequence(backprops) * coef.view(-1, 1, 1).to(backprops.dtype)
        out: dict[str, torch.Tensor] = {}
        if layer.weight.requires_grad:
            if state is not None:
                out["weight"] = weighted_sum(coef, state)
            else:
                out["weight"] = g.reshape(-1, g.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = g.sum(dim=(0, 1))
        return out
