"""Tabular DP training: from an anonymized table and its manifest to released parameters.

Encodes features from the manifest's public domains, builds the registered
model, runs :func:`privtrain.trainer.dp_sgd.run_dp_sgd` (or, for ``world_size`` > 1,
:func:`privtrain.trainer.distributed.run_distributed`), and writes the final
parameters with the metadata a client needs to rebuild model and encoding.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.errors import InvalidInput
from privtrain.trainer.checkpoints import save_parameters
from privtrain.trainer.device import resolve_device
from privtrain.trainer.distributed import run_distributed
from privtrain.trainer.dp_sgd import JobCancelled, Reporter, StepReport, run_dp_sgd
from privtrain.trainer.features import FeatureEncoder
from privtrain.trainer.models import build_model
from privtrain.trainer.spec import TrainingSpec
from privtrain.trainer.validation import PreparedModel, prepare_model, validate_modules

__all__ = [
    "JobCancelled", "Reporter", "StepReport", "TrainingResult", "accuracy", "build_encoder",
    "check_model_spec", "model_from_parameters", "parameter_metadata", "split_rows", "train",
    "validate_model",
]

EVAL_BATCH = 8192


@dataclass(frozen=True)
class TrainingResult:
    """Outcome of :func:`train`; ε at ``delta`` by ``accountant``."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    test_accuracy: float
    test_rows: int
    train_rows: int
    final_loss: float
    parameters_path: Path
    parameters_sha256: str
    parameters_bytes: int
    device: str
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = dict(self.__dict__)
        data["parameters_path"] = str(self.parameters_path)
        return data


def split_rows(table: pd.DataFrame, spec: TrainingSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, test rows) by ``spec.split_column``.

    Raises
    ------
    InvalidInput
        The split column is missing or either split is empty.
    """
    if spec.split_column not in table.columns:
        raise InvalidInput(f"split_column {spec.split_column!r} is not a column of the dataset")
    split = table[spec.split_column].astype("string")
    train = table[(split == spec.train_split).fillna(False)]
    test = table[(split == spec.test_split).fillna(False)]
    if train.empty:
        raise InvalidInput(f"no rows with {spec.split_column} == {spec.train_split!r}")
    if test.empty:
        raise InvalidInput(f"no rows with {spec.split_column} == {spec.test_split!r}")
    return train, test


def build_encoder(spec: TrainingSpec, domains: dict[str, Any]) -> FeatureEncoder:
    """Feature encoder for ``spec`` from the manifest's column domains."""
    return FeatureEncoder.from_manifest(
        domains, target=spec.target_column, features=spec.feature_columns,
        exclude=(spec.split_column,),
    )


def check_model_spec(spec: TrainingSpec, encoder: FeatureEncoder) -> PreparedModel:
    """Build the spec's model for the encoder's features and run every submission check.

    Raises
    ------
    InvalidInput
        See :func:`privtrain.trainer.validation.prepare_model`.
    """
    return prepare_model(spec, (encoder.width,), len(encoder.classes))


def validate_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot train privately, naming the offending modules.

    Raises
    ------
    InvalidInput
        ``ModuleValidator`` (strict) found unsupported modules.
    """
    validate_modules(model, fix=False)


@torch.no_grad()
def accuracy(model: nn.Module, features: np.ndarray, labels: np.ndarray, device: torch.device) -> float:
    """Share of rows whose arg-max logit equals the label; ``features`` is (rows, width) float32."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        x = torch.from_numpy(features[start : start + EVAL_BATCH]).to(device)
        y = torch.from_numpy(labels[start : start + EVAL_BATCH]).to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    model.train()
    return correct / max(1, len(labels))


