"""Checks a model must pass before a job may reserve privacy budget.

1. Size: at most :data:`MAX_PARAMETERS`, inspected on the ``meta`` device so a
   huge request allocates nothing.
2. Opacus' ``ModuleValidator`` (strict): BatchNorm, in-place activations,
   plain LSTM... are refused naming the module, or replaced when the spec asks
   for ``fix_model`` (BatchNorm → GroupNorm, in-place → out-of-place,
   LSTM → DPLSTM).
3. A dry run on two samples of the dataset's schema through Opacus'
   ``GradSampleModule``: every trainable parameter must get a per-sample
   gradient whose first dimension is the batch; parameters the forward never
   uses are refused by name (or frozen with ``freeze_unused``); tied parameters
   (one tensor reached under two names) are refused; the output must be
   ``(batch, n_classes)`` logits.
4. A memory estimate that caps the physical batch to what fits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from privtrain.errors import InvalidInput, shown
from privtrain.trainer.fast_clipping import pick_clipping_mode
from privtrain.trainer.models import build_model
from privtrain.trainer.spec import TrainingSpec

MAX_PARAMETERS = 20_000_000
# Memory the per-sample gradients and activations of one physical batch may use.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 2**30


@dataclass(frozen=True)
class PreparedModel:
    """A model that passed every check, its clipping mode, and the physical batch that fits."""

    model: nn.Module
    fixes: tuple[str, ...]
    frozen: tuple[str, ...]
    clipping_mode: str
    bytes_per_sample: int
    max_physical_batch_size: int


def _inplace_to_out_of_place(model: nn.Module) -> list[str]:
    """Turn ``inplace=True`` activations off; returns the modules changed."""
    changed = []
    for name, module in model.named_modules():
        if getattr(module, "inplace", False):
            module.inplace = False
            changed.append(name)
    return changed


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _tied_parameters(model: nn.Module) -> list[tuple[str, str]]:
    """Parameters shared by two different leaf modules (e.g. a tied embedding and head).

    Aliases inside one module (Opacus' DPLSTM registers its weights under two
    names) are not ties: one leaf module still computes each per-sample gradient.
    """
    owner: dict[int, str] = {}
    tied = []
    for module_name, module in _leaf_modules(model):
        for pname, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{pname}" if module_name else pname
            if id(param) in owner:
                tied.append((owner[id(param)], full))
            else:
                owner[id(param)] = full
    return tied


def _reused_modules(model: nn.Module, sample: torch.Tensor) -> dict[str, int]:
    """Leaf modules with parameters that one forward pass calls more than once."""
    calls: dict[str, int] = {}
    handles = []
    for name, module in _leaf_modules(model):
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(
                lambda _m, _i, _o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    return {name: n for name, n in calls.items() if n > 1}


def validate_modules(model: nn.Module, *, fix: bool) -> tuple[nn.Module, list[str]]:
    """Opacus ModuleValidator in strict mode, with the opt-in fix.

    Raises
    ------
    InvalidInput
        Unsupported modules remain (named, with what to do).
    """
    fixes: list[str] = []
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
    if fix:
        before = {n: type(m).__name__ for n, m in model.named_modules()}
        model = ModuleValidator.fix(model)
        after = {n: type(m).__name__ for n, m in model.named_modules()}
        fixes += [f"{n}: {before[n]} -> {after[n]}" for n in before if n in after and before[n] != after[n]]
        flat = [n for n in before if before[n] == "BatchNorm1d"]
        if flat:
            # GroupNorm over (batch, features) normalizes each feature alone: its output is 0.
            raise InvalidInput(
                f"BatchNorm1d module(s) {flat} have no working automatic replacement on "
                "(batch, features) inputs; use LayerNorm there instead"
            )
        fixes += [f"{n}: in-place -> out-of-place" for n in _inplace_to_out_of_place(model)]
        inplace = []
    problems = [str(e) for e in ModuleValidator.validate(model, strict=False)]
    problems += [f"module {n!r} computes in place, which breaks per-sample gradient hooks"
                 for n in inplace]
    if problems:
        raise InvalidInput("model is not DP-compatible: " + "; ".join(problems)
                           + " (set fix_model to replace BatchNorm with GroupNorm, LSTM with DPLSTM "
                             "and in-place activations with out-of-place ones)")
    return model, fixes


def dry_run(model: nn.Module, sample: torch.Tensor, *, freeze_unused: bool) -> tuple[list[str], bool]:
    """Forward and backward two samples through ``GradSampleModule``.

    Returns the names of the parameters it froze, and whether a layer with
    parameters runs more than once per forward pass (an RNN cell over time
    steps, a block applied twice): Opacus' hooks accumulate per-sample gradients
    over such reuse, ghost clipping does not, so such a model trains in hooks mode.

    Raises
    ------
    InvalidInput
        Tied parameters, parameters without a per-sample gradient (unless frozen),
        per-sample gradients whose first dimension is not the batch, or a forward
        that fails on the dataset's schema.
    """
    tied = _tied_parameters(model)
    if tied:
        raise InvalidInput("tied parameters cannot get per-sample gradients: "
                           + ", ".join(f"{a} is also {b}" for a, b in tied))
    try:
        reused = _reused_modules(model, sample)
    except Exception as exc:  # any shape or dtype error of a user-described model
        raise InvalidInput(f"model fails on two samples of the dataset's schema "
                           f"{tuple(sample.shape[1:])}: {exc}") from None
    batch = sample.shape[0]
    gsm = GradSampleModule(model, loss_reduction="sum")
    unused, wrong = [], []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            out = gsm(sample)
            out.float().sum().backward()
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            grad_sample = getattr(param, "grad_sample", None)
            if grad_sample is None:
                unused.append(name)
            elif grad_sample.shape[0] != batch:
                wrong.append(f"{name} {tuple(grad_sample.shape)}")
    except InvalidInput:
        raise
    except Exception as exc:  # any shape or dtype error of a user-described model
        raise InvalidInput(f"model fails on two samples of the dataset's schema "
                           f"{tuple(sample.shape[1:])}: {exc}") from None
    finally:
        gsm._close()
        for param in model.parameters():
            param.grad = None
    if wrong:
        raise InvalidInput(f"per-sample gradients whose first dimension is not the batch ({batch}): "
                           + ", ".join(wrong))
    if unused and not freeze_unused:
        raise InvalidInput(
            "parameters the forward never uses get no gradient and would break DP training: "
            + ", ".join(unused) + " (remove them, or set freeze_unused to freeze them)"
        )
    for name, param in model.named_parameters():
        if name in unused:
            param.requires_grad_(False)
    return unused, bool(reused)


def check_output_width(model: nn.Module, sample: torch.Tensor, n_classes: int, name: str) -> None:
    """The forward of ``sample`` ``(batch, ...)`` must give logits ``(batch, n_classes)``.

    Raises
    ------
    InvalidInput
        Another output (naming the model, its output shape and the class count), which
        the cross-entropy loss would only reject in the worker, after ε was reserved.
    """
    with torch.no_grad():
        out = model(sample)
    expected = (sample.shape[0], n_classes)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != expected:
        raise InvalidInput(f"model {shown(name)} outputs {shape} for a batch of {sample.shape[0]}; "
                           f"the dataset's target has {n_classes} classes, so its output must be "
                           f"{expected} (batch, classes)")


def bytes_per_sample(model: nn.Module, sample: torch.Tensor) -> int:
    """Estimated bytes one sample costs in a DP step: its per-sample gradient copy of every
    trainable parameter plus its activations, kept for the backward pass (float32 count)."""
    activations = 0

    def count(_module: nn.Module, _inp: object, out: object) -> None:
        nonlocal activations
        if isinstance(out, torch.Tensor):
            activations += out.numel() // max(1, out.shape[0] if out.dim() else 1)

    handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * (params + 2 * activations)


def _meta_bytes_per_sample(shell: nn.Module, input_shape: Sequence[int],
                           input_dtype: torch.dtype) -> int | None:
    """:func:`bytes_per_sample` of a model built on the ``meta`` device (shapes only, nothing
    computed or allocated); None when the forward fails there (the dry run then reports it)."""
    try:
        sample = torch.zeros(2, *input_shape, dtype=input_dtype, device="meta")
        return bytes_per_sample(shell, sample)
    except Exception:  # noqa: BLE001 - a shape error of a user-described model, reported later
        return None


def prepare_model(
    spec: TrainingSpec,
    input_shape: Sequence[int],
    n_classes: int,
    *,
    input_dtype: torch.dtype = torch.float32,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> PreparedModel:
    """Build ``spec``'s model for samples of ``input_shape`` and run every check.

    Raises
    ------
    InvalidInput
        Unknown model or options, too many parameters, unsupported modules,
        unused or tied parameters, an output other than ``(batch, n_classes)``, or no
        physical batch fits the memory budget.
    """
    options = spec.model_build_options
    with torch.device("meta"):
        shell = build_model(spec.model, input_shape, n_classes, options)
    count = sum(p.numel() for p in shell.parameters())
    if count > MAX_PARAMETERS:
        raise InvalidInput(f"model {shown(spec.model)} with options {shown(options)} has "
                           f"{count:,} parameters; the limit is {MAX_PARAMETERS:,}")
    # The activations too, before anything is allocated: a padding or an output size of
    # millions is cheap to declare and would take the server's memory in the dry run.
    planned = _meta_bytes_per_sample(shell, input_shape, input_dtype)
    if planned is not None and planned > memory_budget_bytes:
        raise InvalidInput(f"one sample needs about {planned:,} bytes for its per-sample "
                           f"gradients and activations, more than the {memory_budget_bytes:,} "
                           "byte budget")
    model, fixes = validate_modules(build_model(spec.model, input_shape, n_classes, options),
                                    fix=spec.fix_model)
    if input_dtype == torch.long:
        sample = torch.zeros(2, *input_shape, dtype=torch.long)
    else:
        sample = torch.rand(2, *input_shape, dtype=input_dtype)
    frozen, reuses_layers = dry_run(model, sample, freeze_unused=spec.freeze_unused)
    check_output_width(model, sample, n_classes, spec.model)
    clipping_mode = "hooks" if reuses_layers else pick_clipping_mode(model)
    per_sample = bytes_per_sample(model, sample)
    fits = memory_budget_bytes // max(1, per_sample)
    if fits < 1:
        raise InvalidInput(f"one sample needs about {per_sample:,} bytes for its per-sample "
                           f"gradients, more than the {memory_budget_bytes:,} byte budget")
    return PreparedModel(model=model, fixes=tuple(fixes), frozen=tuple(frozen),
                         clipping_mode=clipping_mode,
                         bytes_per_sample=per_sample,
                         max_physical_batch_size=int(min(spec.max_physical_batch_size, fits)))
