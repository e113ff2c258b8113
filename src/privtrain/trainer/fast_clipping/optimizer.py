"""DP optimizer for gradients that arrive already clipped and summed, with noise added in place.

Opacus' ``DPOptimizerFastGradientClipping`` copies every gradient into
``summed_grad`` and builds ``summed_grad + noise`` as a third tensor, so a step
holds about three gradient-sized buffers besides the parameters and momentum.
:class:`BookKeepingDPOptimizer` does the same arithmetic (same scaling) with
``summed_grad`` aliasing the first physical batch's gradient and the noise, drawn
from the job's secret randomness (:func:`privtrain.trainer.secure_noise.add_step_noise`),
added in place: one gradient buffer, plus the step's noise.
"""

from __future__ import annotations

from opacus.optimizers import DPOptimizerFastGradientClipping

from privtrain.trainer.secure_noise import add_step_noise


class BookKeepingDPOptimizer(DPOptimizerFastGradientClipping):
    """``DPOptimizerFastGradientClipping`` without gradient copies.

    Expects ``p.grad`` to hold the clipped per-sample gradient sum of one
    physical batch, as :class:`~privtrain.trainer.fast_clipping.BookKeepingModule`
    leaves it; adds Gaussian noise of std ``noise_multiplier * max_grad_norm``,
    divides by ``expected_batch_size`` (mean reduction) and steps the wrapped
    optimizer. Physical batches inside a logical one (Opacus'
    ``BatchMemoryManager``) accumulate in ``summed_grad`` as in Opacus.

    ``zero_grad`` always sets ``p.grad`` to None, whatever ``set_to_none`` says,
    because ``p.grad`` may alias the accumulated sum.
    """

    def accumulate(self) -> None:
        """Add this physical batch's ``p.grad`` into ``p.summed_grad`` (the first one is kept, not copied)."""
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad.detach()
            else:
                p.summed_grad.add_(p.grad.detach())

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop ``p.grad`` (and ``p.summed_grad`` unless a physical batch is pending)."""
        for p in self.params:
            if not self._is_last_step_skipped:
                p.summed_grad = None
            p.grad = None

    def add_noise(self) -> None:
        """``p.grad = p.summed_grad + N(0, (sigma * C)^2)``, in place on ``summed_grad``."""
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        add_step_noise(self, multiplier * self.max_grad_norm)
