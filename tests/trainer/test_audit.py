"""Privacy audit in one training run (Steinke, Nasr & Jagielski 2023): the bound and the canaries."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.errors import InvalidInput
from privtrain.trainer.audit import (
    CANARY_NORM,
    NO_CLIPPING,
    AuditSettings,
    CanaryAudit,
    epsilon_lower_bound,
    p_value,
)
from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.dp_sgd import run_dp_sgd
from privtrain.trainer.engine import TableSplit, train
from privtrain.trainer.plan import plan_job
from privtrain.trainer.spec import TrainingSpec

ROWS, FEATURES, CANARIES = 2000, 20, 200


def _binomial_tail(r: int, v: int, p: float) -> float:
    """P[Bin(r, p) ≥ v], term by term."""
    return sum(math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(v, r + 1))


def _direct_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The paper's p-value written out: tail + 2mδ · max_i P[v - i ≤ Bin(r, p) < v] / i."""
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    pmf = [math.comb(r, k) * p**k * (1 - p) ** (r - k) for k in range(r + 1)]
    alpha = max((sum(pmf[v - i:v]) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, _binomial_tail(r, v, p) + 2 * m * delta * alpha)


# ---------------------------------------------------------------------------- the bound
@pytest.mark.parametrize(("r", "v", "epsilon"), [(10, 7, 0.5), (10, 10, 2.0), (20, 15, 1.0),
                                                 (6, 0, 1.0), (30, 16, 0.0)])
def test_pure_dp_p_value_is_the_binomial_tail(r: int, v: int, epsilon: float) -> None:
    """δ = 0: the chance of ≥ v correct of r guesses is P[Bin(r, e^ε/(1+e^ε)) ≥ v]."""
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    assert p_value(50, r, v, epsilon, 0.0) == pytest.approx(_binomial_tail(r, v, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("m", "r", "v", "epsilon", "delta"), [
    (100, 10, 8, 0.5, 1e-3), (40, 20, 17, 1.0, 1e-4), (1000, 12, 12, 2.0, 1e-5), (10, 4, 1, 0.3, 0.01),
])
def test_approximate_dp_p_value_matches_a_direct_computation(m: int, r: int, v: int, epsilon: float,
                                                             delta: float) -> None:
    expected = _direct_p_value(m, r, v, epsilon, delta)
    assert p_value(m, r, v, epsilon, delta) == pytest.approx(expected, rel=1e-9)
    assert p_value(m, r, v, epsilon, delta) > p_value(m, r, v, epsilon, 0.0)


def test_epsilon_lower_bound_is_zero_at_chance_and_grows_with_correct_guesses() -> None:
    """r = 100 guesses of m = 1000 canaries: half right proves nothing; more right proves more."""
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 100, 30, 1e-5) == 0.0
    bounds = [epsilon_lower_bound(1000, 100, v, 1e-5) for v in range(50, 101, 5)]
    assert bounds == sorted(bounds) and bounds[0] == 0.0 and bounds[-1] > 2.5
    assert all(b < c for b, c in itertools.pairwise(bounds[2:]))
    # A larger δ leaves more room to (ε, δ)-DP: a smaller bound for the same guesses.
    assert epsilon_lower_bound(1000, 100, 90, 1e-3) < epsilon_lower_bound(1000, 100, 90, 1e-5)


def test_all_guesses_right_gives_the_epsilon_whose_binomial_tail_is_five_percent() -> None:
    """r = v = 100, δ = 0: P[Bin(100, q) ≥ 100] = q^100 = 0.05 at q = e^ε / (1 + e^ε)."""
    q = 0.05 ** (1 / 100)
    expected = math.log(q / (1 - q))
    bound = epsilon_lower_bound(100, 100, 100, 0.0)
    assert bound == pytest.approx(expected, abs=1e-3)
    assert p_value(100, 100, 100, bound, 0.0) < 0.05 <= p_value(100, 100, 100, bound + 1e-3, 0.0)
    # 99% confidence needs stronger evidence: q^100 = 0.01.
    q99 = 0.01 ** (1 / 100)
    assert epsilon_lower_bound(100, 100, 100, 0.0, 0.99) == pytest.approx(math.log(q99 / (1 - q99)),
                                                                         abs=1e-3)


def test_bound_arguments_are_checked() -> None:
    for m, r, v in ((10, 20, 5), (10, 10, 11), (10, 10, -1)):
        with pytest.raises(InvalidInput, match="need 0 <= correct <= guesses <= canaries"):
            epsilon_lower_bound(m, r, v, 1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"canaries": 100, "mechanism": "gaussian"}, "audit mechanism must be one of"),
    ({"canaries": 1}, "canaries must be an integer >= 2"),
    ({"canaries": 2.5}, "canaries must be an integer >= 2"),
    ({"canaries": 100, "guesses": 7}, r"guesses must be even and in \[2, canaries=100\], got 7"),
    ({"canaries": 100, "guesses": 102}, "guesses must be even"),
    ({"canaries": 100, "confidence": 1.0}, r"confidence must be in \[0.5, 1\)"),
    ({"canaries": 100, "confidence": 0.4}, r"confidence must be in \[0.5, 1\)"),
])
def test_audit_settings_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        AuditSettings(**kwargs)
    assert info.value.grpc_code == "INVALID_ARGUMENT"


