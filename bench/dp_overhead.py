"""DP-SGD overhead: throughput and peak memory of private vs non-private training.

For an MLP 784-512-512-10 and the Opacus MNIST CNN at batch 256 (synthetic
MNIST-shaped inputs: this measures speed, not accuracy), times one training step
of non-private momentum SGD and of DP-SGD in each clipping mode:

  opacus_hooks      Opacus GradSampleModule + DPOptimizer (per-sample gradients)
  opacus_ghost      Opacus ghost clipping as shipped (norms for Linear/Embedding only, two backward passes)
  opacus_ghost_ext  Opacus ghost clipping with privtrain's norm samplers registered (two backward passes)
  bookkeeping_seeded  the same book-keeping step with the noise of the first version: one
                    torch.normal draw per parameter from a generator seeded by the job's seed
                    (the "before" of the secret-randomness change; not private, kept here only
                    as the baseline)
  bookkeeping       privtrain's ghost clipping with book-keeping (one backward pass) and its
                    noise: four Gaussians per parameter from the job's CSPRNG key (AES-256-CTR),
                    the next step's drawn on a background thread

Throughput: every repetition times each mode for a block of steps, modes
interleaved (order rotated per repetition); the ratio of a mode's samples/s to
non-private samples/s of the same repetition is one paired ratio; the table
shows the median over repetitions. Memory: each (model, mode) runs in its own
subprocess; peak = the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs once the batch exists) minus the resident set at that
moment (CPU), or torch.cuda.max_memory_allocated minus the
allocation before the model was built (CUDA). Correctness: with noise 0, one
step's clipped, averaged gradient of each mode against opacus_hooks.

The last output line is one JSON object; the ``<model>_*`` keys describe the
fastest correct DP mode of each model, and ``<model>_secure_noise_ratio`` is the
throughput of ``bookkeeping`` over ``bookkeeping_seeded`` (median of the paired
per-repetition ratios): what the secret randomness costs.

    python bench/dp_overhead.py [--device auto|cpu|cuda] [--reps 7] [--block-seconds 0.5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.grad_sample import (
    GradSampleHooksFastGradientClipping,
    GradSampleModuleFastGradientClipping,
)
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.fast_clipping import prepare_private_training, register_norm_samplers
from privtrain.trainer.fast_clipping.optimizer import BookKeepingDPOptimizer

warnings.filterwarnings("ignore")
BATCH = 256
MODELS = ("mlp", "cnn")
DP_MODES = ("opacus_hooks", "opacus_ghost", "opacus_ghost_ext", "bookkeeping_seeded", "bookkeeping")
MODES = ("non_private", *DP_MODES)
STOCK_NORM_SAMPLERS = dict(GradSampleHooksFastGradientClipping.NORM_SAMPLERS)
register_norm_samplers()
EXTENDED_NORM_SAMPLERS = dict(GradSampleHooksFastGradientClipping.NORM_SAMPLERS)


class SeededNoiseBookKeepingOptimizer(BookKeepingDPOptimizer):
    """The first version's noise, as the baseline: one ``torch.normal`` per parameter from a
    seeded ``torch.Generator`` (predictable from the seed: not private)."""

    def add_noise(self) -> None:
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = _generate_noise(std=self.noise_multiplier * self.max_grad_norm,
                                    reference=p.summed_grad, generator=self.generator)
            p.summed_grad.add_(noise)
            p.grad = p.summed_grad.view_as(p)
            _mark_as_processed(p.summed_grad)


def use_norm_samplers(samplers: dict[Any, Any]) -> None:
    """Switch Opacus' ghost mode between its own norm samplers and ours (a class-level dict)."""
    GradSampleHooksFastGradientClipping.NORM_SAMPLERS.clear()
    GradSampleHooksFastGradientClipping.NORM_SAMPLERS.update(samplers)


