"""Does ``torch.compile`` help DP-SGD here? Eager vs compiled, interleaved, in one run.

Two paths, on the MLP 784-512-512-10 at batch 256 (synthetic MNIST-shaped inputs):

- ``eval``: the evaluation forward (``torch.no_grad``), what the ``compile`` job option compiles;
- ``train_ghost``: one DP-SGD training step in book-keeping ghost clipping with the model
  compiled (the per-layer forward replacements and tensor hooks must survive compilation).

Each path reports the median of paired speed ratios compiled / eager (> 1: compiled is
faster), the compile time in seconds, and whether compiled outputs match eager ones
(max absolute difference of logits, or of the parameters after one noiseless step).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from privtrain.trainer.fast_clipping import prepare_private_training


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def _per_second(fn: Callable[[], None], block_seconds: float) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < block_seconds:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def _paired(eager: Callable[[], None], compiled: Callable[[], None], reps: int,
            block_seconds: float) -> float:
    ratios = []
    for _ in range(reps):
        e = _per_second(eager, block_seconds)
        c = _per_second(compiled, block_seconds)
        ratios.append(c / e)
    return statistics.median(ratios)


def bench_eval(x: torch.Tensor, reps: int, block_seconds: float) -> dict[str, float | bool]:
    model = _mlp(0).eval()
    compiled = torch.compile(model)
    start = time.perf_counter()
    with torch.no_grad():
        out_c = compiled(x)
    compile_s = time.perf_counter() - start
    with torch.no_grad():
        diff = float((out_c - model(x)).abs().max())

        def run_eager() -> None:
            model(x)

        def run_compiled() -> None:
            compiled(x)

        ratio = _paired(run_eager, run_compiled, reps, block_seconds)
    return {"speed_ratio": ratio, "compile_s": compile_s, "max_abs_diff": diff, "correct": diff < 1e-4}


def _ghost_step(model: nn.Module, forward: nn.Module | None, x: torch.Tensor,
                y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    module, dp_optimizer, _ = prepare_private_training(
        model, optimizer, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=len(x),
        mode="ghost")
    run = forward if forward is not None else module
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        dp_optimizer.zero_grad()
        criterion(run(x), y).backward()
        dp_optimizer.step()

    return step


def bench_train_ghost(x: torch.Tensor, y: torch.Tensor, reps: int,
                      block_seconds: float) -> dict[str, float | bool | str]:
    eager_model, compiled_model = _mlp(0), _mlp(0)
    eager = _ghost_step(eager_model, None, x, y)
    optimizer = torch.optim.SGD(compiled_model.parameters(), lr=0.1)
    module, dp_optimizer, _ = prepare_private_training(
        compiled_model, optimizer, noise_multiplier=0.0, max_grad_norm=1.0,
        expected_batch_size=len(x), mode="ghost")
    compiled_forward = torch.compile(module)
    criterion = nn.CrossEntropyLoss()

    def compiled() -> None:
        dp_optimizer.zero_grad()
        criterion(compiled_forward(x), y).backward()
        dp_optimizer.step()

    start = time.perf_counter()
    try:
        compiled()
    except Exception as exc:  # a compile failure is a result here, not a crash
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "correct": False}
    compile_s = time.perf_counter() - start
    eager()
    diff = max(float((a - b).abs().max())
               for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True))
    ratio = _paired(eager, compiled, reps, block_seconds)
    return {"speed_ratio": ratio, "compile_s": compile_s, "max_abs_diff": diff, "correct": diff < 1e-4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--block-seconds", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 784, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    results = {
        "eval": bench_eval(x, args.reps, args.block_seconds),
        "train_ghost": bench_train_ghost(x, y, args.reps, args.block_seconds),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.reps} paired blocks of {args.block_seconds} s")
    print(f"{'path':<12} {'compiled/eager':>15} {'compile s':>10} {'max |diff|':>11} {'correct':>8}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<12} {'failed: ' + str(r['error'])}")
            continue
        print(f"{name:<12} {r['speed_ratio']:>15.2f} {r['compile_s']:>10.1f} "
              f"{r['max_abs_diff']:>11.2e} {str(r['correct']):>8}")
    print(json.dumps({"torch": torch.__version__, "batch": args.batch, **results}))


if __name__ == "__main__":
    main()