def test_default_guesses_are_a_fifth_of_the_canaries() -> None:
    assert AuditSettings(canaries=200).guesses == 40
    assert AuditSettings(canaries=5).guesses == 2
    assert AuditSettings(canaries=200, guesses=10).guesses == 10


# ---------------------------------------------------------------------------- canaries in a run
def _data() -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS + 500, FEATURES, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x[:ROWS], y[:ROWS]), x[ROWS:], y[ROWS:]


def _model() -> nn.Module:
    """Linear(20, 16) → ReLU → Linear(16, 2): 370 trainable parameters, room for 200 canaries."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))


def _spec(**overrides: object) -> TrainingSpec:
    values: dict = {"dataset_id": "d", "target_column": "label", "model": "mlp", "batch_size": 100,
                    "max_physical_batch_size": 100, "epochs": 3, "target_epsilon": 1.0,
                    "target_delta": 1e-5, "max_grad_norm": 1.0, "learning_rate": 0.05,
                    "accountant": "rdp", "release_test_accuracy": "none"}
    values.update(overrides)
    return TrainingSpec(**values)


class _Quiet:
    def on_start(self, info: dict) -> None:
        pass

    def on_step(self, report: object) -> None:
        pass

    def on_epoch(self, epoch: int, released: float | None, exact: float, eps: float) -> None:
        pass


def _audit_run(mechanism: str, out: Path, key: bytes) -> tuple:
    train_data, x_test, y_test = _data()
    spec = _spec()
    plan = plan_job(spec, ROWS, len(y_test))
    model = _model()
    randomness = DPRandomness(key)
    audit = CanaryAudit(model, AuditSettings(canaries=CANARIES, mechanism=mechanism), randomness,
                        sample_rate=plan.sample_rate, delta=plan.delta)
    trained_spec = audit.training_spec(spec)

    def evaluate(m: nn.Module) -> tuple[int, int]:
        with torch.no_grad():
            return int((m(x_test).argmax(1) == y_test).sum()), len(y_test)

    result = run_dp_sgd(trained_spec, model, train_data, evaluate, out, _Quiet(), plan=plan,
                        randomness=randomness, noise_observer=audit, clipping_mode="ghost",
                        private=mechanism == "dp")
    return result, audit.result(), trained_spec


def test_audit_without_noise_or_clipping_is_caught(tmp_path: Path) -> None:
    """Mechanism ``none`` (no noise, canaries unclipped at 1000·C): nearly every guess is right and
    ε_lower ≥ 1, though nothing is accounted (ε infinite, the loop's check of itself)."""
    result, audit, spec = _audit_run("none", tmp_path, bytes(range(32)))
    assert spec.max_grad_norm == NO_CLIPPING
    assert result.epsilon == math.inf and result.noise_multiplier == 0.0
    assert audit.mechanism == "none" and audit.canaries == CANARIES and audit.guesses == 40
    assert 70 <= audit.included <= 130
    assert audit.correct >= 37
    assert audit.epsilon_lower >= 1.0
    assert audit.epsilon_lower == epsilon_lower_bound(CANARIES, 40, audit.correct, 1e-5)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


def test_audit_of_dp_sgd_stays_below_its_epsilon(tmp_path: Path) -> None:
    """Mechanism ``dp`` at ε = 1 (canaries clipped to C, the job's noise): ε_lower ≤ 1, with ε
    accounted as for the job. Three keys (runs)."""
    for seed in range(3):
        result, audit, spec = _audit_run("dp", tmp_path / str(seed), bytes([seed + 7] * 32))
        assert spec.max_grad_norm == 1.0
        assert result.epsilon <= 1.0 and result.noise_multiplier > 0
        assert audit.mechanism == "dp" and audit.guesses == 40
        assert audit.epsilon_lower <= 1.0, audit
        assert audit.correct < 37


def test_canaries_sit_on_distinct_coordinates_and_the_audit_refuses_what_it_cannot_run() -> None:
    model = _model()
    audit = CanaryAudit(model, AuditSettings(canaries=CANARIES), DPRandomness(bytes(32)),
                        sample_rate=0.05, delta=1e-5)
    offsets = [(i, int(o)) for i, (_, offs) in enumerate(audit._by_param) for o in offs]
    assert len(offsets) == len(set(offsets)) == CANARIES
    assert set(np.unique(audit.signs)) == {-1.0, 1.0}
    with pytest.raises(InvalidInput, match="371 canaries need as many trainable parameters; "
                                           "the model has 370"):
        CanaryAudit(model, AuditSettings(canaries=371), DPRandomness(bytes(32)), sample_rate=0.05,
                    delta=1e-5)
    for overrides in ({"clipping": "per_layer"}, {"noise_schedule": "exponential", "noise_gamma": 0.9},
                      {"world_size": 2}):
        with pytest.raises(InvalidInput, match="flat clipping, a constant noise schedule and world_size 1"):
            audit.training_spec(_spec(**overrides))
    assert audit.training_spec(_spec()).max_grad_norm == 1.0


@pytest.mark.parametrize(("mechanism", "bound", "size"), [("dp", 0.5, 0.5),
                                                         ("none", NO_CLIPPING, CANARY_NORM * 0.5)])
def test_canary_is_clipped_like_a_sample(mechanism: str, bound: float, size: float) -> None:
    """``before_noise`` adds ± min(1000·C, bound) at each included canary's coordinate (q = 1: all
    picked): C under DP, 1000·C unclipped; ``after_noise`` scores sign × the privatized sum there."""
    model = nn.Linear(10, 2)
    audit = CanaryAudit(model, AuditSettings(canaries=4, mechanism=mechanism),
                        DPRandomness(bytes(range(32))), sample_rate=1.0, delta=1e-5)
    audit.training_spec(_spec(max_grad_norm=0.5))
    params = list(model.parameters())
    for p in params:
        p.summed_grad = torch.zeros_like(p)
    audit.before_noise(params, bound)
    added = torch.cat([p.summed_grad.flatten() for p in params])
    assert int(audit.included.sum()) >= 1
    assert sorted(added[added != 0].abs().tolist()) == [size] * int(audit.included.sum())
    for p in params:
        p.grad = p.summed_grad.clone()
    audit.after_noise(params)
    assert audit._scores.tolist() == [size if inside else 0.0 for inside in audit.included]


def test_engine_runs_the_audit_and_reports_its_figures(tmp_path: Path) -> None:
    """``train(..., audit=...)`` trains with the canaries and puts the audit's figures in the result;
    the audit trains in one process only."""
    gen = np.random.default_rng(0)
    x = gen.normal(size=(400, 4))
    table = pd.DataFrame({f"f{i}": x[:, i] for i in range(4)}
                         | {"label": np.where(x[:, 0] > 0, "yes", "no"),
                            "split": np.where(np.arange(400) < 300, "train", "test")})
    domains = {f"f{i}": {"type": "numeric", "lower": -4, "upper": 4} for i in range(4)}
    domains |= {"label": {"type": "categorical", "values": ["no", "yes"]},
                "split": {"type": "categorical", "values": ["train", "test"]}}
    split = TableSplit(column="split", train="train", test="test")
    spec = _spec(model="mlp", hidden_sizes=(16,), batch_size=30, max_physical_batch_size=30, epochs=2,
                 target_epsilon=2.0)
    result = train(spec, table, domains, split, tmp_path / "a", _Quiet(), plan=plan_job(spec, 300, 100),
                   audit=AuditSettings(canaries=20, mechanism="dp"))
    assert result.audit is not None
    assert set(result.audit) >= {"mechanism", "canaries", "guesses", "correct", "confidence",
                                 "epsilon_lower", "delta", "included"}
    assert result.audit["canaries"] == 20 and result.audit["guesses"] == 4
    assert 0 <= result.audit["correct"] <= 4 and result.audit["epsilon_lower"] <= result.epsilon <= 2.0
    two = _spec(model="mlp", hidden_sizes=(16,), batch_size=30, max_physical_batch_size=30, world_size=2)
    with pytest.raises(InvalidInput, match="flat clipping, a constant noise schedule and world_size 1"):
        train(two, table, domains, split, tmp_path / "b", _Quiet(), plan=plan_job(two, 300, 100),
              audit=AuditSettings(canaries=20))
