"""DP-SGD over two processes (DPDDP, gloo on CPU): identical ranks, single-process ε."""

from __future__ import annotations

import math
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
from privtrain.trainer.accounting import epsilon_for
from privtrain.trainer.checkpoints import load_parameters
from privtrain.trainer.distributed import RANKS_DIR, LockstepPoissonSampler, run_distributed
from privtrain.trainer.dp_sgd import JobCancelled, StepReport, noise_for, run_dp_sgd, schedule
from privtrain.trainer.engine import model_from_parameters, train
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
        self.epochs: list[tuple[int, float, float]] = []

    def on_start(self, info: dict[str, object]) -> None:
        self.info = info

    def on_step(self, report: StepReport) -> None:
        self.steps.append(report)

    def on_epoch(self, epoch: int, test_accuracy: float, epsilon: float) -> None:
        self.epochs.append((epoch, test_accuracy, epsilon))


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
    those of one process (the schedule's, and run_dp_sgd's for world_size 1)."""
    spec = _spec()
    data = _data()
    rec = Recorder()
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    result = run_distributed(spec, _model(), data, lambda m: 0.5, tmp_path / "dist", rec,
                             keep_rank_states=True)

    ranks = [load_file(str(tmp_path / "dist" / RANKS_DIR / f"rank-{r}.safetensors")) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() == start.keys()
    for name, initial in start.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.equal(result.model.state_dict()[name], ranks[0][name]), name
        assert not torch.equal(ranks[0][name], initial), f"{name} never moved"

    q, _, total_steps = schedule(spec, len(data))
    assert (q, total_steps) == (0.25, 8)
    sigma = noise_for(spec, q, total_steps)
    assert result.noise_multiplier == sigma
    assert result.steps == total_steps == len(rec.steps)
    assert [s.step for s in rec.steps] == list(range(1, total_steps + 1))
    assert result.epsilon == pytest.approx(epsilon_for("rdp", sigma, q, total_steps, 1e-5), rel=1e-12)
    assert result.epsilon <= spec.target_epsilon
    assert [e[0] for e in rec.epochs] == [1, 2]
    assert rec.info["world_size"] == 2 and rec.info["sample_rate"] == q
    # Both ranks' samples count: about q × 64 = 16 rows a step in all.
    assert 6 <= np.mean([s.batch_size for s in rec.steps]) <= 26
    assert math.isfinite(result.final_loss)

    single = run_dp_sgd(_spec(world_size=1), _model(), data, lambda m: 0.5, tmp_path / "one",
                        Recorder(), clipping_mode="hooks")
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
    result = train(spec, _table(64), DOMAINS, Path("relative-job"), rec)
    assert result.steps == 2 == len(rec.steps)
    assert result.epsilon == pytest.approx(
        epsilon_for("rdp", result.noise_multiplier, 0.5, 2, 1e-5), rel=1e-12)
    tensors, metadata = load_parameters(result.parameters_path.read_bytes())
    model, encoder = model_from_parameters(tensors, metadata)
    assert encoder.classes == ("no", "yes")
    assert model(torch.zeros(1, encoder.width)).shape == (1, 2)
    assert len(rec.epochs) == 1 and 0.0 <= rec.epochs[0][1] <= 1.0


def test_cancel_stops_every_rank(tmp_path: Path) -> None:
    rec = Recorder()
    steps: list[StepReport] = rec.steps
    with pytest.raises(JobCancelled):
        run_distributed(_spec(epochs=50), _model(), _data(), lambda m: 0.5, tmp_path, rec,
                        should_stop=lambda: len(steps) >= 2)
    assert len(rec.steps) < 50 * 4


def test_resume_and_too_few_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="resume"):
        run_distributed(_spec(), _model(), _data(), lambda m: 0.5, tmp_path, Recorder(), resume=True)
    with pytest.raises(InvalidInput, match="cannot be split"):
        run_distributed(_spec(batch_size=1), _model(), _data(1), lambda m: 0.5, tmp_path, Recorder())
    with pytest.raises(InvalidInput, match="world_size"):
        _spec(world_size=0)
    with pytest.raises(InvalidInput, match="world_size"):
        _spec(world_size=17)


class _FakeGroup:
    """Stands in for torch.distributed's rank and world size in the sampler."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rank: int, world_size: int) -> None:
        monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world_size)


def test_sampler_yields_empty_local_batches_and_splits_the_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every rank yields exactly steps batches, empty ones too; the ranks' rows are disjoint."""
    seen: list[set[int]] = []
    for rank in range(2):
        _FakeGroup(monkeypatch, rank, 2)
        sampler = LockstepPoissonSampler(total_size=10, sample_rate=0.05, steps=100,
                                         generator=torch.Generator().manual_seed(rank))
        batches = list(sampler)
        assert len(batches) == 100
        assert sum(1 for b in batches if not b) > 50  # (1 - 0.05)^5 ≈ 0.77 of them
        seen.append({i for b in batches for i in b})
    assert not seen[0] & seen[1]


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
