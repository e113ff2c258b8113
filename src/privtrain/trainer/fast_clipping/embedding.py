"""``nn.Embedding``: per-sample gradient norms from the distinct tokens of each sample.

A sample's weight gradient has one non-zero row per distinct token id ``v`` it
contains: the sum of the output gradients at the positions holding ``v``
(positions holding ``padding_idx`` contribute nothing, as in PyTorch's own
backward). Summing those rows per (sample, token) pair and squaring costs
``O(T * dim)`` per sample, never the vocabulary size (the algorithm Opacus ships
for Embedding, after Li et al. 2022, here also honouring ``padding_idx``). The
clipped sum is one ``index_add`` of the coefficient-scaled output gradients.

``scale_grad_by_freq`` scales by token counts over the whole batch, so the
gradient is not a sum of per-sample terms; such layers are refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from privtrain.trainer.fast_clipping.kernels import SquaredNorms, register_kernel


def _unsupported(layer: nn.Embedding) -> str | None:
    if layer.scale_grad_by_freq:
        return "Embedding(scale_grad_by_freq=True) has no per-sample gradient decomposition"
    if layer.sparse:
        return "Embedding(sparse=True) is not supported; use a dense embedding"
    return None


def _flat(layer: nn.Embedding, ids: torch.Tensor, backprops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids ``(batch, T)`` and gradients ``(batch, T, dim)``, padding positions zeroed."""
    ids = ids.reshape(len(ids), -1)
    g = backprops.reshape(len(ids), -1, layer.embedding_dim)
    if layer.padding_idx is not None:
        g = g * (ids != layer.padding_idx).unsqueeze(-1).to(g.dtype)
    return ids, g


@register_kernel(nn.Embedding, unsupported=_unsupported)
class EmbeddingKernel:
    """Kernel of ``nn.Embedding``; no state."""

    @staticmethod
    def norms(
        layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> tuple[SquaredNorms, Any]:
        if not layer.weight.requires_grad:
            return {}, None
        ids, g = _flat(layer, activations[0], backprops)
        batch, positions = ids.shape
        if batch * positions == 0:
            return {"weight": g.new_zeros(batch)}, None
        rows = torch.arange(batch, device=ids.device).repeat_interleave(positions)
        pairs = torch.stack([rows, ids.reshape(-1)], dim=1)
        unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        summed = g.new_zeros(len(unique), layer.embedding_dim).index_add_(
            0, inverse, g.reshape(-1, layer.embedding_dim)
        )
        norms = g.new_zeros(batch).index_add_(0, unique[:, 0], summed.pow(2).sum(dim=1))
        return {"weight": norms}, None

    @staticmethod
    def clipped_sum(
        layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor,
        coef: torch.Tensor, state: Any,
    ) -> dict[str, torch.Tensor]:
        if not layer.weight.requires_grad:
            return {}
        ids, g = _flat(layer, activations[0], backprops)
        scaled = (g * coef.to(g.dtype).view(-1, 1, 1)).reshape(-1, layer.embedding_dim)
        grad = torch.zeros_like(layer.weight, dtype=g.dtype)
        return {"weight": grad.index_add_(0, ids.reshape(-1), scaled)}
