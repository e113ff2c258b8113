"""DP training of a dataset and its manifest, to released parameters.

Two kinds of dataset reach the engine. An anonymized table: features are encoded
from the manifest's public domains, and the rows are split into training and test
rows by the data owner's declared split column (:func:`train`). A packed image
array (:mod:`privtrain.datasets.image_arrays`): images go to the model as they are,
test rows are those the owner marked in the file's ``split`` tensor
(:func:`train_images`). Both build the registered model, run
:func:`privtrain.trainer.dp_sgd.run_dp_sgd` (or, for ``world_size`` > 1,
:func:`privtrain.trainer.distributed.run_distributed`) on the job's admitted
:class:`~privtrain.trainer.plan.JobPlan`, optionally with the privacy audit's
canaries (:mod:`privtrain.trainer.audit`), and write the final parameters with the
metadata a client needs to rebuild the model and its inputs.
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

from privtrain.datasets.image_arrays import LABEL, read_image_arrays
from privtrain.datasets.image_manifest import IMAGE_KIND
from privtrain.errors import InvalidInput, shown
from privtrain.trainer.audit import AuditSettings, CanaryAudit
from privtrain.trainer.checkpoints import save_parameters
from privtrain.trainer.device import resolve_device
from privtrain.trainer.dp_randomness import DPRandomness
from privtrain.trainer.dp_sgd import (
    CheckpointCadence,
    JobCancelled,
    Reporter,
    StepReport,
    run_dp_sgd,
)
from privtrain.trainer.features import FeatureEncoder
from privtrain.trainer.models import build_model
from privtrain.trainer.plan import JobPlan
from privtrain.trainer.spec import TrainingSpec
from privtrain.trainer.validation import PreparedModel, prepare_model, validate_modules

__all__ = [
    "IMAGE_MODELS", "JobCancelled", "Reporter", "StepReport", "TableSplit", "TrainingResult",
    "build_encoder", "check_image_model_spec", "check_model_spec", "count_correct",
    "image_model_from_parameters", "image_parameter_metadata", "model_from_parameters",
    "parameter_metadata", "split_rows", "train", "train_images", "validate_model",
]

EVAL_BATCH = 8192
# Architectures that take (C, H, W) images; the others read table rows or token ids.
IMAGE_MODELS = frozenset({"cnn", "resnet", "sequential"})


@dataclass(frozen=True)
class TableSplit:
    """The data owner's train/test split of a table: rows with ``column == train`` are
    trained on, rows with ``column == test`` held out (any other value: neither)."""

    column: str
    train: str
    test: str

    def to_dict(self) -> dict[str, str]:
        """JSON-able form (parameter metadata)."""
        return {"column": self.column, "train": self.train, "test": self.test}


@dataclass(frozen=True)
class TrainingResult:
    """Outcome of :func:`train`; ε at ``delta`` by ``accountant``.

    Who may see what (see ``docs/privacy.md``): ``test_accuracy`` is a DP release (None
    when the job released none); ``train_rows``/``test_rows`` are the published
    (noisy) counts the plan used. ``exact_*``, ``final_loss`` and ``train_seconds``
    are computed from the private rows without noise: for the operator only.
    ``audit`` holds the privacy audit's figures when the job ran one.
    """

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    test_accuracy: float | None
    test_rows: int
    train_rows: int
    exact_test_accuracy: float
    exact_test_rows: int
    exact_train_rows: int
    final_loss: float
    parameters_path: Path
    parameters_sha256: str
    parameters_bytes: int
    device: str
    train_seconds: float
    audit: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = dict(self.__dict__)
        data["parameters_path"] = str(self.parameters_path)
        return data


def split_rows(table: pd.DataFrame, split: TableSplit) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train rows, test rows) by the owner's declared split.

    Raises
    ------
    InvalidInput
        The split column is missing.
    """
    if split.column not in table.columns:
        raise InvalidInput(f"the declared split column {split.column!r} is not a column of the dataset")
    values = table[split.column].astype("string")
    return (table[(values == split.train).fillna(False)],
            table[(values == split.test).fillna(False)])


def build_encoder(spec: TrainingSpec, domains: dict[str, Any], split: TableSplit) -> FeatureEncoder:
    """Feature encoder for ``spec`` from the manifest's column domains (never the split column)."""
    return FeatureEncoder.from_manifest(
        domains, target=spec.target_column, features=spec.feature_columns, exclude=(split.column,),
    )


