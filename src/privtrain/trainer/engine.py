"""The DP-SGD training loop (Abadi et al. 2016, "Deep Learning with Differential Privacy").

Built from Opacus' parts so the sample rate is ours: q = logical batch / training
rows, Poisson sampling through ``DPDataLoader``, per-sample gradients through
``GradSampleModule``, clipping and Gaussian noise through ``DPOptimizer`` over
momentum SGD, physical batches through ``BatchMemoryManager``, and ε through the
chosen accountant hooked to every logical step.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import TensorDataset

from privtrain.errors import FailedPrecondition, InvalidInput, PrivtrainError
from privtrain.trainer.accounting import (
    EpsilonTracker,
    accountant_epsilon,
    accountant_state,
    calibrate_noise_multiplier,
)
from privtrain.trainer.checkpoints import save_checkpoint, save_parameters
from privtrain.trainer.device import resolve_device
from privtrain.trainer.features import FeatureEncoder
from privtrain.trainer.models import build_model
from privtrain.trainer.spec import TrainingSpec

EVAL_BATCH = 8192
# Per-sample gradients multiply parameter memory by the physical batch size.
MAX_PARAMETERS = 20_000_000


class JobCancelled(PrivtrainError):
    """The job was asked to stop between two steps."""

    grpc_code = "CANCELLED"


@dataclass(frozen=True)
class StepReport:
    """One logical DP-SGD step.

    ``loss`` is the mean cross-entropy over the step's samples, or None for an
    empty Poisson batch (which is still a step: noise added, ε advanced).
    ``samples_per_s`` is samples / wall seconds of the step; ``epsilon`` an
    upper bound of ε spent so far (see :class:`EpsilonTracker`).
    """

    step: int
    total_steps: int
    epoch: int
    loss: float | None
    batch_size: int
    samples_per_s: float
    epsilon: float


class Reporter(Protocol):
    """Receives progress from :func:`train`."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_step(self, report: StepReport) -> None: ...

    def on_epoch(self, epoch: int, test_accuracy: float, epsilon: float) -> None: ...


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


def check_model_spec(spec: TrainingSpec, encoder: FeatureEncoder) -> None:
    """Build the spec's model without allocating it and refuse what cannot train.

    The model is instantiated on PyTorch's ``meta`` device, so a request for
    billions of parameters costs nothing to inspect.

    Raises
    ------
    InvalidInput
        Unknown model, more than :data:`MAX_PARAMETERS` parameters, or modules
        Opacus cannot train privately.
    """
    with torch.device("meta"):
        model = build_model(spec.model, encoder.width, len(encoder.classes), spec.hidden_sizes)
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise InvalidInput(
            f"model {spec.model!r} with hidden_sizes {list(spec.hidden_sizes)} has {count:,} "
            f"parameters; the limit is {MAX_PARAMETERS:,}"
        )
    validate_model(model)


