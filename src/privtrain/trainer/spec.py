"""The training job specification and its validation.

A :class:`TrainingSpec` is what a trainer asks for; it is validated before any
privacy budget is reserved, so a bad field never costs ε.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from privtrain.errors import InvalidInput, shown

ACCOUNTANTS = ("prv", "rdp")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "step")
CLIPPING = ("flat", "per_layer", "adaptive")
NOISE_SCHEDULES = ("constant", "exponential", "step")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
TEST_ACCURACY_RELEASES = ("every_epoch", "final", "none")
MAX_WORLD_SIZE = 16
MAX_HIDDEN_LAYERS = 64
# Lowest last-epoch σ factor of a decaying noise schedule (σ_last / σ_first). Below it
# the early epochs carry almost all the noise (a 1000x fall within one job) and the
# calibration's σ bracket, σ₀ up to σ₀ / factor, reaches σ where accountants lose
# precision or diverge.
MIN_NOISE_FACTOR = 1e-3
# Most distinct σ a noise schedule may use. Every ε evaluation composes one privacy random
# variable per level (PRV: the costly part of an evaluation), and a job makes a few dozen of
# them (calibration, then one per epoch end for the reported ε).
MAX_NOISE_LEVELS = 20


@dataclass(frozen=True)
class TrainingSpec:
    """Hyper-parameters of one DP-SGD job.

    Attributes
    ----------
    dataset_id : str
        Dataset to train on.
    model : str
        Registered architecture (``logistic_regression``, ``mlp``).
    hidden_sizes : tuple of int
        Hidden layer widths for ``mlp``.
    target_column : str
        Label column; its manifest domain gives the classes.
    feature_columns : tuple of str
        Columns to use; empty means every usable column the manifest declares. Which
        rows are trained on and which held out is the data owner's declaration, not
        the trainer's.
    target_epsilon, target_delta : float
        (ε, δ) the whole job may spend; the noise multiplier σ is calibrated so
        that the achieved ε is at most ``target_epsilon``.
    epochs : int
        Expected passes over the training rows; steps = epochs × ⌊1/q⌋.
    batch_size : int
        Logical (expected) batch size B; sample_rate q = B / published training rows
        (Poisson sampling).
    max_physical_batch_size : int
        Largest batch put through the model at once (memory bound).
    max_grad_norm : float
        Per-sample clipping bound C (L2).
    learning_rate, momentum, weight_decay : float
        SGD hyper-parameters.
    seed : int
        Fixes the model's initialisation only. Poisson sampling and noise come from a
        per-job secret (:mod:`privtrain.trainer.dp_randomness`).
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    accountant : str
        ``prv`` (Gopi et al. 2021) or ``rdp`` (Mironov 2017).
    noise_multiplier : float or None
        σ to use as is (refused if its ε exceeds the target); None calibrates σ.
    optimizer : str
        ``sgd`` (momentum, optionally Nesterov) or ``adam``.
    nesterov : bool
        Nesterov momentum for ``sgd``.
    lr_schedule : str
        ``constant``, ``cosine`` (to 0 over all steps) or ``step`` (×0.1 at 50% and 75%).
    model_options : dict
        Architecture options (see :mod:`privtrain.trainer.architectures`).
    fix_model : bool
        Replace what Opacus cannot train (BatchNorm, in-place activations, LSTM) instead
        of refusing the model.
    freeze_unused : bool
        Freeze parameters the forward never uses instead of refusing the model.
    world_size : int
        Training processes (1 to :data:`MAX_WORLD_SIZE`); above 1 the job runs under
        ``torch.distributed``, one GPU per process on CUDA (see
        :mod:`privtrain.trainer.distributed`). Every option works at every world size; the
        privacy analysis is that of one process: same q, σ and steps.
    clipping : str
        ``flat`` (one bound C on the whole per-sample gradient), ``per_layer``
        (C / sqrt(L) on each of the L trainable tensors) or ``adaptive`` (C starts at
        ``max_grad_norm`` and follows a private quantile of the per-sample gradient
        norms; Andrew et al. 2021, see :mod:`privtrain.trainer.adaptive_clipping`).
    target_unclipped_quantile : float
        Adaptive clipping: γ in (0, 1), the fraction of samples whose norm should stay
        within C (paper default 0.5).
    clipbound_learning_rate : float
        Adaptive clipping: η_C > 0 of the geometric update C ← C·exp(−η_C(b̃ − γ)) (paper: 0.2).
    min_clipbound, max_clipbound : float
        Adaptive clipping: bounds C is clamped to, 0 < min < max.
    unclipped_num_std : float or None
        Adaptive clipping: σ_b, std of the noise on the unclipped count; None means
        batch_size / 20 (paper default). Must exceed σ / 2 for every step's σ.
    noise_schedule : str
        ``constant``, ``exponential`` (σ × ``noise_gamma`` every epoch) or ``step``
        (σ × ``noise_gamma`` every ``noise_step_epochs`` epochs); the scale is calibrated
        so that the composed ε of all steps is at most ``target_epsilon``
        (see :mod:`privtrain.trainer.noise_schedule`). With ``noise_multiplier`` set,
        that σ is the first epoch's.
    noise_gamma : float
        Decay factor in (0, 1] of the ``exponential`` and ``step`` noise schedules; the last
        epoch's factor (γ^(epochs-1), or γ^⌊(epochs-1)/noise_step_epochs⌋) must be at least
        :data:`MIN_NOISE_FACTOR`, and the schedule may use at most :data:`MAX_NOISE_LEVELS`
        distinct σ.
    noise_step_epochs : int
        Epochs between two decays of the ``step`` noise schedule; below ``epochs``.
    precision : str
        ``fp32`` or ``bf16``: forward and loss under ``torch.autocast`` in bfloat16;
        parameters, per-sample gradient norms, clipping and noise stay float32.
    compile : bool
        ``torch.compile`` the evaluation forward (the training step stays eager: compiling it
        with the clipping hooks showed no consistent gain, see ``bench/compile_speed.py``).
    release_test_accuracy : str
        When a test accuracy is released: ``every_epoch``, ``final`` or ``none``. Each
        release is the count of correct test predictions plus Gaussian noise of std
        ``test_accuracy_noise`` rows (sensitivity 1), over the published test rows; its
        cost is part of the job's ε (the calibration includes it).
    test_accuracy_noise : float
        Std, in rows, of the noise on each released count of correct test predictions.
    """

    dataset_id: str
    target_column: str
    model: str = "mlp"
    hidden_sizes: tuple[int, ...] = (64,)
    feature_columns: tuple[str, ...] = ()
    target_epsilon: float = 3.0
    target_delta: float = 1e-5
    epochs: int = 5
    batch_size: int = 512
    max_physical_batch_size: int = 256
    max_grad_norm: float = 1.0
    learning_rate: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    accountant: str = "prv"
    noise_multiplier: float | None = None
    optimizer: str = "sgd"
    nesterov: bool = False
    lr_schedule: str = "constant"
    model_options: dict[str, Any] = field(default_factory=dict)
    fix_model: bool = False
    freeze_unused: bool = False
    clipping: str = "flat"
    world_size: int = 1
    target_unclipped_quantile: float = 0.5
    clipbound_learning_rate: float = 0.2
    min_clipbound: float = 1e-3
    max_clipbound: float = 1e3
    unclipped_num_std: float | None = None
    noise_schedule: str = "constant"
    noise_gamma: float = 0.9
    noise_step_epochs: int = 1
    precision: str = "fp32"
    compile: bool = False
    release_test_accuracy: str = "every_epoch"
    test_accuracy_noise: float = 20.0

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise InvalidInput("invalid job spec: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out: list[str] = []

        def positive(name: str, value: float) -> None:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                out.append(f"{name} must be a finite number > 0, got {shown(value)}")

        if not self.dataset_id:
            out.append("dataset_id is required")
        if not self.target_column:
            out.append("target_column is required")
        positive("target_epsilon", self.target_epsilon)
        if not (0 < self.target_delta < 1):
            out.append(f"target_delta must be in (0, 1), got {shown(self.target_delta)}")
        for name in ("epochs", "batch_size", "max_physical_batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                out.append(f"{name} must be an integer >= 1, got {shown(value)}")
        positive("max_grad_norm", self.max_grad_norm)
        positive("learning_rate", self.learning_rate)
        if not (0 <= self.momentum < 1):
            out.append(f"momentum must be in [0, 1), got {shown(self.momentum)}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            out.append(f"weight_decay must be >= 0, got {shown(self.weight_decay)}")
        if len(self.hidden_sizes) > MAX_HIDDEN_LAYERS:
            out.append(f"hidden_sizes lists {len(self.hidden_sizes)} layers; the limit is "
                       f"{MAX_HIDDEN_LAYERS}")
        elif any(h < 1 for h in self.hidden_sizes):
            out.append(f"hidden_sizes must all be >= 1, got {shown(list(self.hidden_sizes))}")
        if self.device not in DEVICES:
            out.append(f"device must be one of {DEVICES}, got {shown(self.device)}")
        if self.accountant not in ACCOUNTANTS:
            out.append(f"accountant must be one of {ACCOUNTANTS}, got {shown(self.accountant)}")
        if self.optimizer not in OPTIMIZERS:
            out.append(f"optimizer must be one of {OPTIMIZERS}, got {shown(self.optimizer)}")
        if self.clipping not in CLIPPING:
            out.append(f"clipping must be one of {CLIPPING}, got {shown(self.clipping)}")
        out.extend(self._adaptive_problems())
        if self.noise_schedule not in NOISE_SCHEDULES:
            out.append(f"noise_schedule must be one of {NOISE_SCHEDULES}, got "
                       f"{shown(self.noise_schedule)}")
        out.extend(self._noise_schedule_problems())
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {PRECISIONS}, got {shown(self.precision)}")
        if self.release_test_accuracy not in TEST_ACCURACY_RELEASES:
            out.append(f"release_test_accuracy must be one of {TEST_ACCURACY_RELEASES}, got "
                       f"{shown(self.release_test_accuracy)}")
        positive("test_accuracy_noise", self.test_accuracy_noise)
        if self.lr_schedule not in LR_SCHEDULES:
            out.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {shown(self.lr_schedule)}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            out.append("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.noise_multiplier is not None and not (
            isinstance(self.noise_multiplier, (int, float))
            and math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            out.append(f"noise_multiplier must be a finite number > 0, got "
                       f"{shown(self.noise_multiplier)}")
        if not (isinstance(self.world_size, int) and 1 <= self.world_size <= MAX_WORLD_SIZE):
            out.append(f"world_size must be an integer in [1, {MAX_WORLD_SIZE}], got "
                       f"{shown(self.world_size)}")
        try:
            json.dumps(self.model_options)
        except (TypeError, ValueError):
            out.append("model_options must be a JSON object")
        if self.seed < 0:
            out.append(f"seed must be >= 0, got {shown(self.seed)}")
        if self.target_column in self.feature_columns:
            out.append(f"target_column {shown(self.target_column)} is also listed as a feature")
        return out

    def _adaptive_problems(self) -> list[str]:
        out: list[str] = []
        if not (isinstance(self.target_unclipped_quantile, (int, float))
                and 0 < self.target_unclipped_quantile < 1):
            out.append(f"target_unclipped_quantile must be in (0, 1), got "
                       f"{shown(self.target_unclipped_quantile)}")
        for name in ("clipbound_learning_rate", "min_clipbound", "max_clipbound"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                out.append(f"{name} must be a finite number > 0, got {shown(value)}")
        if (isinstance(self.min_clipbound, (int, float)) and isinstance(self.max_clipbound, (int, float))
                and self.min_clipbound >= self.max_clipbound):
            out.append(f"min_clipbound {self.min_clipbound} must be below max_clipbound {self.max_clipbound}")
        elif (self.clipping == "adaptive" and isinstance(self.max_grad_norm, (int, float))
              and not self.min_clipbound <= self.max_grad_norm <= self.max_clipbound):
            out.append(f"max_grad_norm {self.max_grad_norm} (the initial clip bound) must be within "
                       f"[min_clipbound, max_clipbound] = [{self.min_clipbound}, {self.max_clipbound}]")
        if self.unclipped_num_std is not None and not (
            isinstance(self.unclipped_num_std, (int, float))
            and math.isfinite(self.unclipped_num_std) and self.unclipped_num_std > 0
        ):
            out.append(f"unclipped_num_std must be a finite number > 0, got "
                       f"{shown(self.unclipped_num_std)}")
        return out

    def _noise_schedule_problems(self) -> list[str]:
        gamma, step_epochs, epochs = self.noise_gamma, self.noise_step_epochs, self.epochs
        if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
            return [f"noise_gamma must be in (0, 1], got {shown(gamma)}"]
        if not (isinstance(step_epochs, int) and step_epochs >= 1):
            return [f"noise_step_epochs must be an integer >= 1, got {shown(step_epochs)}"]
        if not (isinstance(epochs, int) and epochs >= 1):
            return []  # reported with the other integer fields
        if self.noise_schedule == "step" and step_epochs >= epochs:
            return [f"noise_step_epochs {step_epochs} must be below epochs {epochs}: the step "
                    "schedule first decays after noise_step_epochs epochs"]
        decays = {"exponential": epochs - 1,
                  "step": (epochs - 1) // step_epochs}.get(self.noise_schedule, 0)
        if decays + 1 > MAX_NOISE_LEVELS:
            hint = (f"noise_step_epochs >= {(epochs - 1) // MAX_NOISE_LEVELS + 1}"
                    if self.noise_schedule == "step" else "the step schedule")
            return [f"noise_schedule {shown(self.noise_schedule)} over {epochs} epochs uses "
                    f"{decays + 1} noise levels; the limit is {MAX_NOISE_LEVELS} (use {hint})"]
        # In logarithms: gamma ** decays underflows to 0 for a tiny gamma.
        if decays and decays * math.log(gamma) < math.log(MIN_NOISE_FACTOR):
            exponent = decays * math.log10(gamma)
            factor = f"{10 ** exponent:.3g}" if exponent > -300 else f"1e{exponent:.0f}"
            lowest = math.ceil(MIN_NOISE_FACTOR ** (1 / decays) * 1e4) / 1e4
            return [f"noise_gamma {gamma} makes the last epoch's σ {gamma}^{decays} = {factor} "
                    f"times the first; the limit is {MIN_NOISE_FACTOR:g} (use noise_gamma >= "
                    f"{lowest:g} or fewer epochs)"]
        return []

    @property
    def count_noise(self) -> float:
        """σ_b of adaptive clipping: ``unclipped_num_std`` or batch_size / 20 (Andrew et al. 2021)."""
        if self.unclipped_num_std is not None:
            return float(self.unclipped_num_std)
        return self.batch_size / 20

    @property
    def model_build_options(self) -> dict[str, Any]:
        """Options the model registry builds ``model`` with: ``model_options``, plus
        ``hidden_sizes`` for the MLP (the only architecture that reads it)."""
        if self.model == "mlp":
            return {"hidden_sizes": list(self.hidden_sizes), **self.model_options}
        return dict(self.model_options)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        data["feature_columns"] = list(self.feature_columns)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(f"invalid job spec: unknown field(s) {unknown}")
        values = dict(data)
        if "hidden_sizes" in values:
            values["hidden_sizes"] = tuple(int(h) for h in values["hidden_sizes"])
        if "feature_columns" in values:
            values["feature_columns"] = tuple(values["feature_columns"])
        return cls(**values)
