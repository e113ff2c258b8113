"""Which per-sample clipping a model should train with, and the objects that implement it."""

from __future__ import annotations

from typing import Literal

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.fast_clipping.bookkeeping import BookKeepingModule, unsupported_layers
from privtrain.trainer.fast_clipping.optimizer import BookKeepingDPOptimizer
from privtrain.trainer.secure_noise import SecureDPOptimizer, attach_randomness

ClippingMode = Literal["ghost", "hooks"]


def pick_clipping_mode(model: nn.Module) -> ClippingMode:
    """The fastest correct per-sample clipping for ``model``: ``"ghost"`` or ``"hooks"``.

    ``"ghost"`` is this package's ghost clipping with book-keeping
    (:class:`BookKeepingModule`): per-sample gradient *norms* from each layer's
    input and output gradient (Li et al. 2022; Bu et al. 2023), then the clipped
    sum in the same backward pass. It never holds a per-sample gradient of the
    model, and costs about one non-private backward plus norm arithmetic, so it
    wins whenever it applies: when every trainable layer is a Linear, Conv1d,
    Conv2d, LayerNorm, GroupNorm or Embedding in a configuration with a
    per-sample decomposition, each used once per forward pass.

    Otherwise ``"hooks"``: Opacus' ``GradSampleModule``, which materializes the
    per-sample gradients of every layer (``batch`` times the parameter memory)
    but supports every layer Opacus has a grad sampler for (and functorch for
    the rest). Ghost clipping cannot mix in a layer without a norm: one such
    layer would need its per-sample gradients anyway, and Opacus' mixed ghost
    mode then pays a second backward pass on top.

    Tied parameters are only detected when the model runs; a model that reuses a
    layer raises ``NotImplementedError`` on its first ghost forward pass.
    """
    return "hooks" if unsupported_layers(model) else "ghost"


def prepare_private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    loss_reduction: str = "mean",
    randomness: DPRandomness,
    mode: ClippingMode | None = None,
) -> tuple[nn.Module, DPOptimizer, ClippingMode]:
    """Wrap ``model`` and ``optimizer`` for DP-SGD in ``mode`` (default :func:`pick_clipping_mode`).

    Either way the loop is the same: ``loss = criterion(module(x), y)`` with a
    ``loss_reduction`` criterion, ``loss.backward()``, ``dp_optimizer.step()``;
    ``module._module`` is the model, for evaluation and ``state_dict``.

    Parameters
    ----------
    model : nn.Module
    optimizer : torch.optim.Optimizer
        Over ``model.parameters()`` (SGD with momentum, Adam, ...).
    noise_multiplier : float
        sigma; the noise std is ``noise_multiplier * max_grad_norm``.
    max_grad_norm : float
        C, the per-sample gradient norm bound.
    expected_batch_size : int
        Logical batch size the noised sum is divided by (``loss_reduction="mean"``).
    loss_reduction : {"mean", "sum"}
    randomness : DPRandomness
        The job's secret randomness, source of the noise.
    mode : {"ghost", "hooks"}, optional

    Returns
    -------
    (module, dp_optimizer, mode)
        A ``BookKeepingModule`` and ``BookKeepingDPOptimizer`` for ``"ghost"``; an
        Opacus ``GradSampleModule`` and a :class:`~privtrain.trainer.secure_noise.SecureDPOptimizer`
        for ``"hooks"``.
    """
    chosen: ClippingMode = mode or pick_clipping_mode(model)
    module: nn.Module
    if chosen == "ghost":
        module = BookKeepingModule(model, max_grad_norm=max_grad_norm, loss_reduction=loss_reduction)
        dp_optimizer: DPOptimizer = BookKeepingDPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction=loss_reduction,
        )
    else:
        module = GradSampleModule(model, loss_reduction=loss_reduction)
        dp_optimizer = SecureDPOptimizer(
            optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction=loss_reduction,
        )
    return module, attach_randomness(dp_optimizer, randomness), chosen
