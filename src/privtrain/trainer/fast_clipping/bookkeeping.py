"""Ghost clipping with book-keeping: DP-SGD's clipped gradient sum in one backward pass.

Opacus' ghost clipping (``GradSampleModuleFastGradientClipping``) runs backward
twice: once for per-sample norms, once more on the loss re-weighted by the
clipping coefficients. Bu et al. 2023 ("Differentially Private Optimization on
Large Model at Small Cost", book-keeping) keep what the first pass already saw:
each layer's input ``a`` and the gradient ``g`` of the loss at its output. From
those the per-sample norms follow without per-sample gradients (the kernels in
this package), and then the clipped sum ``sum_i c_i * grad_i`` is one product
per layer, e.g. ``(c * g)^T a`` for a Linear layer: the same work as the weight
gradient of non-private training.

:class:`BookKeepingModule` does this behind an unchanged training loop::

    module = BookKeepingModule(model, max_grad_norm=C, loss_reduction="mean")
    loss = criterion(module(x), y)      # mean over the batch, as with Opacus
    loss.backward()                     # p.grad = clipped sum over the batch
    dp_optimizer.step()                 # noise, / expected batch size, SGD

How: each trainable layer runs its own forward with *detached* parameters, so
autograd computes input gradients only (no weight gradients that would be
thrown away), and a hook on the layer's output keeps ``g``. When the backward
pass ends, a callback computes the norms, the coefficients
``min(1, C / (norm + 1e-6))`` (Opacus' formula) and writes the clipped sums into
``p.grad``. The privacy unit is one sample: row ``i`` of the batch dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from privtrain.errors import InvalidInput
from privtrain.trainer.fast_clipping.kernels import kernel_for, unsupported_reason

ForwardFn = Callable[[Any, torch.Tensor], torch.Tensor]


def _d(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.detach()


def _linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.weight.detach(), _d(m.bias))


def _conv(m: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return m._conv_forward(x, m.weight.detach(), _d(m.bias))


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, m.normalized_shape, _d(m.weight), _d(m.bias), m.eps)


def _group_norm(m: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    return F.group_norm(x, m.num_groups, _d(m.weight), _d(m.bias), m.eps)


def _embedding(m: nn.Embedding, x: torch.Tensor) -> torch.Tensor:
    # A detached weight shares storage, so max_norm still renormalizes the real rows.
    return F.embedding(
        x, m.weight.detach(), m.padding_idx, m.max_norm, m.norm_type, m.scale_grad_by_freq, m.sparse
    )


# Forward of each supported layer type with its parameters detached.
DETACHED_FORWARD: dict[type[nn.Module], ForwardFn] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.Embedding: _embedding,
}


def trainable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every module that directly owns a parameter with ``requires_grad``."""
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            yield name, module


def unsupported_layers(model: nn.Module) -> list[str]:
    """``"name (Type): reason"`` for each trainable layer book-keeping cannot clip; empty when all can."""
    problems = []
    for name, module in trainable_layers(model):
        reason = unsupported_reason(module)
        if reason is None and type(module) not in DETACHED_FORWARD:
            reason = f"no detached forward for {type(module).__name__}"
        if reason is not None:
            problems.append(f"{name or '<root>'} ({type(module).__name__}): {reason}")
    return problems


