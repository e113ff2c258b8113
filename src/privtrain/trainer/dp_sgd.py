"""The DP-SGD loop on tensors (Abadi et al. 2016, "Deep Learning with Differential Privacy").

Built from Opacus' parts so the sample rate is ours: q = logical batch / published
training rows (the job's :class:`~privtrain.trainer.plan.JobPlan`), Poisson sampling
and Gaussian noise from the job's secret randomness
(:mod:`privtrain.trainer.dp_randomness`), per-sample gradients through
``GradSampleModule`` or ghost clipping, clipping and noise through a DP optimizer
over SGD (momentum, Nesterov) or Adam, physical batches through
``BatchMemoryManager``, and ε through the chosen accountant hooked to every
logical step. After each epoch the test accuracy is computed; where the plan
releases it, the count of correct predictions gets Gaussian noise (sensitivity 1)
and the release enters the accountant. Checkpoints after every epoch hold
everything a new process needs to resume: parameters, optimizer state, accountant
history, the randomness' stream counters (the key stays in its own 0600 file), and
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from opacus.accountants import create_accountant
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
from privtrain.trainer.dp_randomness import DPRandomness, Stream
from privtrain.trainer.plan import JobPlan
from privtrain.trainer.private_wrapping import set_clip_bound, wrap_for_dp
from privtrain.trainer.sampling import SecurePoissonSampler, poisson_loader
from privtrain.trainer.secure_noise import NoiseObserver
from privtrain.trainer.spec import TrainingSpec

# Evaluation: (model) -> (correct predictions, test rows), both exact.
Evaluate = Callable[[nn.Module], tuple[int, int]]


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

    def on_epoch(self, epoch: int, released_accuracy: float | None, exact_accuracy: float,
                 epsilon: float) -> None:
        """``released_accuracy`` is the DP release (None when this epoch releases none);
        ``exact_accuracy`` is for the operator only."""


@dataclass(frozen=True)
class LoopResult:
    """What the loop achieved: ε at the plan's δ after ``steps`` steps and the releases.

    ``noise_multiplier`` is σ of the first step (the largest of a decaying schedule).
    ``test_accuracy`` is the last DP release (None if the job released none);
    ``exact_test_accuracy`` and ``final_loss`` are exact, for the operator only.
    """

    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    test_accuracy: float | None
    exact_test_accuracy: float
    final_loss: float
    model: nn.Module


def release_accuracy(correct: int, plan: JobPlan, randomness: DPRandomness, release: int) -> float:
    """The DP test accuracy: (correct + N(0, σ²)) / published test rows, clipped to [0, 1].

    Gaussian mechanism on a count of sensitivity 1 (one row changes it by at most 1);
    dividing by the public count and clipping are post-processing. ``release`` numbers
    the job's releases (stream RELEASE), so a resumed job repeats a repeated release.
    """
    noise = float(randomness.standard_normal(Stream.RELEASE, release, 1, dtype=torch.float64)[0])
    return min(1.0, max(0.0, (correct + plan.accuracy_noise * noise) / max(1, plan.test_rows)))


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


@dataclass(frozen=True)
class Ranks:
    """This process's place in a job: rank ``rank`` of ``world_size`` training processes.

    With one process (the default) every collective is the identity; with several, the
    ranks are a ``torch.distributed`` group (see :mod:`privtrain.trainer.distributed`):
    each samples its own share of the rows, rank 0 alone draws the noise, evaluates,
    releases, accounts and checkpoints, and the ranks agree on stopping after every step.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the one that reports)."""
        return self.rank == 0

    def total(self, values: list[float], device: torch.device) -> list[float]:
        """Sum of ``values`` over all ranks (one all-reduce; the values themselves with one rank)."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]


@dataclass(frozen=True)
class CheckpointCadence:
    """How often a checkpoint is written inside an epoch (every epoch's end has one too).

    Attributes
    ----------
    every_s : float
        After the first logical step that ends this many seconds (wall clock) after the
        last checkpoint; 0 never by time.
    every_steps : int
        After every this many logical steps; 0 never by steps.

    A crash loses at most the steps since the last checkpoint, not a whole epoch.
    """

    every_s: float = 30.0
    every_steps: int = 0


@dataclass(frozen=True)
class LoopOptions:
    """What :func:`run_dp_sgd` passes on to every rank's :func:`train_loop` (picklable)."""

    resume: bool = False
    max_physical_batch_size: int | None = None
    clipping_mode: str | None = None
    private: bool = True
    checkpoint_every: CheckpointCadence = field(default_factory=lambda: CheckpointCadence())


