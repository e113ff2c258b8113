"""Adaptive clipping: the clip bound C follows a private quantile of per-sample gradient norms.

Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially Private Learning
with Adaptive Clipping" (NeurIPS). Every logical step also releases a noised
count of the samples whose gradient norm was within C,

    b̃ = (Σ_i (1[‖g_i‖ ≤ C] − ½) + N(0, σ_b²)) / B + ½         (B: expected batch size)

and moves C geometrically toward the target unclipped quantile γ:
C ← clamp(C · exp(−η_C (b̃ − γ)), min, max). Centring each indicator at ½
gives the count sensitivity ½ under adding or removing a record, so by the
paper's Theorem 1 the pair (gradient sum with noise σ_g·C, count with noise σ_b)
is exactly as private as one Gaussian step with the effective σ,

    σ^-2 = σ_g^-2 + (2σ_b)^-2,

which is what is calibrated to the target ε and what the accountant records
(``optimizer.noise_multiplier``); the gradient noise uses σ_g.

Opacus' ``AdaClipDPOptimizer`` (1.6) is the base for hooks mode, with four
corrections: the indicators are centred (Opacus sums raw 0/1 indicators,
sensitivity 1, while splitting σ with the ½-sensitivity formula), the count is
divided by the expected batch size (Opacus divides by the realised Poisson
batch size, which is itself private, and by zero on an empty batch), counts
accumulate over the physical batches of a logical one (Opacus resets them on
every ``zero_grad``), and norms are taken in float32 under bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from opacus.optimizers import AdaClipDPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from privtrain.errors import InvalidInput
from privtrain.trainer.dp_randomness import DPRandomness, Stream
from privtrain.trainer.fast_clipping.bookkeeping import BookKeepingModule
from privtrain.trainer.fast_clipping.optimizer import BookKeepingDPOptimizer
from privtrain.trainer.secure_noise import add_step_noise, attach_randomness, zero_nonfinite_samples


def gradient_noise(noise_multiplier: float, unclipped_num_std: float) -> float:
    """σ_g with σ^-2 = σ_g^-2 + (2σ_b)^-2 (Andrew et al. 2021, Theorem 1).

    Parameters
    ----------
    noise_multiplier : float
        σ, the effective noise multiplier of one step (what the accountant composes).
    unclipped_num_std : float
        σ_b, std of the noise on the unclipped count.

    Raises
    ------
    InvalidInput
        ``2σ_b <= σ``: the count alone would spend at least the whole step's budget.
    """
    if 2 * unclipped_num_std <= noise_multiplier:
        raise InvalidInput(
            f"adaptive clipping needs 2 × unclipped_num_std > noise_multiplier, got "
            f"unclipped_num_std={unclipped_num_std:.4g} and noise_multiplier={noise_multiplier:.4g}; "
            "raise unclipped_num_std or batch_size (its default is batch_size / 20)"
        )
    return float((noise_multiplier ** -2 - (2 * unclipped_num_std) ** -2) ** -0.5)


class ClipBoundEstimator:
    """The private quantile update of the clip bound, shared by hooks and ghost modes.

    Parameters
    ----------
    target_unclipped_quantile : float
        γ in (0, 1): the fraction of samples whose norm should stay within C.
    clipbound_learning_rate : float
        η_C > 0 of the geometric update.
    min_clipbound, max_clipbound : float
        Bounds C is clamped to after every update.
    unclipped_num_std : float
        σ_b of the count noise.
    expected_batch_size : int
        B, the count's denominator.
    """

    def __init__(self, *, target_unclipped_quantile: float, clipbound_learning_rate: float,
                 min_clipbound: float, max_clipbound: float, unclipped_num_std: float,
                 expected_batch_size: int) -> None:
        self.target_unclipped_quantile = target_unclipped_quantile
        self.clipbound_learning_rate = clipbound_learning_rate
        self.min_clipbound = min_clipbound
        self.max_clipbound = max_clipbound
        self.unclipped_num_std = unclipped_num_std
        self.expected_batch_size = expected_batch_size
        self.centred_count = 0.0

    def observe(self, norms: torch.Tensor, bound: float) -> None:
        """Add Σ (1[‖g_i‖ ≤ C] − ½) over a physical batch's ``(batch,)`` float32 norms."""
        self.centred_count += float((norms <= bound).sum()) - 0.5 * len(norms)

    def update(self, bound: float, randomness: DPRandomness) -> float:
        """The new clip bound after one logical step (count noise from the job's randomness);
        resets the count."""
        # Every rank draws the same count noise (one key, one index) and adds it to the same
        # all-ranks total: one noisy count, as with one process.
        noise = float(randomness.standard_normal(Stream.COUNT, randomness.take(Stream.COUNT), 1)[0])
        count = self.centred_count
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
                else torch.device("cpu")
            total = torch.tensor([count], dtype=torch.float64, device=on)
            dist.all_reduce(total)
            count = float(total[0])
        unclipped_fraction = (count + self.unclipped_num_std * noise) / self.expected_batch_size + 0.5
        self.centred_count = 0.0
        new = bound * math.exp(-self.clipbound_learning_rate
                               * (unclipped_fraction - self.target_unclipped_quantile))
        return min(max(new, self.min_clipbound), self.max_clipbound)


