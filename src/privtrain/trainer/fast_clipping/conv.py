"""``nn.Conv1d`` / ``nn.Conv2d``: per-sample gradient norms through unfold.

Unfolding the (padded) input of one sample gives ``A`` ``(K, L)`` with
``K = in_channels / groups * prod(kernel_size)`` rows and one column per output
position ``L``; with output gradients ``G`` ``(out_channels, L)`` the weight
gradient of that sample is ``G A^T`` (per group). Its squared norm is either
computed directly (``out * K * L`` multiply-adds, and ``out * K`` floats kept
per sample), or as the Gram inner product ``<A^T A, G^T G>`` (``L^2 (K + out)``
multiply-adds, nothing of the parameter's size), as Li et al. 2022 ("Large
Language Models Can Be Strong Differentially Private Learners", appendix on
convolutions) do. The kernel picks the cheaper one per layer by shape: the
direct form where outputs have many positions (early layers of an image net),
Gram where they have few and channels are wide (late layers). For ungrouped
convolutions the direct form is one grouped convolution, without unfolding.

The clipped sum reuses the per-sample gradients when they were materialized,
and otherwise is one ``convolution_backward`` for the weight of the
coefficient-scaled output gradients.
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

Conv = nn.Conv1d | nn.Conv2d
# Upper bound on the floats one chunk of unfolded input (or Gram matrices) may take.
CHUNK_ELEMENTS = 1 << 22


def _pad(layer: Conv, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as its convolution sees it (padding applied, any padding mode)."""
    pads = list(layer._reversed_padding_repeated_twice)
    if not any(pads):
        return x
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(x, pads, mode=mode)


def _as_2d(layer: Conv) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel_size, dilation, stride) as 2-d tuples (a Conv1d is a 1 x k Conv2d)."""
    if isinstance(layer, nn.Conv1d):
        return (1, layer.kernel_size[0]), (1, layer.dilation[0]), (1, layer.stride[0])
    k, d, s = layer.kernel_size, layer.dilation, layer.stride
    return (k[0], k[1]), (d[0], d[1]), (s[0], s[1])


def _unfold(layer: Conv, x_padded: torch.Tensor) -> torch.Tensor:
    """Padded input ``(batch, C, *spatial)`` -> ``(batch, groups, K, L)``, laid out as ``F.unfold``.

    Built from strided views (``Tensor.unfold`` per spatial dimension, then every
    ``dilation``-th element) and one copy: on CPU several times faster than
    ``F.unfold``'s im2col, same values.
    """
    kernel, dilation, stride = _as_2d(layer)
    x4 = x_padded.unsqueeze(2) if x_padded.dim() == 3 else x_padded
    windows = x4
    for dim, (k, d, s) in enumerate(zip(kernel, dilation, stride, strict=True), start=2):
        windows = windows.unfold(dim, (k - 1) * d + 1, s)  # appends a window dimension
    windows = windows[..., :: dilation[0], :: dilation[1]]  # (batch, C, oh, ow, kh, kw)
    batch, channels, oh, ow = windows.shape[:4]
    cols = windows.permute(0, 1, 4, 5, 2, 3).reshape(batch, channels * kernel[0] * kernel[1], oh * ow)
    return cols.view(batch, layer.groups, -1, oh * ow)


def use_gram(layer: Conv, positions: int) -> bool:
    """True when ``<A^T A, G^T G>`` is cheaper than materializing ``G A^T``."""
    k = layer.in_channels // layer.groups * int(torch.tensor(layer.kernel_size).prod())
    out_per_group = layer.out_channels // layer.groups
    gram = layer.groups * positions * positions * (k + out_per_group)
    direct = layer.out_channels * k * positions
    return gram < direct


def _per_sample_grads_by_conv(layer: Conv, x_padded: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``(batch, out, K)`` of an ungrouped conv, as one grouped convolution.

    ``grad[b, o, c, i] = sum_h g[b, o, h] * x[b, c, stride * h + dilation * i]`` is a
    convolution of ``x`` (channels and batch swapped, one group per sample) with
    ``g`` as the kernel, dilated by the layer's stride and strided by its dilation
    (the per-example trick of Rochette et al. 2019, "Efficient Per-Example Gradient
    Computations in Convolutional Neural Networks"). It runs on the backend's
    convolution kernels and never builds the unfolded input.
    """
    kernel, dilation, stride = _as_2d(layer)
    batch = len(x_padded)
    x4 = x_padded.unsqueeze(2) if x_padded.dim() == 3 else x_padded
    g4 = g.view(batch, layer.out_channels, *([1] if x_padded.dim() == 3 else []), *g.shape[2:])
    out = F.conv2d(
        x4.transpose(0, 1), g4.reshape(batch * layer.out_channels, 1, *g4.shape[2:]),
        stride=dilation, dilation=stride, groups=batch,
    )  # (in, batch * out, >= kh, >= kw)
    out = out.view(layer.in_channels, batch, layer.out_channels, *out.shape[2:])
    out = out[..., : kernel[0], : kernel[1]]
    return out.permute(1, 2, 0, 3, 4).reshape(batch, layer.out_channels, -1)


