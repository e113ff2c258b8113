"""DP-SGD over two processes (gloo on CPU), through the one training loop: identical ranks,
single-process ε, and every option (adaptive clipping, noise schedules, bf16, resume)."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.errors import FailedPrecondition, InvalidInput
from privtrain.trainer.accounting import epsilon_for_history
from privtrain.trainer.checkpoints import load_parameters
from privtrain.trainer.distributed import RANKS_DIR, run_ranks
from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.dp_sgd import JobCancelled, LoopOptions, StepReport, run_dp_sgd
from privtrain.trainer.engine import TableSplit, model_from_parameters, train
from privtrain.trainer.plan import plan_job
from privtrain.trainer.sampling import SecurePoissonSampler
from privtrain.trainer.spec import TrainingSpec

DOMAINS = {
    **{f"f{i}": {"type": "numeric", "lower": -4, "upper": 4} for i in range(4)},
    "label": {"type": "categorical", "values": ["no", "yes"]},
    "split": {"type": "categorical", "values": ["train", "test"]},
}


class Recorder:
    """Collects what the loop reports."""

    def __init__(self) -> None:
        self.info: dict[str, object] = {}
        self.steps: list[StepReport] = []
        self.epochs: list[tuple[int, float | None, float, float]] = []

    def on_start(self, info: dict[str, object]) -> None:
        self.info = info

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)

    def on_epoch(self, epoch: int, released_accuracy: float | None, exact_accuracy: float,
                 epsilon: float) -> None:
        self.epochs.append((epoch, released_accuracy, exact_accuracy, epsilon))


SPLIT = TableSplit(column="split", train="train", test="test")


def _half_right(model: nn.Module) -> tuple[int, int]:
    """An ``evaluate`` stand-in: 32 of 64 test rows correct."""
    return 32, 64


def _table(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4))
    label = np.where(x[:, 0] + 0.5 * x[:, 1] > 0, "yes", "no")
    train = pd.DataFrame({f"f{i}": x[:, i] for i in range(4)} | {"label": label, "split": "train"})
    return pd.concat([train, train.assign(split="test")], ignore_index=True)


def _spec(**overrides: Any) -> TrainingSpec:
    values: dict[str, Any] = {
        "dataset_id": "d", "target_column": "label", "model": "mlp", "hidden_sizes": (8,),
        "batch_size": 16, "max_physical_batch_size": 8, "epochs": 2, "target_epsilon": 8.0,
        "target_delta": 1e-5, "learning_rate": 0.1, "accountant": "rdp", "seed": 3,
        "world_size": 2,
    }
    return TrainingSpec(**(values | overrides))


def _data(rows: int = 64) -> TensorDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_two_ranks_hold_identical_parameters_and_spend_single_process_epsilon(
    tmp_path: Path,
) -> None:
    """World size 2, 64 rows, batch 16, 2 epochs: bit-identical ranks; q, σ, steps and ε
    those of one process (the plan's, and run_dp_sgd's for world_size 1), the two noisy
    accuracy releases included."""
    spec = _spec()
    data = _data()
    plan = plan_job(spec, len(data), 64)
    rec = Recorder()
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    result = run_ranks(spec, _model(), data, _half_right, tmp_path / "dist", rec, plan=plan,
                       randomness=DPRandomness.fresh(), should_stop=lambda: False,
                       device=torch.device("cpu"), options=LoopOptions(clipping_mode="hooks"),
                       keep_rank_states=True)

    ranks = [load_file(str(tmp_path / "dist" / RANKS_DIR / f"rank-{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == start.keys()
    for name, initial in start.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.equal(result.model.state_dict()[name], ranks[0][name]), name
        assert not torch.equal(ranks[0][name], initial), f"{name} never moved"

    q, total_steps = plan.sample_rate, plan.total_steps
    assert (q, total_steps) == (0.25, 8)
    sigma = plan.noise.scale
    assert result.noise_multiplier == sigma
    assert result.steps == total_steps == len(rec.steps)
    assert [s.step for s in rec.steps] == list(range(1, total_steps + 1))
    expected = epsilon_for_history("rdp", [(sigma, q, total_steps), (20.0, 1.0, 2)], 1e-5)
    assert result.epsilon == pytest.approx(expected, rel=1e-12)
    assert result.epsilon == pytest.approx(plan.epsilon, rel=1e-12)
    assert result.epsilon <= spec.target_epsilon
    assert [e[0] for e in rec.epochs] == [1, 2]
    # Exact accuracy for the operator; a noisy release (20 rows of noise) for the trainer.
    assert [e[2] for e in rec.epochs] == [0.5, 0.5]
    assert all(e[1] is not None and 0.0 <= e[1] <= 1.0 and e[1] != 0.5 for e in rec.epochs)
    assert result.exact_test_accuracy == 0.5 and result.test_accuracy == rec.epochs[-1][1]
    assert rec.info["world_size"] == 2 and rec.info["sample_rate"] == q
    # Both ranks' samples count: about q × 64 = 16 rows a step in all.
    assert 6 <= np.mean([s.batch_size for s in rec.steps]) <= 26
    assert math.isfinite(result.final_loss)

    one = _spec(world_size=1)
    single = run_dp_sgd(one, _model(), data, _half_right, tmp_path / "one", Recorder(),
                        plan=plan_job(one, len(data), 64), clipping_mode="hooks")
    assert single.steps == result.steps
    assert single.noise_multiplier == result.noise_multiplier
    assert single.epsilon == pytest.approx(result.epsilon, rel=1e-12)


def test_engine_with_two_processes_writes_parameters_a_client_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with a relative output folder (a server started with `--home srv`): the ranks'
    rendezvous file must not be read as a host name."""
    monkeypatch.chdir(tmp_path)
    spec = _spec(batch_size=32, max_physical_batch_size=32, epochs=1)
    rec = Recorder()
    result = train(spec, _table(64), DOMAINS, SPLIT, Path("relative-job"), rec,
                   plan=plan_job(spec, 64, 64))
    assert result.steps == 2 == len(rec.steps)
    assert result.epsilon == pytest.approx(
        epsilon_for_history("rdp", [(result.noise_multiplier, 0.5, 2), (20.0, 1.0, 1)], 1e-5),
        rel=1e-12)
    assert (result.exact_train_rows, result.exact_test_rows) == (64, 64)
    tensors, metadata = load_parameters(result.parameters_path.read_bytes())
    model, encoder = model_from_parameters(tensors, metadata)
    assert encoder.classes == ("no", "yes")
    assert model(torch.zeros(1, encoder.width)).shape == (1, 2)
    assert len(rec.epochs) == 1 and 0.0 <= rec.epochs[0][1] <= 1.0
    assert rec.epochs[0][2] == result.exact_test_accuracy