class AdaptiveClipDPOptimizer(AdaClipDPOptimizer):
    """Opacus' ``AdaClipDPOptimizer`` with the corrections listed in the module docstring.

    Hooks mode: expects ``p.grad_sample`` from a ``GradSampleModule``.
    ``noise_multiplier`` is the effective σ; set it before a step to follow a
    noise schedule. ``max_grad_norm`` is the current clip bound.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, estimator: ClipBoundEstimator,
                 noise_multiplier: float, max_grad_norm: float, expected_batch_size: int,
                 randomness: DPRandomness) -> None:
        super().__init__(
            optimizer, noise_multiplier=noise_multiplier,
            target_unclipped_quantile=estimator.target_unclipped_quantile,
            clipbound_learning_rate=estimator.clipbound_learning_rate,
            max_clipbound=estimator.max_clipbound, min_clipbound=estimator.min_clipbound,
            unclipped_num_std=estimator.unclipped_num_std, max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size, loss_reduction="mean",
        )
        self.estimator = estimator
        attach_randomness(self, randomness)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear per-sample gradients; the count survives until its logical step ends."""
        super(AdaClipDPOptimizer, self).zero_grad(set_to_none)

    def clip_and_accumulate(self) -> None:
        """Flat clipping at the current bound in float32, counting unclipped samples."""
        zero_nonfinite_samples(self)
        samples = [self._get_flat_grad_sample(p).float() for p in self.params]
        batch = len(samples[0])
        if batch:
            norms = torch.stack([g.reshape(batch, -1).norm(2, dim=-1) for g in samples], dim=1).norm(2, dim=1)
        else:
            norms = torch.zeros(0, device=samples[0].device)
        self.estimator.observe(norms, self.max_grad_norm)
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for p, grad_sample in zip(self.params, samples, strict=True):
            _check_processed_flag(p.grad_sample)
            grad = torch.einsum("i,i...", factor, grad_sample).to(p.dtype)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        """Gradient noise σ_g·C (Theorem 1); the count noise is added in :meth:`update_max_grad_norm`."""
        sigma_g = gradient_noise(self.noise_multiplier, self.estimator.unclipped_num_std)
        add_step_noise(self, sigma_g * self.max_grad_norm)

    def update_max_grad_norm(self) -> None:
        """Move the clip bound with the noised count (called once per logical step)."""
        self.max_grad_norm = self.estimator.update(self.max_grad_norm, self.randomness)


class AdaptiveBookKeepingDPOptimizer(BookKeepingDPOptimizer):
    """Adaptive clipping in ghost mode: the count comes from the module's per-sample norms.

    ``module`` is the :class:`BookKeepingModule` that clips in backward; its
    ``max_grad_norm`` is kept equal to this optimizer's after every update.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, module: nn.Module,
                 estimator: ClipBoundEstimator, noise_multiplier: float, max_grad_norm: float,
                 expected_batch_size: int, randomness: DPRandomness) -> None:
        if not isinstance(module, BookKeepingModule):
            raise InvalidInput("adaptive ghost clipping needs a BookKeepingModule")
        super().__init__(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                         expected_batch_size=expected_batch_size, loss_reduction="mean")
        attach_randomness(self, randomness)
        self.module = module
        self.estimator = estimator
        module.max_grad_norm = max_grad_norm

    def accumulate(self) -> None:
        """Count this physical batch's unclipped samples, then accumulate its clipped sum."""
        norms = self.module.per_sample_gradient_norms
        if norms is not None:
            self.estimator.observe(norms.float(), self.max_grad_norm)
            self.module.per_sample_gradient_norms = None
        super().accumulate()

    def add_noise(self) -> None:
        """Gradient noise σ_g·C (Theorem 1)."""
        self._adjusted_noise_multiplier = gradient_noise(self.noise_multiplier,
                                                         self.estimator.unclipped_num_std)
        super().add_noise()

    def pre_step(self, closure: object = None) -> bool:
        """Noise and scale as usual; at the end of a logical step, move the clip bound."""
        done = bool(super().pre_step())
        if done:  # the last physical batch of a logical step
            self.max_grad_norm = self.estimator.update(self.max_grad_norm, self.randomness)
            self.module.max_grad_norm = self.max_grad_norm
        return done
