"""A job's privacy plan: everything its (ε, δ) depends on, fixed before training from public figures.

The plan is made once, when the job is admitted, from the spec and the dataset's
*published* row counts (noised at upload, see ``docs/privacy.md``), never from the
exact counts: the sample rate q = batch_size / published training rows, the steps
(epochs × ⌊1/q⌋), σ of every step, and the noisy test-accuracy releases. So the
number of steps, σ and q a trainer can see are functions of DP releases, and the
ledger can compose the job's (σ, q, steps) history with every other job on the
dataset before the first step (Gopi et al. 2021 for PRV, Mironov 2017 for RDP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import History, epsilon_for_history
from privtrain.trainer.noise_schedule import NoiseSchedule, plan_noise
from privtrain.trainer.spec import TrainingSpec

MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class JobPlan:
    """The privacy-relevant schedule of one job.

    Attributes
    ----------
    train_rows, test_rows : int
        Published (noisy) row counts of the training and test splits.
    noise : NoiseSchedule
        σ of every step, q, steps per epoch, and the test-accuracy releases.
    release_epochs : tuple of int
        Epochs (1-based) after which a noisy test accuracy is released.
    accuracy_noise : float
        Std (in rows) of the Gaussian noise on each released count of correct test
        predictions; sensitivity 1 (0 when nothing is released).
    accountant : str
        The job's own accountant (``prv`` or ``rdp``).
    delta : float
        δ of the job's target.
    epsilon : float
        ε of the whole plan at ``delta`` by ``accountant`` (≤ the target).
    """

    train_rows: int
    test_rows: int
    noise: NoiseSchedule
    release_epochs: tuple[int, ...]
    accuracy_noise: float
    accountant: str
    delta: float
    epsilon: float

    @property
    def sample_rate(self) -> float:
        """q, the probability that a row joins a logical batch."""
        return self.noise.sample_rate

    @property
    def steps_per_epoch(self) -> int:
        """Logical steps of one epoch: ⌊1/q⌋."""
        return self.noise.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """Logical steps of the whole job."""
        return self.noise.total_steps

    def releases_by(self, step: int) -> int:
        """How many accuracy releases happen at or before the end of logical step ``step``."""
        return sum(1 for epoch in self.release_epochs if epoch * self.steps_per_epoch <= step)

    def history(self, steps: int | None = None, releases: int | None = None) -> History:
        """(σ, q, count) segments of the first ``steps`` steps and ``releases`` releases
        (defaults: the whole plan); a release is ``(accuracy_noise, 1.0, 1)``."""
        steps = self.total_steps if steps is None else min(steps, self.total_steps)
        releases = len(self.release_epochs) if releases is None else releases
        out = self.noise.history(steps)
        if releases and self.accuracy_noise > 0:
            out.append((self.accuracy_noise, 1.0, releases))
        return out

    def epsilon_after(self, steps: int, delta: float | None = None) -> float:
        """ε of the first ``steps`` steps with the releases made by then, at ``delta``."""
        return epsilon_for_history(self.accountant, self.history(steps, self.releases_by(steps)),
                                   self.delta if delta is None else delta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored with the job, sent to its worker)."""
        return {
            "train_rows": self.train_rows, "test_rows": self.test_rows,
            "scale": self.noise.scale, "shape": list(self.noise.shape),
            "sample_rate": self.noise.sample_rate, "steps_per_epoch": self.noise.steps_per_epoch,
            "release_epochs": list(self.release_epochs), "accuracy_noise": self.accuracy_noise,
            "accountant": self.accountant, "delta": self.delta, "epsilon": self.epsilon,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobPlan:
        """Inverse of :meth:`to_dict`."""
        release_epochs = tuple(int(e) for e in data["release_epochs"])
        accuracy_noise = float(data["accuracy_noise"])
        releases = ((accuracy_noise, 1.0, len(release_epochs)),) if release_epochs else ()
        noise = NoiseSchedule(float(data["scale"]), tuple(float(f) for f in data["shape"]),
                              float(data["sample_rate"]), int(data["steps_per_epoch"]), releases)
        return cls(train_rows=int(data["train_rows"]), test_rows=int(data["test_rows"]), noise=noise,
                   release_epochs=release_epochs, accuracy_noise=accuracy_noise,
                   accountant=str(data["accountant"]), delta=float(data["delta"]),
                   epsilon=float(data["epsilon"]))


def schedule(spec: TrainingSpec, train_rows: int) -> tuple[float, int, int]:
    """(sample_rate, steps_per_epoch, total_steps) of ``spec`` on ``train_rows`` published rows.

    Raises
    ------
    InvalidInput
        The logical batch exceeds the training rows, or the job would take more
        than :data:`MAX_STEPS` steps.
    """
    if spec.batch_size > train_rows:
        raise InvalidInput(f"batch_size {spec.batch_size} exceeds the {train_rows} training rows "
                           "(the dataset's published count)")
    sample_rate = spec.batch_size / train_rows
    steps_per_epoch = int(1 / sample_rate)
    total_steps = spec.epochs * steps_per_epoch
    if total_steps > MAX_STEPS:
        raise InvalidInput(
            f"{spec.epochs} epochs of {steps_per_epoch} steps make {total_steps:,} steps; "
            f"the limit is {MAX_STEPS:,}"
        )
    return sample_rate, steps_per_epoch, total_steps


def release_epochs(spec: TrainingSpec) -> tuple[int, ...]:
    """Epochs after which ``spec`` releases a noisy test accuracy."""
    if spec.release_test_accuracy == "every_epoch":
        return tuple(range(1, spec.epochs + 1))
    if spec.release_test_accuracy == "final":
        return (spec.epochs,)
    return ()


def plan_job(spec: TrainingSpec, train_rows: int, test_rows: int) -> JobPlan:
    """Calibrate ``spec``'s job on published row counts with its own accountant.

    σ is the smallest (to 0.5%) whose steps and test-accuracy releases together spend
    at most ``target_epsilon`` at ``target_delta`` (or the spec's own σ, checked).

    Raises
    ------
    InvalidInput
        A bad schedule, an unreachable target, or the releases alone spending it.
    """
    if test_rows < 1 and spec.release_test_accuracy != "none":
        raise InvalidInput("the dataset publishes no test rows; use release_test_accuracy 'none'")
    sample_rate, steps_per_epoch, _ = schedule(spec, train_rows)
    epochs = release_epochs(spec)
    releases = ((spec.test_accuracy_noise, 1.0, len(epochs)),) if epochs else ()
    noise = plan_noise(spec, sample_rate, steps_per_epoch, releases=releases)
    epsilon = noise.epsilon(spec.accountant, spec.target_delta)
    return JobPlan(train_rows=train_rows, test_rows=test_rows, noise=noise, release_epochs=epochs,
                   accuracy_noise=spec.test_accuracy_noise if epochs else 0.0,
                   accountant=spec.accountant, delta=spec.target_delta, epsilon=epsilon)
