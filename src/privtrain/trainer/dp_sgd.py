"""The DP-SGD loop on tensors (Abadi et al. 2016, "Deep Learning with Differential Privacy").

Built from Opacus' parts so the sample rate is ours: q = logical batch / training
rows, Poisson sampling through ``DPDataLoader``, per-sample gradients through
``GradSampleModule``, clipping and Gaussian noise through ``DPOptimizer`` over
SGD (momentum, Nesterov) or Adam, physical batches through
``BatchMemoryManager``, and ε through the chosen accountant hooked to every
logical step. Checkpoints after every epoch hold everything a new process needs
to resume: parameters, optimizer state, accountant history, RNG states, and
the adaptive clip bound. σ may follow a noise schedule
(:mod:`privtrain.trainer.noise_schedule`), C an adaptive one
(:mod:`privtrain.trainer.adaptive_clipping`); forward and loss may run under
bf16 autocast.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.errors import FailedPrecondition, InvalidInput, PrivtrainError
from privtrain.trainer.accounting import (
    EpsilonTracker,
    accountant_epsilon,
    accountant_state,
    restore_accountant,
)
from privtrain.trainer.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from privtrain.trainer.noise_schedule import NoiseSchedule, epoch_shape, plan_noise
from privtrain.trainer.private_wrapping import set_clip_bound, wrap_for_dp
from privtrain.trainer.spec import TrainingSpec


class JobCancelled(PrivtrainError):
    """The job was asked to stop between two steps."""

    grpc_code = "CANCELLED"


@dataclass(frozen=True)
class StepReport:
    """One logical DP-SGD step.

    ``loss`` is the mean loss over the step's samples, or None for an empty
    Poisson batch (which is still a step: noise added, ε advanced).
    ``samples_per_s`` is samples / wall seconds of the step; ``epsilon`` an
    upper bound of ε spent so far (see :class:`EpsilonTracker`), exact at the
    end of every epoch.
    """

    step: int
    total_steps: int
    epoch: int
    loss: float | None
    batch_size: int
    samples_per_s: float
    epsilon: float


class Reporter(Protocol):
    """Receives progress from the loop."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_step(self, report: StepReport) -> None: ...

    def on_epoch(self, epoch: int, test_accuracy: float, epsilon: float) -> None: ...


@dataclass(frozen=True)
class LoopResult:
    """What the loop achieved: ε at ``delta`` after ``steps`` steps, last test accuracy.

    ``noise_multiplier`` is σ of the first step (the largest of a decaying schedule).
    """

    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    test_accuracy: float
    final_loss: float
    model: nn.Module


MAX_STEPS = 1_000_000


def schedule(spec: TrainingSpec, train_rows: int) -> tuple[float, int, int]:
    """(sample_rate, steps_per_epoch, total_steps) of ``spec`` on ``train_rows`` rows.

    Raises
    ------
    InvalidInput
        The logical batch exceeds the training rows, or the job would take more
        than :data:`MAX_STEPS` steps.
    """
    if spec.batch_size > train_rows:
        raise InvalidInput(f"batch_size {spec.batch_size} exceeds the {train_rows} training rows")
    sample_rate = spec.batch_size / train_rows
    steps_per_epoch = int(1 / sample_rate)
    total_steps = spec.epochs * steps_per_epoch
    if total_steps > MAX_STEPS:
        raise InvalidInput(
            f"{spec.epochs} epochs of {steps_per_epoch} steps make {total_steps:,} steps; "
            f"the limit is {MAX_STEPS:,}"
        )
    return sample_rate, steps_per_epoch, total_steps


def preflight(spec: TrainingSpec, train_rows: int) -> None:
    """Checks made at submission, before any ε is reserved: schedule and reachable ε.

    A calibration is checked with the RDP accountant, which is fast and never
    tighter than PRV: a target RDP can reach, PRV reaches too.

    Raises
    ------
    InvalidInput
        Bad schedule, no noise multiplier reaches the target ε, or adaptive
        clipping's count noise is too small for the calibrated σ.
    """
    sample_rate, steps_per_epoch, _ = schedule(spec, train_rows)
    plan_noise(spec, sample_rate, steps_per_epoch,
               accountant="rdp" if spec.noise_multiplier is None else None)