def check_model_spec(spec: TrainingSpec, encoder: FeatureEncoder) -> PreparedModel:
    """Build the spec's model for the encoder's features and run every submission check.

    Raises
    ------
    InvalidInput
        See :func:`privtrain.trainer.validation.prepare_model`.
    """
    return prepare_model(spec, (encoder.width,), len(encoder.classes))


def check_image_model_spec(spec: TrainingSpec, manifest: dict[str, Any]) -> PreparedModel:
    """Refuse table-only options and models on an image dataset, then run every submission check.

    The model is built for one image of the manifest's ``feature_shape`` (C, H, W)
    with ``n_classes`` outputs.

    Raises
    ------
    InvalidInput
        A table model, a target other than ``label``, or feature columns given for
        an image dataset, or see :func:`privtrain.trainer.validation.prepare_model`.
    """
    problems = []
    if spec.model not in IMAGE_MODELS:
        problems.append(f"model {shown(spec.model)} does not take images; an image dataset trains "
                        f"{sorted(IMAGE_MODELS)}")
    if spec.target_column != LABEL:
        problems.append(f"target_column {shown(spec.target_column)}: the label of an image "
                        f"dataset is the tensor {LABEL!r}")
    if spec.feature_columns:
        problems.append("feature_columns do not apply to an image dataset (its features are one tensor)")
    if problems:
        raise InvalidInput("invalid job for image dataset: " + "; ".join(problems))
    shape = tuple(int(d) for d in manifest["feature_shape"])
    try:
        return prepare_model(spec, shape, int(manifest["n_classes"]))
    except InvalidInput as exc:
        raise InvalidInput(f"{exc} (the dataset's images are {shape}, C x H x W)") from None


def validate_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot train privately, naming the offending modules.

    Raises
    ------
    InvalidInput
        ``ModuleValidator`` (strict) found unsupported modules.
    """
    validate_modules(model, fix=False)


class TestRows:
    """The held-out rows as the loop's ``evaluate``: ``model -> (correct, rows)``.

    Picklable (the arrays and the device), so each rank of a multi-process job gets it;
    ``progress`` (``(rows_done, rows_total)`` after every batch, for the stall monitor)
    stays with the process that made it.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, device: torch.device,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.features, self.labels, self.device, self.progress = features, labels, device, progress

    def __call__(self, model: nn.Module) -> tuple[int, int]:
        return count_correct(model, self.features, self.labels, self.device, self.progress), \
            len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        return {"features": self.features, "labels": self.labels, "device": str(self.device)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["features"], state["labels"], torch.device(state["device"]))  # type: ignore[misc]