def _weight_norms(
    layer: Conv, x_padded: torch.Tensor, g: torch.Tensor, gram: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Squared per-sample weight-gradient norms ``(batch,)`` and, when direct, the gradients."""
    batch = g.shape[0]
    if not gram and layer.groups == 1:
        grads = _per_sample_grads_by_conv(layer, x_padded, g.view(batch, layer.out_channels, *g.shape[2:]))
        return batch_sum(grads), grads
    g = g.flatten(2)
    positions = g.shape[-1]
    groups = layer.groups
    k = layer.in_channels // groups * int(torch.tensor(layer.kernel_size).prod())
    per_sample = groups * (k * positions + (positions * positions if gram else 0))
    step = max(1, CHUNK_ELEMENTS // max(1, per_sample))
    norms = g.new_empty(batch)
    out = None if gram else g.new_empty(batch, layer.out_channels, k)
    gg = g.view(batch, groups, -1, positions)
    for start in range(0, batch, step):
        stop = min(batch, start + step)
        a = _unfold(layer, x_padded[start:stop]).flatten(0, 1)  # (n * groups, K, L)
        gc = gg[start:stop].flatten(0, 1)  # (n * groups, out / groups, L)
        if gram:
            aat = torch.bmm(a.transpose(1, 2), a)
            ggt = torch.bmm(gc.transpose(1, 2), gc)
            norms[start:stop] = (aat * ggt).sum(dim=(1, 2)).view(stop - start, groups).sum(dim=1)
        else:
            assert out is not None
            chunk = torch.bmm(gc, a.transpose(1, 2)).view(stop - start, layer.out_channels, k)
            out[start:stop] = chunk
            norms[start:stop] = batch_sum(chunk)
    return norms.clamp(min=0), out


@register_kernel(nn.Conv1d, nn.Conv2d)
class ConvKernel:
    """Kernel of ``nn.Conv1d`` and ``nn.Conv2d`` (any stride, padding, dilation, groups, padding mode)."""

    @staticmethod
    def norms(
        layer: Conv, activations: list[torch.Tensor], backprops: torch.Tensor
    ) -> tuple[SquaredNorms, Any]:
        x = _pad(layer, activations[0].to(backprops.dtype))
        g = backprops.flatten(2)  # (batch, out, L)
        out: SquaredNorms = {}
        state = None
        if layer.weight.requires_grad:
            gram = use_gram(layer, g.shape[-1])
            out["weight"], state = _weight_norms(layer, x, backprops, gram)
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = g.sum(dim=2).pow(2).sum(dim=1)
        return out, state

    @staticmethod
    def clipped_sum(
        layer: Conv, activations: list[torch.Tensor], backprops: torch.Tensor,
        coef: torch.Tensor, state: Any,
    ) -> dict[str, torch.Tensor]:
        coef = coef.to(backprops.dtype)
        out: dict[str, torch.Tensor] = {}
        if layer.weight.requires_grad:
            if state is not None:
                out["weight"] = weighted_sum(coef, state).view_as(layer.weight)
            else:
                x = _pad(layer, activations[0].to(backprops.dtype))
                scaled = backprops * coef.view(-1, *([1] * (backprops.dim() - 1)))
                zeros = [0] * (x.dim() - 2)
                out["weight"] = torch.ops.aten.convolution_backward(
                    scaled, x, layer.weight, None, list(layer.stride), zeros,
                    list(layer.dilation), False, zeros, layer.groups, [False, True, False],
                )[1]
        if layer.bias is not None and layer.bias.requires_grad:
            out["bias"] = coef @ backprops.flatten(2).sum(dim=2)
        return out