def _zero_rows(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``values`` ``(batch, ...)`` with the rows where ``keep`` ``(batch,)`` is False set to 0."""
    mask = keep.to(values.device).view(-1, *([1] * (values.dim() - 1)))
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


@dataclass
class _Record:
    """What one layer saw in the current forward and backward pass."""

    activation: torch.Tensor
    backprops: torch.Tensor | None = None
    state: Any = field(default=None)


class BookKeepingModule(nn.Module):
    """Wraps a model so ``loss.backward()`` leaves the clipped per-sample gradient sum in ``p.grad``.

    Parameters
    ----------
    module : nn.Module
        The model; every trainable layer must be a Linear, Conv1d, Conv2d,
        LayerNorm, GroupNorm or Embedding (see :func:`unsupported_layers`), used
        once per forward pass, with the batch as the first dimension of its input.
    max_grad_norm : float
        C: each sample's gradient (all parameters together) is scaled to norm ``<= C``.
    loss_reduction : {"mean", "sum"}
        How the loss reduces per-sample losses over the batch; ``"mean"``
        divides by the physical batch size (the gradients are rescaled before clipping).

    Attributes
    ----------
    per_sample_gradient_norms : Tensor or None
        ``(batch,)`` norms of the last backward pass, before clipping. Not private:
        for tests and debugging only.

    Raises
    ------
    InvalidInput
        A trainable layer has no kernel, or uses a configuration without a
        per-sample decomposition; the message names each one.

    Notes
    -----
    Use it with :class:`~privtrain.trainer.fast_clipping.optimizer.BookKeepingDPOptimizer`
    (or Opacus' ``DPOptimizerFastGradientClipping``) with the same ``max_grad_norm``:
    those add noise to ``p.grad`` and divide by the expected batch size, without clipping again.
    Only one backward pass per forward pass: the saved activations are released when it ends.
    """

    def __init__(self, module: nn.Module, *, max_grad_norm: float, loss_reduction: str = "mean") -> None:
        super().__init__()
        if loss_reduction not in ("mean", "sum"):
            raise InvalidInput(f"loss_reduction must be 'mean' or 'sum', not {loss_reduction!r}")
        if max_grad_norm <= 0:
            raise InvalidInput(f"max_grad_norm must be positive, not {max_grad_norm}")
        problems = unsupported_layers(module)
        if problems:
            raise InvalidInput("ghost clipping cannot handle: " + "; ".join(problems))
        self._module = module
        self.max_grad_norm = float(max_grad_norm)
        self.loss_reduction = loss_reduction
        self.per_sample_gradient_norms: torch.Tensor | None = None
        self._layers = [m for _, m in trainable_layers(module)]
        self._records: dict[nn.Module, _Record] = {}
        self._callback_queued = False
        for layer in self._layers:
            self._install(layer)

    # -- wiring -------------------------------------------------------------------------------

    def _install(self, layer: nn.Module) -> None:
        detached = DETACHED_FORWARD[type(layer)]
        original = type(layer).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not (layer.training and torch.is_grad_enabled()):
                return original(layer, x)  # type: ignore[no-any-return]
            if layer in self._records:
                raise NotImplementedError(
                    f"{type(layer).__name__} used twice in one forward pass (tied or reused "
                    "parameters); ghost clipping needs one use per layer, use hooks mode"
                )
            y = detached(layer, x)
            if not y.requires_grad:
                y.requires_grad_()  # first layer: nothing upstream needs a gradient
            record = _Record(activation=x.detach())
            self._records[layer] = record
            y.register_hook(lambda g: self._capture(record, g))
            return y

        layer.forward = forward  # type: ignore[method-assign]

    def remove(self) -> nn.Module:
        """Restore the model's own forward methods and return it."""
        for layer in self._layers:
            if "forward" in layer.__dict__:
                del layer.forward
        self._records.clear()
        return self._module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward; starts a new pass (activations of an unfinished one are dropped)."""
        self._records.clear()
        return self._module(*args, **kwargs)

    def _capture(self, record: _Record, g: torch.Tensor) -> None:
        record.backprops = g.detach() if record.backprops is None else record.backprops + g.detach()
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)

    # -- clipping -----------------------------------------------------------------------------

    def _finish_backward(self) -> None:
        self._callback_queued = False
        with torch.no_grad():
            self._clip_and_sum()

    def _clip_and_sum(self) -> None:
        batch = len(next(iter(self._records.values())).activation) if self._records else 0
        # An empty (Poisson) batch contributes nothing; the optimizer still adds noise.
        seen = [(m, r) for m, r in self._records.items() if r.backprops is not None and batch]
        # With a mean loss the captured gradients are 1/batch of the per-sample ones. Norms are
        # quadratic and clipped sums linear in them, so the factor goes into those, not into g.
        scale = float(batch) if self.loss_reduction == "mean" else 1.0
        squared: torch.Tensor | None = None
        for layer, rec in seen:
            assert rec.backprops is not None
            kernel = kernel_for(layer)
            assert kernel is not None
            norms, rec.state = kernel.norms(layer, [rec.activation], rec.backprops)
            for value in norms.values():
                squared = value.float() if squared is None else squared + value.float()
        if squared is None:
            norms_total = torch.zeros(batch)
            coef = torch.zeros(batch)
            seen = []
        else:
            norms_total = squared.sqrt() * scale
            coef = (self.max_grad_norm / (norms_total + 1e-6)).clamp(max=1.0) * scale
            finite = norms_total.isfinite()
            if not bool(finite.all()):
                # A sample whose gradient is NaN or infinite contributes nothing (norm 0 ≤ C):
                # otherwise the sum, and the released parameters, would say it was there.
                coef = torch.where(finite, coef, torch.zeros_like(coef))
                norms_total = torch.where(finite, norms_total, torch.zeros_like(norms_total))
                for layer, rec in seen:
                    assert rec.backprops is not None
                    rec.activation = _zero_rows(rec.activation, finite)
                    rec.backprops = _zero_rows(rec.backprops, finite)
                    _, rec.state = kernel_for(layer).norms(  # type: ignore[union-attr]
                        layer, [rec.activation], rec.backprops)
        self.per_sample_gradient_norms = norms_total
        for layer, rec in seen:
            kernel = kernel_for(layer)
            assert kernel is not None and rec.backprops is not None
            grads = kernel.clipped_sum(layer, [rec.activation], rec.backprops, coef, rec.state)
            for name, grad in grads.items():
                param = getattr(layer, name)
                grad = grad.to(param.dtype).view_as(param)
                param.grad = grad if param.grad is None else param.grad + grad
        for layer in self._layers:
            for param in layer.parameters(recurse=False):
                if param.requires_grad and param.grad is None:
                    param.grad = torch.zeros_like(param)
        self._records.clear()
