"""Gradient noise from the job's secret randomness, and per-sample sums that stay bounded.

Every DP optimizer privtrain trains with (Opacus' ``DPOptimizer`` and
``DPPerLayerOptimizer`` in hooks mode, the book-keeping and adaptive optimizers) adds
its noise through :func:`add_step_noise`: one draw of the job's
:class:`~privtrain.trainer.dp_randomness.DPRandomness` per logical step, never a
``torch.Generator`` a seed could reproduce. In a job of several processes it is also
where the ranks' clipped sums meet: rank 0 alone adds the noise, then one all-reduce
sums the (noised) sums of every rank, so every optimizer works at every world size.

A sample whose per-sample gradient is not finite (a NaN or infinite loss, an
overflow) would make the clipped sum, and so the released parameters, NaN: the
release would then tell that such a sample was in the batch, which no noise hides.
:func:`zero_nonfinite_samples` drops such a sample's contribution to 0 before
clipping (its norm is then 0 ≤ C), so the sensitivity bound of the analysis holds
for every input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from privtrain.trainer.dp_randomness import DPRandomness


class NoiseObserver:
    """Hooks around the noise of a logical step (the privacy audit's canaries use them).

    ``before_noise(params)`` may add to ``p.summed_grad`` (already clipped and summed);
    ``after_noise(params)`` sees the privatized sums in ``p.grad`` before they are scaled.
    """

    def before_noise(self, params: list[torch.nn.Parameter], clip_bound: float) -> None: ...

    def after_noise(self, params: list[torch.nn.Parameter]) -> None: ...


def add_step_noise(optimizer: DPOptimizer, std: float) -> None:
    """``p.grad = Σ_ranks p.summed_grad + N(0, std²)`` for every parameter, from one secret draw.

    The draw covers all parameters of the step at once (``(Σ numel,)`` float32 on the
    first parameter's device), in the order of ``optimizer.params``; the sums are
    noised in place. ``std`` is σ·C (0: no noise, nothing drawn). With several ranks
    (an initialised ``torch.distributed`` group), rank 0 alone adds the noise and the
    sums are then all-reduced, so every rank holds the same noised total.

    Raises
    ------
    AttributeError
        The optimizer was built without ``randomness`` (see :func:`attach_randomness`).
    """
    params = optimizer.params
    for p in params:
        _check_processed_flag(p.summed_grad)
    observer: NoiseObserver | None = getattr(optimizer, "noise_observer", None)
    if observer is not None:
        observer.before_noise(params, float(optimizer.max_grad_norm))
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if std > 0 and params and (not distributed or dist.get_rank() == 0):
        randomness: DPRandomness = optimizer.randomness  # type: ignore[attr-defined]
        total = sum(p.summed_grad.numel() for p in params)
        noise = randomness.step_noise(total, params[0].summed_grad.device, torch.float32)
        offset = 0
        for p in params:
            count = p.summed_grad.numel()
            part = noise[offset:offset + count].view_as(p.summed_grad)
            p.summed_grad.add_(part.to(p.summed_grad.device, p.summed_grad.dtype), alpha=std)
            offset += count
    if distributed and params:
        _all_reduce_sums(params)
    for p in params:
        p.grad = p.summed_grad.view_as(p)
        _mark_as_processed(p.summed_grad)
    if observer is not None:
        observer.after_noise(params)


def _all_reduce_sums(params: list[torch.nn.Parameter]) -> None:
    """Sum every rank's ``summed_grad`` in place, through one flat buffer (one collective)."""
    flat = torch.cat([p.summed_grad.reshape(-1).float() for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        count = p.summed_grad.numel()
        p.summed_grad.copy_(flat[offset:offset + count].view_as(p.summed_grad))
        offset += count


def attach_randomness(optimizer: DPOptimizer, randomness: DPRandomness) -> DPOptimizer:
    """Give a DP optimizer the job's randomness (and no ``torch.Generator``)."""
    optimizer.randomness = randomness  # type: ignore[attr-defined]
    optimizer.generator = None
    return optimizer


def zero_nonfinite_samples(optimizer: DPOptimizer) -> None:
    """Hooks mode: replace every per-sample gradient that holds a NaN or an infinity by zeros.

    Looks at ``p.grad_sample`` of all parameters of a physical batch ``(batch, ...)``;
    does nothing (one reduction per tensor) when every sample is finite.
    """
    samples = [optimizer._get_flat_grad_sample(p) for p in optimizer.params]
    if not samples or len(samples[0]) == 0:
        return
    finite = torch.stack([g.reshape(len(g), -1).isfinite().all(dim=1) for g in samples]).all(dim=0)
    if bool(finite.all()):
        return
    for p in optimizer.params:
        sample = optimizer._get_flat_grad_sample(p)
        keep = finite.view(-1, *([1] * (sample.dim() - 1))).to(sample.device)
        p.grad_sample = torch.where(keep, sample, torch.zeros((), dtype=sample.dtype,
                                                              device=sample.device))


class SecureDPOptimizer(DPOptimizer):
    """Opacus' ``DPOptimizer`` (hooks mode) with secret noise and finite per-sample sums."""

    def clip_and_accumulate(self) -> None:
        """Zero non-finite samples, then Opacus' flat clipping."""
        zero_nonfinite_samples(self)
        super().clip_and_accumulate()

    def add_noise(self) -> None:
        """Noise σ·C from the job's randomness."""
        add_step_noise(self, self.noise_multiplier * self.max_grad_norm)


class SecureDPPerLayerOptimizer(DPPerLayerOptimizer):
    """Opacus' ``DPPerLayerOptimizer`` with secret noise and finite per-sample sums."""

    def clip_and_accumulate(self) -> None:
        """Zero non-finite samples, then Opacus' per-layer clipping."""
        zero_nonfinite_samples(self)
        super().clip_and_accumulate()

    def add_noise(self) -> None:
        """Noise σ·C (C the norm of the per-layer bounds) from the job's randomness."""
        add_step_noise(self, self.noise_multiplier * self.max_grad_norm)
