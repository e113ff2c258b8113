"""The model and DP optimizer a job trains with, for each ``clipping`` option.

- ``flat``: one bound C on the whole per-sample gradient, in the fastest correct
  mode for the model (:func:`privtrain.trainer.fast_clipping.prepare_private_training`);
- ``per_layer``: C / sqrt(L) on each of the L trainable tensors (McMahan et al. 2018,
  "Learning Differentially Private Recurrent Language Models"), Opacus hooks mode;
- ``adaptive``: C follows a private quantile of the norms (Andrew et al. 2021), in
  ghost or hooks mode (:mod:`privtrain.trainer.adaptive_clipping`).

In all three the noise is σ·C on a sum whose per-sample sensitivity is C, so
the privacy analysis is that of one Gaussian step with σ per logical step.
"""

from __future__ import annotations

import math

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from privtrain.trainer.adaptive_clipping import (
    AdaptiveBookKeepingDPOptimizer,
    AdaptiveClipDPOptimizer,
    ClipBoundEstimator,
)
from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.fast_clipping import (
    BookKeepingModule,
    pick_clipping_mode,
    prepare_private_training,
)
from privtrain.trainer.secure_noise import SecureDPPerLayerOptimizer, attach_randomness
from privtrain.trainer.spec import TrainingSpec


def wrap_for_dp(
    spec: TrainingSpec, model: nn.Module, optimizer: torch.optim.Optimizer, *,
    noise_multiplier: float, randomness: DPRandomness, mode: str | None,
) -> tuple[nn.Module, DPOptimizer, str]:
    """``(module, dp_optimizer, clipping_mode)`` for ``spec.clipping``.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Over the model's trainable parameters.
    noise_multiplier : float
        σ of the first step (an effective σ for adaptive clipping).
    randomness : DPRandomness
        The job's secret randomness: source of the gradient noise (and of the count
        noise of adaptive clipping).
    mode : {"ghost", "hooks"}, optional
        Per-sample clipping implementation for ``flat`` and ``adaptive``; default
        the fastest correct one. ``per_layer`` always runs in hooks mode.
    """
    if spec.clipping == "per_layer":
        trainable = [p for p in model.parameters() if p.requires_grad]
        per_tensor = spec.max_grad_norm / math.sqrt(len(trainable))
        return GradSampleModule(model, loss_reduction="mean"), attach_randomness(SecureDPPerLayerOptimizer(
            optimizer, noise_multiplier=noise_multiplier,
            max_grad_norm=[per_tensor] * len(trainable), expected_batch_size=spec.batch_size,
            loss_reduction="mean",
        ), randomness), "hooks"
    if spec.clipping == "adaptive":
        return _adaptive(spec, model, optimizer, noise_multiplier, randomness, mode)
    return prepare_private_training(
        model, optimizer, noise_multiplier=noise_multiplier, max_grad_norm=spec.max_grad_norm,
        expected_batch_size=spec.batch_size, loss_reduction="mean", randomness=randomness,
        mode=mode,  # type: ignore[arg-type]
    )


def _adaptive(spec: TrainingSpec, model: nn.Module, optimizer: torch.optim.Optimizer,
              noise_multiplier: float, randomness: DPRandomness,
              mode: str | None) -> tuple[nn.Module, DPOptimizer, str]:
    estimator = ClipBoundEstimator(
        target_unclipped_quantile=spec.target_unclipped_quantile,
        clipbound_learning_rate=spec.clipbound_learning_rate, min_clipbound=spec.min_clipbound,
        max_clipbound=spec.max_clipbound, unclipped_num_std=spec.count_noise,
        expected_batch_size=spec.batch_size,
    )
    chosen = mode or pick_clipping_mode(model)
    if chosen == "ghost":
        module = BookKeepingModule(model, max_grad_norm=spec.max_grad_norm, loss_reduction="mean")
        return module, AdaptiveBookKeepingDPOptimizer(
            optimizer, module=module, estimator=estimator, noise_multiplier=noise_multiplier,
            max_grad_norm=spec.max_grad_norm, expected_batch_size=spec.batch_size,
            randomness=randomness,
        ), chosen
    return GradSampleModule(model, loss_reduction="mean"), AdaptiveClipDPOptimizer(
        optimizer, estimator=estimator, noise_multiplier=noise_multiplier,
        max_grad_norm=spec.max_grad_norm, expected_batch_size=spec.batch_size, randomness=randomness,
    ), "hooks"


def set_clip_bound(module: nn.Module, optimizer: DPOptimizer, bound: float) -> None:
    """Restore an adaptive clip bound (from a checkpoint) on the optimizer and a ghost module."""
    optimizer.max_grad_norm = bound
    if isinstance(module, BookKeepingModule):
        module.max_grad_norm = bound