def run_dp_sgd(
    spec: TrainingSpec,
    model: nn.Module,
    train_data: TensorDataset,
    evaluate: Evaluate,
    out_dir: Path,
    reporter: Reporter,
    *,
    plan: JobPlan,
    randomness: DPRandomness | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
    device: torch.device | None = None,
    max_physical_batch_size: int | None = None,
    clipping_mode: str | None = None,
    noise_observer: NoiseObserver | None = None,
    private: bool = True,
    checkpoint_every: CheckpointCadence | None = None,
) -> LoopResult:
    """Train ``model`` on ``train_data`` with DP-SGD for ``spec.epochs`` epochs, in
    ``spec.world_size`` processes (one loop, :func:`train_loop`, for every world size).

    Parameters
    ----------
    spec : TrainingSpec
        Privacy and optimisation settings.
    model : nn.Module
        Opacus-compatible model, already on ``device``; inputs ``(batch, ...)``,
        outputs ``(batch, classes)`` logits. It receives the final parameters.
    train_data : TensorDataset
        ``(features, labels)``, the training rows.
    evaluate : callable
        ``model -> (correct, rows)`` on the held-out rows, called after every epoch (on
        rank 0; picklable when ``spec.world_size`` > 1).
    out_dir : Path
        Checkpoints go to ``out_dir/checkpoints/epoch-NNNN.{safetensors,json}`` at every
        epoch's end and ``step-NNNNNNNN.*`` inside epochs (see ``checkpoint_every``), the
        randomness key to ``out_dir/dp-randomness.json`` (0600).
    reporter : Reporter
    plan : JobPlan
        The admitted plan (:func:`privtrain.trainer.plan.plan_job`): q and steps from
        the published row counts, σ of every step, the accuracy releases.
    randomness : DPRandomness, optional
        The job's secret randomness; default: the key saved in ``out_dir`` (required to
        resume), or a fresh one saved there.
    should_stop : callable
        Polled before every physical batch (one process) or logical step (several);
        True raises :class:`JobCancelled`.
    resume : bool
        Continue from the latest checkpoint in ``out_dir`` (same spec and plan required).
    max_physical_batch_size : int, optional
        Cap below the spec's (from the memory estimate); the logical batch is unchanged.
    clipping_mode : {"ghost", "hooks"}, optional
        Per-sample clipping implementation of flat and adaptive clipping; default: the
        fastest correct one for the model (per_layer clipping always runs in hooks mode).
    noise_observer : NoiseObserver, optional
        Sees every step's clipped sums before and after the noise (the privacy audit; one
        process only).
    private : bool
        False only for the privacy audit's check of itself (no noise; the caller
        disables clipping): nothing is accounted and the result's ε is infinite.
    checkpoint_every : CheckpointCadence, optional
        Checkpoints inside epochs (default: every 30 s of training).

    Raises
    ------
    InvalidInput
        Batch larger than the data, or a noise multiplier above the target ε.
    FailedPrecondition
        Resume asked without a checkpoint or with another spec or plan; the final
        accounting check failed; several processes ended with different parameters.
    JobCancelled
        ``should_stop`` returned True.
    """
    device = device or torch.device("cpu")
    checkpoints = out_dir / "checkpoints"
    if resume and latest_checkpoint(checkpoints) is None:
        raise FailedPrecondition(f"no checkpoint to resume from in {checkpoints}")
    # A resumed job must continue its own streams: a missing key is an error, not a new key.
    randomness = randomness or (DPRandomness.load(out_dir) if resume
                                else DPRandomness.load_or_create(out_dir))
    options = LoopOptions(resume=resume, max_physical_batch_size=max_physical_batch_size,
                          clipping_mode=clipping_mode, private=private,
                          checkpoint_every=checkpoint_every or CheckpointCadence())
    if spec.world_size > 1:
        if noise_observer is not None:
            raise InvalidInput("the privacy audit runs in one process (world_size 1)")
        from privtrain.trainer.distributed import run_ranks

        return run_ranks(spec, model, train_data, evaluate, out_dir, reporter, plan=plan,
                         randomness=randomness, should_stop=should_stop, device=device,
                         options=options)
    return train_loop(spec, model, train_data, evaluate, out_dir, reporter, plan=plan,
                      randomness=randomness, should_stop=should_stop, device=device,
                      options=options, noise_observer=noise_observer)