def validate_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot train privately, naming the offending modules.

    Raises
    ------
    InvalidInput
        ``ModuleValidator`` (strict) found unsupported modules.
    """
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise InvalidInput("model is not DP-compatible: " + "; ".join(str(e) for e in errors))


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
        Polled before every logical step; True raises :class:`JobCancelled`.

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
    n_train = len(y_train)
    if spec.batch_size > n_train:
        raise InvalidInput(f"batch_size {spec.batch_size} exceeds the {n_train} training rows")

    check_model_spec(spec, encoder)
    model = build_model(spec.model, encoder.width, len(encoder.classes), spec.hidden_sizes).to(device)

    sample_rate = spec.batch_size / n_train
    steps_per_epoch = int(1 / sample_rate)
    total_steps = spec.epochs * steps_per_epoch
    sigma = calibrate_noise_multiplier(
        target_epsilon=spec.target_epsilon, target_delta=spec.target_delta,
        sample_rate=sample_rate, steps=total_steps, accountant=spec.accountant,
    )

    sampling_gen = torch.Generator().manual_seed(spec.seed)
    noise_gen = torch.Generator(device=device).manual_seed(spec.seed + 1)
    gsm = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(
            gsm.parameters(), lr=spec.learning_rate, momentum=spec.momentum,
            weight_decay=spec.weight_decay,
        ),
        noise_multiplier=sigma,
        max_grad_norm=spec.max_grad_norm,
        expected_batch_size=spec.batch_size,
        loss_reduction="mean",
        generator=noise_gen,
    )
    accountant = create_accountant(mechanism=spec.accountant)
    accountant_hook = accountant.get_optimizer_hook_fn(sample_rate=sample_rate)
    logical_steps_taken = [0]

    def on_logical_step(opt: DPOptimizer) -> None:
        accountant_hook(opt)
        logical_steps_taken[0] += 1

    optimizer.attach_step_hook(on_logical_step)
    loader = DPDataLoader(
        TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        sample_rate=sample_rate,
        generator=sampling_gen,
    )
    tracker = EpsilonTracker(spec.accountant, sigma, sample_rate, total_steps, spec.target_delta)
    criterion = nn.CrossEntropyLoss()
    reporter.on_start({
        "noise_multiplier": sigma, "sample_rate": sample_rate, "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch, "train_rows": n_train, "test_rows": len(y_test),
        "device": str(device), "features": encoder.width,
    })

    step = 0
    last_loss = float("nan")
    test_acc = 0.0
    checkpoints = out_dir / "checkpoints"
    for epoch in range(1, spec.epochs + 1):
        with BatchMemoryManager(
            data_loader=loader, max_physical_batch_size=spec.max_physical_batch_size,
            optimizer=optimizer,
        ) as batches:
            loss_sum, samples, step_start = 0.0, 0, time.perf_counter()
            for xb, yb in batches:
                if should_stop():
                    raise JobCancelled(f"cancelled before step {step + 1}")
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(gsm(xb), yb)
                with warnings.catch_warnings():
                    # Opacus' hooks on the first layer fire without input grads, by design.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                if len(yb):
                    loss_sum += float(loss.detach()) * len(yb)
                    samples += len(yb)
                before = logical_steps_taken[0]
                optimizer.step()
                if logical_steps_taken[0] == before:
                    continue  # a physical batch inside a larger logical one
                step += 1
                elapsed = max(time.perf_counter() - step_start, 1e-9)
                mean_loss = loss_sum / samples if samples else None
                if mean_loss is not None:
                    last_loss = mean_loss
                reporter.on_step(StepReport(
                    step=step, total_steps=total_steps, epoch=epoch, loss=mean_loss,
                    batch_size=samples, samples_per_s=samples / elapsed, epsilon=tracker.after(step),
                ))
                loss_sum, samples, step_start = 0.0, 0, time.perf_counter()
        test_acc = accuracy(gsm._module, x_test, y_test, device)
        epsilon_now = tracker.after(step)
        reporter.on_epoch(epoch, test_acc, epsilon_now)
        save_checkpoint(
            checkpoints, epoch=epoch, model_state=gsm._module.state_dict(),
            optimizer=optimizer.original_optimizer,
            state={
                "epoch": epoch, "step": step, "epsilon_upper_bound": epsilon_now,
                "delta": spec.target_delta,
                "accountant": accountant_state(accountant), "spec": spec.to_dict(),
                "sampling_rng": sampling_gen.get_state().tolist(),
            },
        )

    epsilon = accountant_epsilon(accountant, spec.target_delta)
    if step != total_steps or epsilon > spec.target_epsilon:
        raise FailedPrecondition(
            f"accounting check failed: {step}/{total_steps} steps, ε={epsilon:.6f} "
            f"(target {spec.target_epsilon})"
        )
    params_path = out_dir / "parameters.safetensors"
    sha = save_parameters(params_path, gsm._module.state_dict(), parameter_metadata(spec, encoder, epsilon))
    return TrainingResult(
        epsilon=epsilon, delta=spec.target_delta, accountant=spec.accountant,
        noise_multiplier=sigma, sample_rate=sample_rate, steps=step, test_accuracy=test_acc,
        test_rows=len(y_test), train_rows=n_train, final_loss=last_loss,
        parameters_path=params_path, parameters_sha256=sha,
        parameters_bytes=params_path.stat().st_size, device=str(device),
        train_seconds=time.perf_counter() - started,
    )


def parameter_metadata(spec: TrainingSpec, encoder: FeatureEncoder, epsilon: float) -> dict[str, str]:
    """safetensors metadata that lets a client rebuild the model and its feature encoding."""
    return {
        "model": json.dumps({"name": spec.model, "hidden_sizes": list(spec.hidden_sizes)}),
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
    model = build_model(model_info["name"], encoder.width, len(encoder.classes), model_info["hidden_sizes"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InvalidInput(f"parameters do not fit model {model_info['name']!r}: {exc}") from None
    return model, encoder
