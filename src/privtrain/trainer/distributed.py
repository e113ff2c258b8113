"""DP-SGD over several processes: the ranks of one job under ``torch.distributed``.

``spec.world_size`` processes are spawned (gloo on CPU, NCCL on CUDA, one GPU per
rank) and meet through a ``FileStore`` in the job's folder, so no port is opened.
Each rank runs the one training loop, :func:`privtrain.trainer.dp_sgd.train_loop`,
with its :class:`~privtrain.trainer.dp_sgd.Ranks`: every option (flat, per-layer and
adaptive clipping in ghost or hooks mode, noise schedules, bf16, resume) works at
every world size. Rank 0 broadcasts its initial parameters; each rank samples its own
share of the rows (rows r, r + N, ...) with its own lane of the job's randomness,
clips and sums its per-sample gradients; rank 0 alone adds the noise and one
all-reduce per logical step sums the ranks' sums, so the update is (Σ clipped +
N(0, σ²C²)) / B, exactly the single-process one; the union of the local batches is
one Poisson sample of rate q over all rows, so the privacy analysis is that of one
process. Rank 0 evaluates, releases, accounts and checkpoints.

This module only manages the processes: the parent forwards rank 0's progress to
the caller's reporter (through a queue), turns ``should_stop`` into an event the
ranks agree on after every logical step, and loads the final parameters from
rank 0's last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import queue as queue_module
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.errors import FailedPrecondition, InvalidInput, PrivtrainError
from privtrain.parent_watchdog import exit_with_parent
from privtrain.trainer.checkpoints import latest_checkpoint, load_checkpoint
from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.dp_sgd import (
    Evaluate,
    JobCancelled,
    LoopOptions,
    LoopResult,
    Ranks,
    Reporter,
    StepReport,
    train_loop,
)
from privtrain.trainer.plan import JobPlan
from privtrain.trainer.spec import TrainingSpec

# Messages from rank 0 (and errors from any rank) to the parent.
_START, _STEP, _EPOCH, _DONE, _ERROR = "start", "step", "epoch", "done", "error"
# Errors a rank reports by name, re-raised with their type in the parent.
_ERRORS: dict[str, type[PrivtrainError]] = {
    cls.__name__: cls for cls in (JobCancelled, InvalidInput, FailedPrecondition)
}
POLL_S = 0.1
# How long the other ranks may take to end after one reported an error before they are killed
# (one that failed alone leaves the others waiting in a collective).
ERROR_GRACE_S = 10.0
RANKS_DIR = "ranks"


def run_ranks(
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
    keep_rank_states: bool = False,
) -> LoopResult:
    """Run :func:`~privtrain.trainer.dp_sgd.train_loop` in ``spec.world_size`` processes.

    Same contract as :func:`~privtrain.trainer.dp_sgd.run_dp_sgd`, which calls it;
    ``evaluate`` must be picklable. ``keep_rank_states`` makes every rank also write its
    final parameters to ``out_dir/ranks/rank-R.safetensors`` (to compare them).

    Raises
    ------
    InvalidInput
        Fewer rows than ranks, or fewer GPUs than ranks.
    FailedPrecondition
        The ranks' final parameters differ; the accounting check failed; no result.
    JobCancelled
        ``should_stop`` returned True.
    """
    world_size = spec.world_size
    if len(train_data) < world_size:
        raise InvalidInput(f"the training rows cannot be split across {world_size} processes")
    if device.type == "cuda" and torch.cuda.device_count() < world_size:
        raise InvalidInput(
            f"world_size {world_size} needs {world_size} GPUs; {torch.cuda.device_count()} present"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / f"rendezvous-{uuid.uuid4().hex}"
    ctx = torch_mp.get_context("spawn")
    messages = ctx.Queue()
    stop = ctx.Event()
    config = {
        "spec": spec, "plan": plan, "randomness": randomness, "options": options,
        "store": str(store.resolve()), "device": device.type, "out_dir": str(out_dir),
        "keep_rank_states": keep_rank_states, "threads": max(1, (os.cpu_count() or 1) // world_size),
    }
    with _children_allowed():
        procs = torch_mp.start_processes(
            _rank_main, args=(world_size, config, model.to("cpu"), train_data, evaluate, messages, stop),
            nprocs=world_size, join=False, start_method="spawn",
        )
    try:
        done = _relay(procs, messages, stop, reporter, should_stop)
    finally:
        for process in procs.processes:
            if process.is_alive():
                process.kill()
            process.join()
        store.unlink(missing_ok=True)
    model.to(device)
    path = latest_checkpoint(out_dir / "checkpoints")
    if path is None:
        raise FailedPrecondition("rank 0 finished without a checkpoint")
    tensors, _ = load_checkpoint(path)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return LoopResult(model=model, **done)


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """Let a daemonic process (the platform's worker) start the ranks.

    multiprocessing forbids children of a daemon because a daemon may be
    terminated without cleaning up after itself; every rank ends itself when its
    parent goes away (see :func:`privtrain.parent_watchdog.exit_with_parent`), which is
    what the rule protects.
    """
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    was_daemon = config.get("daemon", False)
    config["daemon"] = False
    try:
        yield
    finally:
        config["daemon"] = was_daemon


class _QueueReporter:
    """Rank 0's reporter: everything goes to the parent, which forwards it."""

    def __init__(self, messages: Any) -> None:
        self._messages = messages

    def on_start(self, info: dict[str, Any]) -> None:
        self._messages.put((_START, info))

    def on_step(self, report: StepReport) -> None:
        self._messages.put((_STEP, report.__dict__))

    def on_epoch(self, epoch: int, released: float | None, exact: float, epsilon: float) -> None:
        self._messages.put((_EPOCH, (epoch, released, exact, epsilon)))


class _Silent:
    """The other ranks' reporter."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_step(self, report: StepReport) -> None: ...

    def on_epoch(self, epoch: int, released: float | None, exact: float, epsilon: float) -> None: ...


def _relay(procs: torch_mp.ProcessContext, messages: Any, stop: Any, reporter: Reporter,
           should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Forward rank 0's progress to ``reporter`` until every rank has ended; rank 0's result."""
    done: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    error_at = 0.0
    while True:
        if not stop.is_set() and should_stop():
            stop.set()
        try:
            kind, payload = messages.get(timeout=POLL_S)
        except queue_module.Empty:
            # join raises (after killing the others) when a rank died with an exception.
            if procs.join(timeout=0):
                break
            if error is not None and time.monotonic() - error_at > ERROR_GRACE_S:
                break  # the caller kills the ranks still waiting
            continue
        if kind == _START:
            reporter.on_start(payload)
        elif kind == _STEP:
            reporter.on_step(StepReport(**payload))
        elif kind == _EPOCH:
            reporter.on_epoch(*payload)
        elif kind == _DONE:
            done = payload
        elif kind == _ERROR and error is None:
            error, error_at = (payload["type"], payload["message"]), time.monotonic()
    if error is not None:
        raise _ERRORS.get(error[0], FailedPrecondition)(error[1])
    if done is None:
        raise FailedPrecondition("the training processes ended without a result")
    return done


def _rank_main(
    rank: int, world_size: int, config: dict[str, Any], model: nn.Module,
    train_data: TensorDataset, evaluate: Evaluate, messages: Any, stop: Any,
) -> None:
    """One rank: join the group, run the loop, report (rank 0), leave the group."""
    exit_with_parent()
    torch.set_num_threads(config["threads"])
    cuda = config["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", init_method=f"file://{config['store']}",
        rank=rank, world_size=world_size,
    )
    ranks = Ranks(rank, world_size)
    try:
        outcome = train_loop(
            config["spec"], model.to(device), train_data, evaluate, Path(config["out_dir"]),
            _QueueReporter(messages) if ranks.main else _Silent(), plan=config["plan"],
            randomness=config["randomness"], should_stop=stop.is_set, device=device,
            options=config["options"], ranks=ranks,
        )
        _check_ranks_agree(outcome.model, world_size)
        if config["keep_rank_states"]:
            from safetensors.torch import save_file

            (Path(config["out_dir"]) / RANKS_DIR).mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in outcome.model.state_dict().items()},
                      str(Path(config["out_dir"]) / RANKS_DIR / f"rank-{rank}.safetensors"))
        if ranks.main:
            messages.put((_DONE, {
                "epsilon": outcome.epsilon, "noise_multiplier": outcome.noise_multiplier,
                "sample_rate": outcome.sample_rate, "steps": outcome.steps,
                "test_accuracy": outcome.test_accuracy, "exact_test_accuracy": outcome.exact_test_accuracy,
                "final_loss": outcome.final_loss,
            }))
    except PrivtrainError as exc:
        messages.put((_ERROR, {"type": type(exc).__name__, "message": str(exc)}))
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        messages.close()
        messages.join_thread()


def _check_ranks_agree(model: nn.Module, world_size: int) -> None:
    """Refuse a result unless every rank holds bit-identical parameters.

    Raises
    ------
    FailedPrecondition
        Two ranks' parameters differ (a desynchronised step).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    digests: list[str | None] = [None] * world_size
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) != 1:
        raise FailedPrecondition("the training processes ended with different parameters")