@torch.no_grad()
def count_correct(model: nn.Module, features: np.ndarray, labels: np.ndarray, device: torch.device,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Rows whose arg-max logit equals the label.

    ``features`` is (rows, width) or (rows, C, H, W) float32, ``labels`` (rows,) int64 class indices.
    ``progress(rows_done, rows_total)`` is called after every batch of ``EVAL_BATCH`` rows.
    """
    model.eval()
    correct = 0
    for start in range(0, len(labels), EVAL_BATCH):
        x = torch.from_numpy(features[start : start + EVAL_BATCH]).to(device)
        y = torch.from_numpy(labels[start : start + EVAL_BATCH]).to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
        if progress is not None:
            progress(min(start + EVAL_BATCH, len(labels)), len(labels))
    model.train()
    return correct


def train(
    spec: TrainingSpec,
    table: pd.DataFrame,
    domains: dict[str, Any],
    split: TableSplit,
    out_dir: Path,
    reporter: Reporter,
    *,
    plan: JobPlan,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
    on_evaluation: Callable[[int, int], None] | None = None,
    randomness: DPRandomness | None = None,
    audit: AuditSettings | None = None,
    checkpoint_every: CheckpointCadence | None = None,
) -> TrainingResult:
    """Train ``spec.model`` on ``table`` with DP-SGD and write checkpoints and parameters.

    Parameters
    ----------
    spec : TrainingSpec
    table : DataFrame
        The anonymized dataset (train and test rows, told apart by the owner's split).
    domains : dict
        The manifest's ``columns`` (public domains) that fix the feature encoding.
    split : TableSplit
        The owner's declared split. Rows whose label is missing or undeclared are left
        out (each on its own; see :meth:`FeatureEncoder.encode_labelled`).
    out_dir : Path
        Receives ``checkpoints/`` (every epoch's end, and inside epochs as
        ``checkpoint_every`` says), the randomness key (0600) and ``parameters.safetensors``.
    reporter : Reporter
        Gets every logical step and every epoch's test accuracy.
    plan : JobPlan
        The admitted plan (published row counts, σ, releases).
    should_stop : callable
        Polled before every physical batch; True raises :class:`JobCancelled`.
    resume : bool
        Continue from the latest checkpoint in ``out_dir``.
    on_evaluation : callable, optional
        ``(rows_done, rows_total)`` after every batch of a test-set evaluation, so a
        monitor can tell a long evaluation from a stall.
    randomness : DPRandomness, optional
        The job's secret randomness (default: saved in / created for ``out_dir``).
    audit : AuditSettings, optional
        Run the privacy audit's canaries with this training (see :mod:`privtrain.trainer.audit`).
    checkpoint_every : CheckpointCadence, optional
        How often to checkpoint inside an epoch (default: every 30 s).

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
    train_rows, test_rows = split_rows(table, split)
    encoder = build_encoder(spec, domains, split)
    x_train, y_train = encoder.encode_labelled(train_rows)
    x_test, y_test = encoder.encode_labelled(test_rows)
    prepared = check_model_spec(spec, encoder)
    return _fit(spec, prepared, (x_train, y_train), (x_test, y_test), out_dir, reporter,
                lambda epsilon: parameter_metadata(spec, encoder, split, epsilon), plan=plan,
                should_stop=should_stop, resume=resume, device=device, started=started,
                on_evaluation=on_evaluation, randomness=randomness, audit=audit,
                checkpoint_every=checkpoint_every)


def train_images(
    spec: TrainingSpec,
    data: bytes,
    manifest: dict[str, Any],
    out_dir: Path,
    reporter: Reporter,
    *,
    plan: JobPlan,
    should_stop: Callable[[], bool] = lambda: False,
    resume: bool = False,
    on_evaluation: Callable[[int, int], None] | None = None,
    randomness: DPRandomness | None = None,
    audit: AuditSettings | None = None,
    checkpoint_every: CheckpointCadence | None = None,
) -> TrainingResult:
    """Train ``spec.model`` on a packed image dataset with DP-SGD; as :func:`train` otherwise.

    Parameters
    ----------
    data : bytes
        The packed safetensors file (``features`` (N, C, H, W) float32, ``label`` (N,) int64,
        ``split`` (N,) uint8, 1 for a test row), already checked against the manifest's
        ``output_sha256``.
    manifest : dict
        The verified image manifest (``feature_shape``, ``n_classes``, ``label_values``).

    Raises
    ------
    InvalidInput
        A file that does not match its manifest, or see :func:`check_image_model_spec`.
    JobCancelled
        ``should_stop`` returned True.
    """
    started = time.perf_counter()
    device = resolve_device(spec.device)
    torch.manual_seed(spec.seed)
    features, classes, is_test = read_image_arrays(data, manifest)
    prepared = check_image_model_spec(spec, manifest)
    return _fit(spec, prepared, (features[~is_test], classes[~is_test]),
                (features[is_test], classes[is_test]), out_dir, reporter,
                lambda epsilon: image_parameter_metadata(spec, manifest, epsilon), plan=plan,
                should_stop=should_stop, resume=resume, device=device, started=started,
                on_evaluation=on_evaluation, randomness=randomness, audit=audit,
                checkpoint_every=checkpoint_every)


def _fit(
    spec: TrainingSpec,
    prepared: PreparedModel,
    train_arrays: tuple[np.ndarray, np.ndarray],
    test_arrays: tuple[np.ndarray, np.ndarray],
    out_dir: Path,
    reporter: Reporter,
    metadata: Callable[[float], dict[str, str]],
    *,
    plan: JobPlan,
    should_stop: Callable[[], bool],
    resume: bool,
    device: torch.device,
    started: float,
    on_evaluation: Callable[[int, int], None] | None = None,
    randomness: DPRandomness | None = None,
    audit: AuditSettings | None = None,
    checkpoint_every: CheckpointCadence | None = None,
) -> TrainingResult:
    """Run DP-SGD on prepared inputs and write ``parameters.safetensors`` with ``metadata(ε)``."""
    train_data = TensorDataset(torch.from_numpy(train_arrays[0]), torch.from_numpy(train_arrays[1]))
    if len(train_data) == 0:
        # The worker's errors are the operator's to read (the trainer gets a fixed sentence).
        raise InvalidInput("the dataset has no training rows with a declared label")
    evaluate = TestRows(*test_arrays, device, on_evaluation)
    if randomness is None and not resume:
        randomness = DPRandomness.load_or_create(out_dir)
    canaries = None
    if audit is not None:
        randomness = randomness or DPRandomness.load(out_dir)
        canaries = CanaryAudit(prepared.model, audit, randomness, sample_rate=plan.sample_rate,
                               delta=plan.delta)
    outcome = run_dp_sgd(
        spec if canaries is None else canaries.training_spec(spec), prepared.model.to(device),
        train_data, evaluate, out_dir, reporter, plan=plan, randomness=randomness,
        should_stop=should_stop, resume=resume, device=device,
        max_physical_batch_size=prepared.max_physical_batch_size,
        clipping_mode=prepared.clipping_mode, noise_observer=canaries,
        private=audit is None or audit.mechanism == "dp", checkpoint_every=checkpoint_every,
    )
    params_path = out_dir / "parameters.safetensors"
    sha = save_parameters(params_path, outcome.model.state_dict(), metadata(outcome.epsilon))
    return TrainingResult(
        epsilon=outcome.epsilon, delta=plan.delta, accountant=plan.accountant,
        noise_multiplier=outcome.noise_multiplier, sample_rate=outcome.sample_rate,
        steps=outcome.steps, test_accuracy=outcome.test_accuracy, test_rows=plan.test_rows,
        train_rows=plan.train_rows, exact_test_accuracy=outcome.exact_test_accuracy,
        exact_test_rows=len(evaluate.labels), exact_train_rows=len(train_data),
        final_loss=outcome.final_loss,
        parameters_path=params_path, parameters_sha256=sha,
        parameters_bytes=params_path.stat().st_size, device=str(device),
        train_seconds=time.perf_counter() - started,
        audit=None if canaries is None else canaries.result().to_dict(),
    )


def parameter_metadata(spec: TrainingSpec, encoder: FeatureEncoder, split: TableSplit,
                       epsilon: float) -> dict[str, str]:
    """safetensors metadata that lets a client rebuild the model and its feature encoding.

    ``split`` is the owner's declaration (column and values), which is public; nothing
    here is computed from the rows.
    """
    return {
        "model": _model_json(spec),
        "features": encoder.to_json(),
        "split": json.dumps(split.to_dict()),
        "privacy": _privacy_json(spec, epsilon),
    }


def image_parameter_metadata(spec: TrainingSpec, manifest: dict[str, Any], epsilon: float) -> dict[str, str]:
    """safetensors metadata that lets a client rebuild the model and find the test rows.

    ``features`` holds the image shape and label values; ``split`` says that the test
    rows are those marked in the packed file's ``split`` tensor.
    """
    return {
        "model": _model_json(spec),
        "features": json.dumps({
            "kind": IMAGE_KIND, "feature_shape": list(manifest["feature_shape"]),
            "label_values": list(manifest["label_values"]),
        }),
        "split": json.dumps({"kind": "tensor", "tensor": "split"}),
        "privacy": _privacy_json(spec, epsilon),
    }


def _model_json(spec: TrainingSpec) -> str:
    return json.dumps({
        "name": spec.model, "options": spec.model_build_options,
        "fix_model": spec.fix_model, "frozen": spec.freeze_unused,
    })


def _privacy_json(spec: TrainingSpec, epsilon: float) -> str:
    return json.dumps({"epsilon": epsilon, "delta": spec.target_delta, "accountant": spec.accountant})


def model_from_parameters(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[nn.Module, FeatureEncoder]:
    """Rebuild the trained model and its encoder from a parameter file's contents.

    Raises
    ------
    InvalidInput
        The metadata names an unknown model or the tensors do not fit it.
    """
    encoder = FeatureEncoder.from_json(metadata["features"])
    return _load_model(tensors, metadata, (encoder.width,), len(encoder.classes)), encoder


def image_model_from_parameters(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model trained on images, and its ``features`` metadata (shape, label values).

    Raises
    ------
    InvalidInput
        The parameters were not trained on an image dataset, or do not fit their model.
    """
    info = json.loads(metadata["features"])
    if info.get("kind") != IMAGE_KIND:
        raise InvalidInput("these parameters were trained on a table, not on an image dataset")
    model = _load_model(tensors, metadata, tuple(info["feature_shape"]), len(info["label_values"]))
    return model, info


def _load_model(tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    model_info = json.loads(metadata["model"])
    model = build_model(model_info["name"], input_shape, n_classes, model_info["options"])
    if model_info.get("fix_model"):
        model, _ = validate_modules(model, fix=True)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InvalidInput(f"parameters do not fit model {model_info['name']!r}: {exc}") from None
    return model