def train(
    spec: TrainingSpec,
    table: pd.DataFrame,
    domains: dict[str, Any],
    out_dir: Path,
    reporter: Reporter,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    resume: bool = False,
) -> TrainingResult:
    """Train ``spec.model`` on ``table`` with DP-SGD and write checkpoints and parameters.

    Parameters
    ----------
    spec : TrainingSpec
    table : DataFrame
        The anonymized dataset (train and test rows, told apart by the split column).
    domains : dict
        The manifest's ``columns`` (public domains) that fix the feature encoding.
    out_dir : Path
        Receives ``checkpoints/epoch-NNNN.*`` and ``parameters.safetensors``.
    reporter : Reporter
        Gets every logical step and every epoch's test accuracy.
    should_stop : callable
        Polled before every physical batch; True raises :class:`JobCancelled`.
    resume : bool
        Continue from the latest checkpoint in ``out_dir``.

    Raises
    ------
    InvalidInput
        Bad columns, model or hyper-parameters (found before the first step).
    JobCancelled
        ``should_stop`` returned True.
    """
    started = time.perf_counter()
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    train_rows, test_rows = split_rows(table, spec)
    encoder = build_encoder(spec, domains)
    x_train, y_train = encoder.encode(train_rows)
    x_test, y_test = encoder.encode(test_rows)
    prepared = check_model_spec(spec, encoder)
    train_data = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))

    def evaluate(model: nn.Module) -> float:
        return accuracy(model, x_test, y_test, device)

    if spec.world_size > 1:
        outcome = run_distributed(
            spec, prepared.model.to(device), train_data, evaluate, out_dir, reporter,
            should_stop=should_stop, resume=resume, device=device,
            max_physical_batch_size=prepared.max_physical_batch_size,
        )
    else:
        outcome = run_dp_sgd(
            spec, prepared.model.to(device), train_data, evaluate, out_dir, reporter,
            should_stop=should_stop, resume=resume, device=device,
            max_physical_batch_size=prepared.max_physical_batch_size,
            clipping_mode=prepared.clipping_mode,
        )
    params_path = out_dir / "parameters.safetensors"
    sha = save_parameters(params_path, outcome.model.state_dict(),
                          parameter_metadata(spec, encoder, outcome.epsilon))
    return TrainingResult(
        epsilon=outcome.epsilon, delta=spec.target_delta, accountant=spec.accountant,
        noise_multiplier=outcome.noise_multiplier, sample_rate=outcome.sample_rate,
        steps=outcome.steps, test_accuracy=outcome.test_accuracy, test_rows=len(y_test),
        train_rows=len(y_train), final_loss=outcome.final_loss, parameters_path=params_path,
        parameters_sha256=sha, parameters_bytes=params_path.stat().st_size, device=str(device),
        train_seconds=time.perf_counter() - started,
    )


def parameter_metadata(spec: TrainingSpec, encoder: FeatureEncoder, epsilon: float) -> dict[str, str]:
    """safetensors metadata that lets a client rebuild the model and its feature encoding."""
    return {
        "model": json.dumps({
            "name": spec.model, "options": {"hidden_sizes": list(spec.hidden_sizes), **spec.model_options},
            "fix_model": spec.fix_model, "frozen": spec.freeze_unused,
        }),
        "features": encoder.to_json(),
        "split": json.dumps({
            "column": spec.split_column, "train": spec.train_split, "test": spec.test_split,
        }),
        "privacy": json.dumps({
            "epsilon": epsilon, "delta": spec.target_delta, "accountant": spec.accountant,
        }),
    }


def model_from_parameters(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[nn.Module, FeatureEncoder]:
    """Rebuild the trained model and its encoder from a parameter file's contents.

    Raises
    ------
    InvalidInput
        The metadata names an unknown model or the tensors do not fit it.
    """
    model_info = json.loads(metadata["model"])
    encoder = FeatureEncoder.from_json(metadata["features"])
    model = build_model(model_info["name"], (encoder.width,), len(encoder.classes), model_info["options"])
    if model_info.get("fix_model"):
        model, _ = validate_modules(model, fix=True)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InvalidInput(f"parameters do not fit model {model_info['name']!r}: {exc}") from None
    return model, encoder