def build_model(name: str) -> nn.Module:
    """``mlp``: 784-512-512-10 with ReLU; ``cnn``: the Opacus MNIST example network."""
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, 10),
        )
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, 2, padding=3), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def make_step(
    model: nn.Module, mode: str, *, noise: float, max_grad_norm: float, lr: float = 0.05
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of ``model`` in ``mode`` on a batch (x, y); mean cross-entropy loss."""
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    dp = {"noise_multiplier": noise, "max_grad_norm": max_grad_norm, "expected_batch_size": BATCH}
    if mode == "non_private":
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            sgd.zero_grad(set_to_none=True)
            criterion(model(x), y).backward()
            sgd.step()
        return step
    if mode == "opacus_hooks":
        gsm = GradSampleModule(model, loss_reduction="mean")
        opt = DPOptimizer(sgd, loss_reduction="mean", **dp)
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            criterion(gsm(x), y).backward()
            opt.step()
        return step
    if mode in ("opacus_ghost", "opacus_ghost_ext"):
        samplers = STOCK_NORM_SAMPLERS if mode == "opacus_ghost" else EXTENDED_NORM_SAMPLERS
        gsm_fast = GradSampleModuleFastGradientClipping(
            model, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True,
        )
        opt = DPOptimizerFastGradientClipping(sgd, loss_reduction="mean", **dp)
        dp_loss = DPLossFastGradientClipping(gsm_fast, opt, criterion, "mean")
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            use_norm_samplers(samplers)
            opt.zero_grad(set_to_none=True)
            dp_loss(gsm_fast(x), y).backward()
            opt.step()
        return step
    if mode in ("bookkeeping", "bookkeeping_seeded"):
        module, opt, _ = prepare_private_training(model, sgd, mode="ghost",
                                                  randomness=DPRandomness.fresh(), **dp)
        if mode == "bookkeeping_seeded":
            opt.__class__ = SeededNoiseBookKeepingOptimizer
            opt.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            criterion(module(x), y).backward()
            opt.step()
        return step
    raise ValueError(f"unknown mode {mode!r}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch(device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic MNIST-shaped batch: (256, 1, 28, 28) float32 and (256,) labels."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    return x.to(device), y.to(device)


def check_gradients(name: str, device: torch.device) -> dict[str, float]:
    """Max |grad - hooks grad| / max |hooks grad| after one noiseless step, per DP mode."""
    torch.manual_seed(1)
    base = build_model(name).to(device)
    x, y = batch(device, seed=1)
    grads = {}
    for mode in DP_MODES:
        model = copy.deepcopy(base)
        make_step(model, mode, noise=0.0, max_grad_norm=0.1, lr=0.0)(x, y)
        grads[mode] = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = grads["opacus_hooks"]
    scale = float(ref.abs().max())
    return {mode: float((g - ref).abs().max()) / scale for mode, g in grads.items()}


def measure_throughput(
    name: str, device: torch.device, reps: int, block_seconds: float
) -> dict[str, dict[str, float]]:
    """Median samples/s and median paired ratio to non-private, per mode."""
    torch.manual_seed(0)
    base = build_model(name).to(device)
    x, y = batch(device)
    steps = {mode: make_step(copy.deepcopy(base), mode, noise=1.0, max_grad_norm=1.0) for mode in MODES}
    per_block: dict[str, int] = {}
    for mode, step in steps.items():  # warm-up, and steps per block from the warm-up time
        step(x, y)
        synchronize(device)
        start = time.perf_counter()
        step(x, y)
        synchronize(device)
        per_block[mode] = max(1, round(block_seconds / max(time.perf_counter() - start, 1e-6)))
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for rep in range(reps):
        order = list(MODES[rep % len(MODES):] + MODES[: rep % len(MODES)])
        for mode in order:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(per_block[mode]):
                steps[mode](x, y)
            synchronize(device)
            rates[mode].append(per_block[mode] * BATCH / (time.perf_counter() - start))
    out = {}
    for mode in MODES:
        ratios = [r / base_rate for r, base_rate in zip(rates[mode], rates["non_private"], strict=True)]
        out[mode] = {"samples_per_s": statistics.median(rates[mode]), "ratio": statistics.median(ratios)}
    secure = [a / b for a, b in zip(rates["bookkeeping"], rates["bookkeeping_seeded"], strict=True)]
    out["bookkeeping"]["secure_noise_ratio"] = statistics.median(secure)
    return out


def rss_bytes() -> int:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (VmHWM) to the current one; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM of this process (peak resident set since exec or the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def memory_child(name: str, mode: str, device: torch.device) -> int:
    """Peak bytes of building ``name`` and training it in ``mode`` for a few steps (run in a fresh process)."""
    x, y = batch(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        if not reset_peak_rss():
            print("cannot reset the peak resident set; memory includes the import peak", file=sys.stderr)
        before = rss_bytes()
    torch.manual_seed(0)
    step = make_step(build_model(name).to(device), mode, noise=1.0, max_grad_norm=1.0)
    for _ in range(4):
        step(x, y)
    synchronize(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) - before)
    return peak_rss_bytes() - before


def measure_memory(name: str, device: torch.device) -> dict[str, int]:
    """Peak bytes per mode, each in its own subprocess."""
    out = {}
    for mode in MODES:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, mode, "--device", device.type],
            capture_output=True, text=True, check=True,
        )
        out[mode] = int(proc.stdout.strip().splitlines()[-1])
    return out


def resolve(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (>= 5 for the record)")
    parser.add_argument("--block-seconds", type=float, default=0.5, help="target seconds per timed block")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of mlp,cnn")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = resolve(args.device)
    if args.child:
        print(memory_child(args.child[0], args.child[1], device))
        return 0

    threads = torch.get_num_threads()
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)"
    print(f"device: {label}; batch {BATCH}; {args.reps} interleaved repetitions, median of paired ratios")
    result: dict[str, Any] = {"device": device.type, "device_name": label, "batch": BATCH, "reps": args.reps}
    modes_json: dict[str, Any] = {}
    header = f"{'model':5} {'mode':17} {'samples/s':>10} {'thr. ratio':>10} {'peak MB':>9} {'mem. ratio':>10} {'grad err':>9}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        errors = check_gradients(name, device)
        speed = measure_throughput(name, device, args.reps, args.block_seconds)
        memory = measure_memory(name, device)
        per_mode = {}
        for mode in MODES:
            mem_ratio = memory[mode] / memory["non_private"]
            err = errors.get(mode, 0.0)
            per_mode[mode] = {
                "samples_per_s": round(speed[mode]["samples_per_s"], 1),
                "throughput_ratio": round(speed[mode]["ratio"], 3),
                "peak_bytes": memory[mode], "memory_ratio": round(mem_ratio, 3),
                "relative_grad_error": err, "correct": err <= 1e-4,
            }
            print(
                f"{name:5} {mode:17} {speed[mode]['samples_per_s']:10.0f} {speed[mode]['ratio']:10.3f} "
                f"{memory[mode] / 2**20:9.1f} {mem_ratio:10.2f} {err:9.1e}"
            )
        modes_json[name] = per_mode
        best = max(
            (m for m in DP_MODES if per_mode[m]["correct"] and m != "bookkeeping_seeded"),
            key=lambda m: per_mode[m]["throughput_ratio"],
        )
        result[f"{name}_mode"] = best
        result[f"{name}_throughput_ratio"] = per_mode[best]["throughput_ratio"]
        result[f"{name}_memory_ratio"] = per_mode[best]["memory_ratio"]
        result[f"{name}_secure_noise_ratio"] = round(speed["bookkeeping"]["secure_noise_ratio"], 3)
        print(f"{name:5} secret randomness: bookkeeping / bookkeeping_seeded throughput = "
              f"{speed['bookkeeping']['secure_noise_ratio']:.3f}")
    result["modes"] = modes_json
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