def train_loop(
    spec: TrainingSpec,
    model: nn.Module,
    train_data: TensorDataset,
    evaluate: Evaluate,
    out_dir: Path,
    reporter: Reporter,
    *,
    plan: JobPlan,
    randomness: DPRandomness,
    should_stop: Callable[[], bool],
    device: torch.device,
    options: LoopOptions,
    ranks: Ranks = Ranks(),
    noise_observer: NoiseObserver | None = None,
) -> LoopResult:
    """The DP-SGD loop of one process; :func:`run_dp_sgd` runs it once, or once per rank.

    Every rank runs the same steps: its own Poisson share of the rows (lane ``rank`` of
    the randomness), clipping, and one all-reduce of the clipped sums per logical step,
    to which rank 0 alone adds the noise (:func:`privtrain.trainer.secure_noise.add_step_noise`);
    so the update is (Σ clipped + N(0, σ²C²)) / B as with one process, and the privacy
    analysis is that one. Rank 0 reports, evaluates, releases, accounts and checkpoints.
    """
    resume = options.resume
    sample_rate, steps_per_epoch, total_steps = plan.sample_rate, plan.steps_per_epoch, plan.total_steps
    checkpoints = out_dir / "checkpoints"
    state: dict[str, Any] | None = None
    if resume:
        path = latest_checkpoint(checkpoints)
        if path is None:
            raise FailedPrecondition(f"no checkpoint to resume from in {checkpoints}")
        tensors, state = load_checkpoint(path)
        if state["spec"] != spec.to_dict() or state.get("plan") != plan.to_dict():
            raise FailedPrecondition("the checkpoint was written for another job spec or plan")
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    elif ranks.world_size > 1:
        for tensor in model.state_dict().values():  # every rank starts from rank 0's initialisation
            dist.broadcast(tensor, src=0)
    private = options.private
    schedule = plan.noise
    sigma = schedule.scale if private else 0.0
    autocast_dtype = _autocast_dtype(spec, device)

    # Default: the fastest correct per-sample clipping for this model (book-keeping ghost
    # clipping when every trainable layer has a norm kernel, Opacus hooks otherwise).
    params = ([p for p in model.parameters() if p.requires_grad] if spec.clipping == "per_layer"
              else model.parameters())
    gsm, optimizer, clipping_mode = wrap_for_dp(
        spec, model, _optimizer(spec, params), noise_multiplier=sigma, randomness=randomness,
        mode=options.clipping_mode,
    )
    optimizer.noise_observer = noise_observer  # type: ignore[attr-defined]
    scheduler = _lr_scheduler(spec, optimizer.original_optimizer, total_steps)
    accountant = create_accountant(mechanism=plan.accountant)
    step, first_epoch, done_in_epoch = 0, 1, 0
    if state is not None:
        optimizer.original_optimizer.load_state_dict(_optimizer_state(state, tensors, gsm))
        accountant = restore_accountant(state["accountant"])
        randomness.restore(state["randomness"])
        if scheduler is not None:
            scheduler.load_state_dict(state["lr_scheduler"])
        step, first_epoch = int(state["step"]), int(state["epoch"]) + 1
        # A within-epoch checkpoint: the rest of that epoch's steps come first.
        done_in_epoch = step - int(state["epoch"]) * steps_per_epoch
        if spec.clipping == "adaptive":
            set_clip_bound(gsm, optimizer, float(state["max_grad_norm"]))
    # Opacus' hook records optimizer.noise_multiplier: the effective σ of the step just taken
    # (adaptive clipping noises the gradient with σ_g derived from it, not with σ itself).
    accountant_hook = accountant.get_optimizer_hook_fn(sample_rate=sample_rate)
    logical_steps = [step]

    def sigma_at(index: int) -> float:
        return schedule.sigma_at(index) if private else 0.0

    optimizer.noise_multiplier = sigma_at(step + 1)

    def on_logical_step(opt: DPOptimizer) -> None:
        if private:
            accountant_hook(opt)
        logical_steps[0] += 1
        opt.noise_multiplier = sigma_at(logical_steps[0] + 1)

    optimizer.attach_step_hook(on_logical_step)
    loader = poisson_loader(train_data, sample_rate=sample_rate, steps=steps_per_epoch,
                            randomness=randomness,
                            rows=np.arange(ranks.rank, len(train_data), ranks.world_size),
                            lane=ranks.rank)
    tracker = EpsilonTracker(plan.accountant, sigma, sample_rate, total_steps, plan.delta,
                             steps_per_epoch=steps_per_epoch,
                             history=lambda steps: plan.history(steps, plan.releases_by(steps))) \
        if private and ranks.main else None
    criterion = nn.CrossEntropyLoss()
    physical = min(spec.max_physical_batch_size,
                   options.max_physical_batch_size or spec.max_physical_batch_size)
    reporter.on_start({
        "max_physical_batch_size": physical, "clipping_mode": clipping_mode,
        "noise_multiplier": sigma, "sample_rate": sample_rate, "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch, "train_rows": len(train_data), "device": str(device),
        "resumed_at_step": step, "noise_schedule": spec.noise_schedule,
        "precision": spec.precision, "world_size": ranks.world_size,
    })
    # Only the eval forward is compiled: compiling the training step with the clipping hooks
    # showed no consistent gain (bench/compile_speed.py).
    eval_model = torch.compile(gsm._module) if spec.compile else gsm._module

    last_loss, exact = float("nan"), float("nan")
    last_release: float | None = None if state is None else state.get("last_released_accuracy")
    sampler = loader.batch_sampler
    assert isinstance(sampler, SecurePoissonSampler)
    last_checkpoint = time.monotonic()

    def checkpoint(epoch_done: int, *, within_epoch: bool) -> None:
        nonlocal last_checkpoint
        save_checkpoint(
            checkpoints, epoch=epoch_done, model_state=gsm._module.state_dict(),
            optimizer=optimizer.original_optimizer, within_epoch=within_epoch,
            state={
                "epoch": epoch_done, "step": step,
                "epsilon": tracker.after(step) if tracker is not None else None,
                "delta": plan.delta, "noise_multiplier": sigma, "sample_rate": sample_rate,
                "max_grad_norm": float(optimizer.max_grad_norm)
                if spec.clipping == "adaptive" else spec.max_grad_norm,
                "accountant": accountant_state(accountant), "spec": spec.to_dict(),
                "plan": plan.to_dict(), "randomness": randomness.state(),
                "last_released_accuracy": last_release, "world_size": ranks.world_size,
                "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            },
        )
        last_checkpoint = time.monotonic()

    def checkpoint_due(epoch_step: int) -> bool:
        if epoch_step >= steps_per_epoch or not ranks.main:
            return False  # the epoch's own checkpoint follows
        every_s, every_steps = options.checkpoint_every.every_s, options.checkpoint_every.every_steps
        return bool((every_steps and step % every_steps == 0)
                    or (every_s and time.monotonic() - last_checkpoint >= every_s))

    for epoch in range(first_epoch, spec.epochs + 1):
        sampler.steps = steps_per_epoch - (done_in_epoch if epoch == first_epoch else 0)
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical,
                                optimizer=optimizer) as batches:
            loss_sum, samples, step_start = 0.0, 0, time.perf_counter()
            for xb, yb in batches:
                # Several ranks may only stop together, between logical steps (below).
                if ranks.world_size == 1 and should_stop():
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
                total_loss, total_samples, stopping = ranks.total(
                    [loss_sum, samples, float(should_stop())], device)
                if ranks.main:
                    elapsed = max(time.perf_counter() - step_start, 1e-9)
                    mean_loss = total_loss / total_samples if total_samples else None
                    if mean_loss is not None and math.isfinite(mean_loss):
                        last_loss = mean_loss
                    reporter.on_step(StepReport(
                        step=step, total_steps=total_steps, epoch=epoch, loss=mean_loss,
                        batch_size=int(total_samples), samples_per_s=total_samples / elapsed,
                        epsilon=tracker.after(step) if tracker is not None else math.inf,
                    ))
                if stopping and step < total_steps:
                    raise JobCancelled(f"cancelled before step {step + 1}")
                if checkpoint_due(step - (epoch - 1) * steps_per_epoch):
                    checkpoint(epoch - 1, within_epoch=True)
                loss_sum, samples, step_start = 0.0, 0, time.perf_counter()
        if not ranks.main:
            continue
        correct, rows = evaluate(eval_model)
        exact = correct / max(1, rows)
        released = None
        if epoch in plan.release_epochs:
            released = release_accuracy(correct, plan, randomness, plan.release_epochs.index(epoch))
            last_release = released
            if private:
                accountant.history.append((plan.accuracy_noise, 1.0, 1))
        epsilon_now = tracker.after(step) if tracker is not None else math.inf
        # The checkpoint first: a release that reached anyone always has one behind it, so a
        # resumed job never releases the same epoch twice.
        checkpoint(epoch, within_epoch=False)
        reporter.on_epoch(epoch, released, exact, epsilon_now)

    if not private:
        return LoopResult(epsilon=math.inf, noise_multiplier=0.0, sample_rate=sample_rate, steps=step,
                          test_accuracy=None, exact_test_accuracy=exact, final_loss=last_loss,
                          model=gsm._module)
    epsilon = accountant_epsilon(accountant, plan.delta) if ranks.main else math.nan
    if ranks.main and (step != total_steps or epsilon > spec.target_epsilon):
        raise FailedPrecondition(
            f"accounting check failed: {step}/{total_steps} steps, ε={epsilon:.6f} "
            f"(target {spec.target_epsilon})"
        )
    return LoopResult(epsilon=epsilon, noise_multiplier=sigma, sample_rate=sample_rate, steps=step,
                      test_accuracy=last_release, exact_test_accuracy=exact, final_loss=last_loss,
                      model=gsm._module)


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