def test_cancel_stops_every_rank(tmp_path: Path) -> None:
    rec = Recorder()
    steps: list[StepReport] = rec.steps
    spec = _spec(epochs=50, release_test_accuracy="none")
    with pytest.raises(JobCancelled):
        run_dp_sgd(spec, _model(), _data(), _half_right, tmp_path, rec,
                   plan=plan_job(spec, 64, 64), should_stop=lambda: len(steps) >= 2)
    assert len(rec.steps) < 50 * 4


def test_resume_without_a_checkpoint_and_too_few_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="no checkpoint to resume from"):
        run_dp_sgd(_spec(), _model(), _data(), _half_right, tmp_path, Recorder(),
                   plan=plan_job(_spec(), 64, 64), resume=True)
    one_row = _spec(batch_size=1)
    with pytest.raises(InvalidInput, match="cannot be split"):
        run_dp_sgd(one_row, _model(), _data(1), _half_right, tmp_path, Recorder(),
                   plan=plan_job(one_row, 1, 64))
    with pytest.raises(InvalidInput, match="world_size"):
        _spec(world_size=0)
    with pytest.raises(InvalidInput, match="world_size"):
        _spec(world_size=17)


def test_sampler_yields_empty_local_batches_and_splits_the_rows() -> None:
    """Each rank samples its share of the rows (r, r + N, ...) on its own lane of the job's key,
    as the spawned ranks do with their copies of the randomness: every rank yields exactly
    steps batches, empty ones too; the ranks' rows are disjoint; the lanes draw independently
    (the same key on another lane gives other batches)."""
    key = os.urandom(32)
    rows = 10
    seen: list[set[int]] = []
    masks = []
    for rank in range(2):
        share = np.arange(rank, rows, 2)
        sampler = SecurePoissonSampler(rows=share, sample_rate=0.05, steps=100,
                                       randomness=DPRandomness(key), lane=rank)
        batches = list(sampler)
        assert len(batches) == 100
        assert sum(1 for b in batches if not b) > 50  # (1 - 0.05)^5 ≈ 0.77 of them
        seen.append({i for b in batches for i in b})
        assert seen[-1] <= set(share.tolist())
        masks.append([[i in b for i in share] for b in batches])
    assert not seen[0] & seen[1]
    assert masks[0] != masks[1]
    # A copy of the randomness (pickled to a spawned rank) continues the same streams.
    original = DPRandomness(key)
    list(SecurePoissonSampler(rows=np.arange(rows), sample_rate=0.5, steps=3, randomness=original))
    copy = pickle.loads(pickle.dumps(original))
    assert copy.state() == original.state()
    nxt = [list(SecurePoissonSampler(rows=np.arange(rows), sample_rate=0.5, steps=3, randomness=r))
           for r in (original, copy)]
    assert nxt[0] == nxt[1]


