"""Real data for the DP-SGD option tests: numeric UCI Adult features as tensors."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from privtrain.datasets.adult import fetch_adult
from privtrain.trainer.plan import JobPlan, plan_job
from privtrain.trainer.spec import TrainingSpec

NUMERIC = ("age", "education_num", "capital_gain", "capital_loss", "hours_per_week")


def adult_tensors(rows: int) -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    """``(train, x_test, y_test)``: the first ``rows`` training rows and 2,000 test rows of Adult,
    standardised numeric columns plus married / male indicators (7 float32 features), label
    income > 50K."""
    table = pd.read_csv(fetch_adult())

    def encode(part: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        numeric = part[list(NUMERIC)].astype("float64")
        numeric = (numeric - reference.mean()) / reference.std()
        flags = pd.DataFrame({
            "married": part["marital_status"].str.startswith("Married").astype(float),
            "male": (part["sex"] == "Male").astype(float),
        })
        x = torch.tensor(pd.concat([numeric, flags], axis=1).to_numpy(), dtype=torch.float32)
        y = torch.tensor(part["income"].str.startswith(">50K").to_numpy(), dtype=torch.long)
        return x, y

    train = table[table["split"] == "train"].head(rows)
    reference = train[list(NUMERIC)].astype("float64")
    x, y = encode(train)
    x_test, y_test = encode(table[table["split"] == "test"].head(2000))
    return TensorDataset(x, y), x_test, y_test


def accuracy_on(x: torch.Tensor, y: torch.Tensor) -> Any:
    """An ``evaluate`` callback for ``run_dp_sgd``: (correct predictions, rows) on the held-out rows."""

    def evaluate(model: torch.nn.Module) -> tuple[int, int]:
        model.eval()
        with torch.no_grad():
            correct = int((model(x).argmax(dim=1) == y).sum())
        model.train()
        return correct, len(y)

    return evaluate


def plan_for(spec: TrainingSpec, train: TensorDataset, test_rows: int = 2000) -> JobPlan:
    """The job's plan, taking the exact row counts as the published ones (tests only)."""
    return plan_job(spec, len(train), test_rows)


class Recorder:
    """Collects what the loop reports."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.steps: list[Any] = []
        # (epoch, released accuracy or None, exact accuracy, ε)
        self.epochs: list[tuple[int, float | None, float, float]] = []

    def on_start(self, info: dict[str, Any]) -> None:
        self.info = info

    def on_step(self, report: Any) -> None:
        self.steps.append(report)

    def on_epoch(self, epoch: int, released_accuracy: float | None, exact_accuracy: float,
                 epsilon: float) -> None:
        self.epochs.append((epoch, released_accuracy, exact_accuracy, epsilon))
