"""Fast per-sample clipping for DP-SGD: ghost norms for more layers, and one backward pass.

- per-layer kernels (``linear``, ``conv``, ``normalization``, ``embedding``):
  per-sample gradient norms without per-sample gradients, and clipped sums;
- :class:`BookKeepingModule` + :class:`BookKeepingDPOptimizer`: ghost clipping
  with book-keeping (Bu et al. 2023), one backward pass per step;
- :func:`register_norm_samplers`: the same norms for Opacus' own ghost mode;
- :func:`pick_clipping_mode` / :func:`prepare_private_training`: what the engine calls.
"""

from __future__ import annotations

# Importing the kernel modules registers them.
from privtrain.trainer.fast_clipping import conv, embedding, linear, normalization  # noqa: F401
from privtrain.trainer.fast_clipping.bookkeeping import BookKeepingModule, unsupported_layers
from privtrain.trainer.fast_clipping.mode import (
    ClippingMode,
    pick_clipping_mode,
    prepare_private_training,
)
from privtrain.trainer.fast_clipping.opacus_norm_samplers import register_norm_samplers
from privtrain.trainer.fast_clipping.optimizer import BookKeepingDPOptimizer

__all__ = [
    "BookKeepingDPOptimizer",
    "BookKeepingModule",
    "ClippingMode",
    "pick_clipping_mode",
    "prepare_private_training",
    "register_norm_samplers",
    "unsupported_layers",
]