def test_world_size_travels_through_the_job_spec_message() -> None:
    from privtrain.platform.convert import spec_from_proto, spec_to_proto
    from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb

    msg = pb.JobSpec(dataset_id="d", target_column="label", world_size=2)
    spec = spec_from_proto(msg)
    assert spec.world_size == 2
    assert spec_to_proto(spec.to_dict()).world_size == 2
    assert spec_from_proto(pb.JobSpec(dataset_id="d", target_column="label")).world_size == 1
    with pytest.raises(InvalidInput, match="world_size"):
        spec_from_proto(pb.JobSpec(dataset_id="d", target_column="label", world_size=0))
    assert TrainingSpec.from_dict({"dataset_id": "d", "target_column": "label"}).world_size == 1


KILLED_RANKS = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np, torch
    from torch import nn
    from torch.utils.data import TensorDataset
    from privtrain.trainer.dp_sgd import run_dp_sgd
    from privtrain.trainer.engine import TestRows
    from privtrain.trainer.plan import plan_job
    from privtrain.trainer.spec import TrainingSpec


    class Report:
        step = 0
        def on_start(self, info): pass
        def on_step(self, r): self.step = r.step
        def on_epoch(self, e, released, exact, eps): pass


    if __name__ == "__main__":
        out, mode, world = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        rng = np.random.default_rng(0)
        x = rng.normal(size=(128, 4)).astype(np.float32)
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
        data = TensorDataset(torch.from_numpy(x[:96]), torch.from_numpy(y[:96]))
        spec = TrainingSpec(dataset_id="d", target_column="label", model="mlp", hidden_sizes=(8,),
                            batch_size=16, max_physical_batch_size=8, epochs=4, target_epsilon=6.0,
                            target_delta=1e-5, learning_rate=0.1, accountant="prv", seed=3,
                            world_size=world, clipping="adaptive", max_grad_norm=0.5,
                            noise_schedule="exponential", noise_gamma=0.8, precision="bf16", unclipped_num_std=8.0,
                            release_test_accuracy="final")
        report = Report()

        def kill_after_epoch_2():
            if report.step >= 13:  # 2 epochs of 6 steps: the checkpoint of epoch 2 is written
                os.killpg(0, signal.SIGKILL)  # the worker and its ranks, as kill -9 of a group
            return False

        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        plan = plan_job(spec, 96, 32)
        result = run_dp_sgd(spec, model, data, TestRows(x[96:], y[96:], torch.device("cpu")), out,
                            report, plan=plan, resume=mode == "resume",
                            should_stop=kill_after_epoch_2 if mode == "kill" else (lambda: False))
        print(json.dumps({"epsilon": result.epsilon, "steps": result.steps,
                          "plan_epsilon": plan.epsilon, "clip": result.model is not None}))
""")


@pytest.mark.slow
def test_two_ranks_with_adaptive_clipping_resume_after_kill_with_the_single_process_epsilon(
    tmp_path: Path,
) -> None:
    """Issue 12: world size 2 with adaptive clipping, an exponential noise schedule and bf16,
    killed (SIGKILL to the process group) after epoch 2, resumed in new processes: it ends
    with every step taken once and the ε of the single-process job's plan."""
    script = tmp_path / "job.py"
    script.write_text(KILLED_RANKS)
    out = tmp_path / "two"
    killed = subprocess.run([sys.executable, str(script), str(out), "kill", "2"], capture_output=True,
                            text=True, timeout=300, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    states = sorted((out / "checkpoints").glob("epoch-*.json"))
    assert [p.name for p in states] == ["epoch-0001.json", "epoch-0002.json"]
    assert json.loads(states[-1].read_text())["world_size"] == 2
    resumed = subprocess.run([sys.executable, str(script), str(out), "resume", "2"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    figures = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert figures["steps"] == 24
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "run", "1"],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    one = json.loads(single.stdout.strip().splitlines()[-1])
    assert figures["epsilon"] == pytest.approx(one["plan_epsilon"], rel=1e-9)
    assert figures["epsilon"] == pytest.approx(one["epsilon"], rel=1e-9) and figures["epsilon"] <= 6.0