def noise_for(spec: TrainingSpec, sample_rate: float, total_steps: int) -> float:
    """σ of the job's first step: the spec's own (checked against the target) or calibrated to it.

    Raises
    ------
    InvalidInput
        A given ``noise_multiplier`` whose ε after ``total_steps`` exceeds the target.
    """
    return plan_noise(spec, sample_rate, total_steps // spec.epochs).scale


def _optimizer(spec: TrainingSpec, params: Any) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.learning_rate, momentum=spec.momentum,
                           nesterov=spec.nesterov, weight_decay=spec.weight_decay)


def _lr_scheduler(spec: TrainingSpec, optimizer: torch.optim.Optimizer,
                  total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per logical step; schedules change only the step size, never the privacy analysis."""
    if spec.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if spec.lr_schedule == "step":
        # x0.1 at 50% and 75% of training, the classic step schedule.
        marks = sorted({max(1, total_steps // 2), max(1, 3 * total_steps // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=0.1)
    return None


def physical_step(module: nn.Module, optimizer: DPOptimizer, criterion: nn.Module,
                  xb: torch.Tensor, yb: torch.Tensor, device: torch.device, *,
                  autocast_dtype: torch.dtype | None = None) -> tuple[float, int]:
    """Forward, backward and ``optimizer.step()`` of one physical batch.

    The DP optimizer only updates the parameters on the last physical batch of
    a logical one (BatchMemoryManager tells it which). Returns (mean loss × samples,
    samples); an empty Poisson batch contributes (0.0, 0) but still steps.

    ``autocast_dtype`` (``torch.bfloat16``) runs forward and loss under
    ``torch.autocast``; per-sample gradients are cast to their parameter's dtype
    (float32) before the optimizer takes their norms, clips and adds noise.
    """
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        loss = criterion(module(xb), yb)
    with warnings.catch_warnings():
        # Opacus' hooks on the first layer fire without input grads, by design.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    if autocast_dtype is not None:
        _grad_samples_to_param_dtype(optimizer)
    n = len(yb)
    contribution = float(loss.detach()) * n if n else 0.0
    optimizer.step()
    return contribution, n


def run_dp_sgd(
    spec: TrainingSpec,
    model: nn.Module,
    train_data: TensorDataset,
    evaluate: Callable[[nn.Module], float],
    out_dir: Path,
    reporter: Reporter,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
    device: torch.device | None = None,
    max_physical_batch_size: int | None = None,
    clipping_mode: str | None = None,
) -> LoopResult:
    """Train ``model`` on ``train_data`` with DP-SGD for ``spec.epochs`` epochs.

    Parameters
    ----------
    spec : TrainingSpec
        Privacy and optimisation settings.
    model : nn.Module
        Opacus-compatible model, already on ``device``; inputs ``(batch, ...)``,
        outputs ``(batch, classes)`` logits.
    train_data : TensorDataset
        ``(features, labels)``; its length is the n in q = batch_size / n.
    evaluate : callable
        Held-out accuracy of the (unwrapped) model, called after every epoch.
    out_dir : Path
        Checkpoints go to ``out_dir/checkpoints/epoch-NNNN.{safetensors,json}``.
    reporter : Reporter
    should_stop : callable
        Polled before every physical batch; True raises :class:`JobCancelled`.
    resume : bool
        Continue from the latest checkpoint in ``out_dir`` (same spec required).
    max_physical_batch_size : int, optional
        Cap below the spec's (from the memory estimate); the logical batch is unchanged.
    clipping_mode : {"ghost", "hooks"}, optional
        Per-sample clipping implementation of flat and adaptive clipping; default: the
        fastest correct one for the model (per_layer clipping always runs in hooks mode).

    Raises
    ------
    InvalidInput
        Batch larger than the data, or a noise multiplier above the target ε.
    FailedPrecondition
        Resume asked without a checkpoint or with another spec; the final
        accounting check failed.
    JobCancelled
        ``should_stop`` returned True.
    """
    device = device or torch.device("cpu")
    n_train = len(train_data)
    sample_rate, steps_per_epoch, total_steps = schedule(spec, n_train)
    checkpoints = out_dir / "checkpoints"
    state: dict[str, Any] | None = None
    if resume:
        path = latest_checkpoint(checkpoints)
        if path is None:
            raise FailedPrecondition(f"no checkpoint to resume from in {checkpoints}")
        tensors, state = load_checkpoint(path)
        if state["spec"] != spec.to_dict():
            raise FailedPrecondition("the checkpoint was written for another job spec")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        shape = epoch_shape(spec.noise_schedule, spec.noise_gamma, spec.noise_step_epochs, spec.epochs)
        plan = NoiseSchedule(float(state["noise_multiplier"]), shape, sample_rate, steps_per_epoch)
    else:
        plan = plan_noise(spec, sample_rate, steps_per_epoch)
    sigma = plan.scale
    autocast_dtype = _autocast_dtype(spec, device)

    sampling_gen = torch.Generator().manual_seed(spec.seed)
    noise_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    # Default: the fastest correct per-sample clipping for this model (book-keeping ghost
    # clipping when every trainable layer has a norm kernel, Opacus hooks otherwise).
    params = ([p for p in model.parameters() if p.requires_grad] if spec.clipping == "per_layer"
              else model.parameters())
    gsm, optimizer, clipping_mode = wrap_for_dp(
        spec, model, _optimizer(spec, params), noise_multiplier=sigma, generator=noise_gen,
        mode=clipping_mode,
    )
    scheduler = _lr_scheduler(spec, optimizer.original_optimizer, total_steps)
    accountant = create_accountant(mechanism=spec.accountant)
    step, first_epoch = 0, 1
    if state is not None:
        optimizer.original_optimizer.load_state_dict(_optimizer_state(state, tensors, gsm))
        accountant = restore_accountant(state["accountant"])
        sampling_gen.set_state(torch.tensor(state["sampling_rng"], dtype=torch.uint8))
        noise_gen.set_state(torch.tensor(state["noise_rng"], dtype=torch.uint8))
        if scheduler is not None:
            scheduler.load_state_dict(state["lr_scheduler"])
        step, first_epoch = int(state["step"]), int(state["epoch"]) + 1
        if spec.clipping == "adaptive":
            set_clip_bound(gsm, optimizer, float(state["max_grad_norm"]))
    # Opacus' hook records optimizer.noise_multiplier: the effective σ of the step just taken
    # (adaptive clipping noises the gradient with σ_g derived from it, not with σ itself).
    accountant_hook = accountant.get_optimizer_hook_fn(sample_rate=sample_rate)
    logical_steps = [step]
    optimizer.noise_multiplier = plan.sigma_at(step + 1)

    def on_logical_step(opt: DPOptimizer) -> None:
        accountant_hook(opt)
        logical_steps[0] += 1
        opt.noise_multiplier = plan.sigma_at(logical_steps[0] + 1)

    optimizer.attach_step_hook(on_logical_step)
    loader = DPDataLoader(train_data, sample_rate=sample_rate, generator=sampling_gen)
    tracker = EpsilonTracker(spec.accountant, sigma, sample_rate, total_steps, spec.target_delta,
                             steps_per_epoch=steps_per_epoch, history=plan.history)
    criterion = nn.CrossEntropyLoss()
    physical = min(spec.max_physical_batch_size, max_physical_batch_size or spec.max_physical_batch_size)
    reporter.on_start({
        "max_physical_batch_size": physical, "clipping_mode": clipping_mode,
        "noise_multiplier": sigma, "sample_rate": sample_rate, "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch, "train_rows": n_train, "device": str(device),
        "resumed_at_step": step, "noise_schedule": spec.noise_schedule,
        "precision": spec.precision,
    })
    # Only the eval forward is compiled: compiling the training step with the clipping hooks
    # showed no consistent gain (bench/compile_speed.py).
    eval_model = torch.compile(gsm._module) if spec.compile else gsm._module

    last_loss, test_acc = float("nan"), float("nan")
    for epoch in range(first_epoch, spec.epochs + 1):
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical,
                                optimizer=optimizer) as batches:
            loss_sum, samples, step_start = 0.0, 0, time.perf_counter()
            for xb, yb in batches:
                if should_stop():
                    raise JobCancelled(f"cancelled before step {step + 1}")
                batch_loss, batch_samples = physical_step(gsm, optimizer, criterion, xb, yb, device,
                                                          autocast_dtype=autocast_dtype)
                loss_sum += batch_loss
                samples += batch_samples
                if logical_steps[0] == step:
                    continue  # a physical batch inside a larger logical one
                step = logical_steps[0]
                if scheduler is not None:
                    scheduler.step()
                elapsed = max(time.perf_counter() - step_start, 1e-9)
                mean_loss = loss_sum / samples if samples else None
                if mean_loss is not None and math.isfinite(mean_loss):
                    last_loss = mean_loss
                reporter.on_step(StepReport(
                    step=step, total_steps=total_steps, epoch=epoch, loss=mean_loss,
                    batch_size=samples, samples_per_s=samples / elapsed, epsilon=tracker.after(step),
                ))
                loss_sum, samples, step_start = 0.0, 0, time.perf_counter()
        test_acc = evaluate(eval_model)
        epsilon_now = tracker.after(step)
        reporter.on_epoch(epoch, test_acc, epsilon_now)
        save_checkpoint(
            checkpoints, epoch=epoch, model_state=gsm._module.state_dict(),
            optimizer=optimizer.original_optimizer,
            state={
                "epoch": epoch, "step": step, "epsilon": epsilon_now, "delta": spec.target_delta,
                "noise_multiplier": sigma, "sample_rate": sample_rate,
                "max_grad_norm": float(optimizer.max_grad_norm)
                if spec.clipping == "adaptive" else spec.max_grad_norm,
                "accountant": accountant_state(accountant), "spec": spec.to_dict(),
                "sampling_rng": sampling_gen.get_state().tolist(),
                "noise_rng": noise_gen.get_state().tolist(),
                "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            },
        )

    epsilon = accountant_epsilon(accountant, spec.target_delta)
    if step != total_steps or epsilon > spec.target_epsilon:
        raise FailedPrecondition(
            f"accounting check failed: {step}/{total_steps} steps, ε={epsilon:.6f} "
            f"(target {spec.target_epsilon})"
        )
    return LoopResult(epsilon=epsilon, noise_multiplier=sigma, sample_rate=sample_rate, steps=step,
                      test_accuracy=test_acc, final_loss=last_loss, model=gsm._module)


def _grad_samples_to_param_dtype(optimizer: DPOptimizer) -> None:
    # Hooks mode computes per-sample gradients in the autocast dtype; norms, clipping and
    # noise in bfloat16 would lose precision the privacy analysis assumes.
    for p in optimizer.params:
        sample = getattr(p, "grad_sample", None)
        if isinstance(sample, torch.Tensor) and sample.dtype != p.dtype:
            p.grad_sample = sample.to(p.dtype)
        elif isinstance(sample, list):
            p.grad_sample = [s.to(p.dtype) for s in sample]


def _autocast_dtype(spec: TrainingSpec, device: torch.device) -> torch.dtype | None:
    if spec.precision != "bf16":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FailedPrecondition("precision 'bf16' needs a GPU with bfloat16 support")
    return torch.bfloat16


def _optimizer_state(state: dict[str, Any], tensors: dict[str, torch.Tensor],
                     gsm: nn.Module) -> dict[str, Any]:
    """Rebuild a torch optimizer state dict from a checkpoint's JSON and tensors."""
    saved = state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = tensor
    for index, scalars in saved["scalars"].items():
        per_param.setdefault(int(index), {}).update(scalars)
    return {"state": per_param, "param_groups": saved["param_groups"]}
