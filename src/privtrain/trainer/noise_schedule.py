"""Noise schedules: σ that changes per epoch, with its scale calibrated to the target ε.

A schedule is a per-epoch shape (1 for ``constant``, γ^e for ``exponential``,
γ^⌊e / k⌋ for ``step``; e counts epochs from 0) times one scale s. The scale is
found by binary search so that the composition of the job's heterogeneous
steps, (s·shape_e, q, steps of epoch e) for every epoch, spends at most the
target ε; the accountant then records the σ actually used at every step.
Decaying noise follows Yu et al. 2019, "Differentially Private Model
Publishing for Deep Learning" (and Opacus' ``ExponentialNoise`` / ``StepNoise``
schedulers, which are per epoch too). Composition of heterogeneous subsampled
Gaussian steps: Gopi et al. 2021 (PRV) or Mironov 2017 (RDP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privtrain.errors import InvalidInput
from privtrain.trainer.accounting import History, calibrate_noise_multiplier, epsilon_for_history
from privtrain.trainer.adaptive_clipping import gradient_noise
from privtrain.trainer.spec import MIN_NOISE_FACTOR, NOISE_SCHEDULES, TrainingSpec

# Relative width of the final calibration bracket, as in calibrate_noise_multiplier.
SCALE_TOLERANCE = 0.005
# Halvings (of the bracket's logarithm) the scale search may take: a bracket of ratio
# 1 / MIN_NOISE_FACTOR reaches SCALE_TOLERANCE in 11, so 40 bounds the work with room to spare.
MAX_SEARCH_STEPS = 40
# Largest σ of any step: Opacus' own calibration ceiling (``MAX_SIGMA``). Past it the noise
# drowns any gradient, and the accountants' analyses leave their tested range.
MAX_NOISE_MULTIPLIER = 1e6
# A σ whose RDP bound exceeds the target this many times over is taken as over the target
# without asking PRV: PRV tightens RDP by far less than that.
RDP_REFUSAL_FACTOR = 2.0


def epoch_shape(schedule: str, gamma: float, step_epochs: int, epochs: int) -> tuple[float, ...]:
    """Per-epoch σ multipliers, ``(epochs,)``, the first one 1.0.

    Raises
    ------
    InvalidInput
        Unknown ``schedule``.
    """
    if schedule == "constant":
        return (1.0,) * epochs
    if schedule == "exponential":
        return tuple(gamma ** e for e in range(epochs))
    if schedule == "step":
        return tuple(gamma ** (e // step_epochs) for e in range(epochs))
    raise InvalidInput(f"noise_schedule must be one of {NOISE_SCHEDULES}, got {schedule!r}")


@dataclass(frozen=True)
class NoiseSchedule:
    """σ of every step: ``scale * shape[epoch]``, with epochs of ``steps_per_epoch`` steps.

    Attributes
    ----------
    scale : float
        σ of the first epoch (the largest for a decaying schedule).
    shape : tuple of float
        ``(epochs,)`` multipliers from :func:`epoch_shape`.
    sample_rate : float
        q of every step.
    steps_per_epoch : int
    releases : tuple of (σ, q, count)
        Other Gaussian mechanisms of the job composed with its steps (the noisy
        test-accuracy releases: σ in units of their sensitivity, q = 1), counted in
        :meth:`epsilon` and so in the calibration.
    """

    scale: float
    shape: tuple[float, ...]
    sample_rate: float
    steps_per_epoch: int
    releases: tuple[tuple[float, float, int], ...] = ()

    @property
    def total_steps(self) -> int:
        """Steps of the whole job: epochs × steps per epoch."""
        return len(self.shape) * self.steps_per_epoch

    def sigma_at(self, step: int) -> float:
        """σ of logical step ``step`` (1-based; steps past the end keep the last σ)."""
        epoch = min((max(step, 1) - 1) // self.steps_per_epoch, len(self.shape) - 1)
        return self.scale * self.shape[epoch]

    def history(self, steps: int) -> History:
        """(σ, q, steps) segments of the first ``steps`` steps, as an Opacus accountant stores them."""
        out: History = []
        for epoch, factor in enumerate(self.shape):
            count = min(self.steps_per_epoch, steps - epoch * self.steps_per_epoch)
            if count <= 0:
                break
            sigma = self.scale * factor
            if out and out[-1][0] == sigma:
                out[-1] = (sigma, self.sample_rate, out[-1][2] + count)
            else:
                out.append((sigma, self.sample_rate, count))
        return out

    def epsilon(self, accountant: str, delta: float, steps: int | None = None) -> float:
        """ε after ``steps`` steps (default: all of them) and every release, at ``delta``."""
        steps = self.total_steps if steps is None else steps
        return epsilon_for_history(accountant, [*self.history(steps), *self.releases], delta)


def calibrate_schedule(
    shape: tuple[float, ...], *, target_epsilon: float, target_delta: float, sample_rate: float,
    steps_per_epoch: int, accountant: str, releases: tuple[tuple[float, float, int], ...] = (),
) -> NoiseSchedule:
    """The smallest scale (to :data:`SCALE_TOLERANCE`) whose schedule spends ε ≤ ``target_epsilon``.

    For a shape within [:data:`~privtrain.trainer.spec.MIN_NOISE_FACTOR`, 1] and no
    other releases, the constant σ₀ calibrated for the same steps is a lower bound of
    the scale (every step is at most as noisy as σ₀) and σ₀ / min(shape) an upper
    bound (every step at least as noisy). Releases composed with the steps only raise
    the scale needed: the upper end then doubles until feasible. A geometric binary
    search of at most :data:`MAX_SEARCH_STEPS` halvings between the ends keeps a
    feasible upper end, which is returned. Under PRV a candidate is first judged by
    its RDP bound (never below PRV's ε), so PRV only sees schedules near the target,
    never one whose late epochs carry almost no noise (whose privacy-loss domain PRV
    cannot hold in memory).

    Raises
    ------
    InvalidInput
        A shape outside [MIN_NOISE_FACTOR, 1], no σ reaching the target (see
        :func:`calibrate_noise_multiplier`; also when the releases alone spend the
        target), or an accountant failing on a candidate.
    """
    if not shape or min(shape) < MIN_NOISE_FACTOR or max(shape) > 1.0:
        raise InvalidInput(f"noise schedule factors must lie in [{MIN_NOISE_FACTOR:g}, 1], "
                           f"got {min(shape, default=0.0):.3g} to {max(shape, default=0.0):.3g}")
    # The releases alone are one cheap evaluation: refuse them before the costly calibration.
    if releases and epsilon_for_history(accountant, list(releases), target_delta) >= target_epsilon:
        raise InvalidInput(
            f"the job's test-accuracy releases alone spend ε ≥ {target_epsilon} at "
            f"δ={target_delta}; raise test_accuracy_noise or release fewer"
        )
    steps = len(shape) * steps_per_epoch
    base = calibrate_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                      sample_rate=sample_rate, steps=steps, accountant=accountant)

    def make(scale: float) -> NoiseSchedule:
        return NoiseSchedule(scale, shape, sample_rate, steps_per_epoch, releases)

    if min(shape) == 1.0 and not releases:
        return make(base)
    low, high = base, base / min(shape)
    if releases:
        while not _within_target(make(high), accountant, target_epsilon, target_delta):
            low, high = high, high * 2
            if high > MAX_NOISE_MULTIPLIER:
                raise InvalidInput(f"no noise_multiplier up to {MAX_NOISE_MULTIPLIER:g} reaches "
                                   f"ε ≤ {target_epsilon} at δ={target_delta} with these releases")
    for _ in range(MAX_SEARCH_STEPS):
        if high / low <= 1 + SCALE_TOLERANCE:
            break
        middle = math.sqrt(low * high)
        if _within_target(make(middle), accountant, target_epsilon, target_delta):
            high = middle
        else:
            low = middle
    schedule = make(high)
    # The upper end is feasible by monotonicity; the re-check guards the numerics.
    if schedule.epsilon(accountant, target_delta) > target_epsilon:
        raise InvalidInput(f"no noise schedule scale reaches ε ≤ {target_epsilon} at δ={target_delta}")
    return schedule


def _within_target(plan: NoiseSchedule, accountant: str, target_epsilon: float,
                   target_delta: float) -> bool:
    bound = plan.epsilon("rdp", target_delta)
    if accountant == "rdp" or bound <= target_epsilon:
        return bound <= target_epsilon
    if bound > RDP_REFUSAL_FACTOR * target_epsilon:
        return False
    return plan.epsilon(accountant, target_delta) <= target_epsilon


def plan_noise(spec: TrainingSpec, sample_rate: float, steps_per_epoch: int, *,
               accountant: str | None = None,
               releases: tuple[tuple[float, float, int], ...] = ()) -> NoiseSchedule:
    """σ of every step of ``spec``'s job: the spec's own σ (checked) or a calibrated scale.

    ``accountant`` overrides the spec's for calibration (RDP at submission: fast,
    never tighter than PRV). With adaptive clipping the largest σ must stay below
    2σ_b (Andrew et al. 2021, Theorem 1).

    Raises
    ------
    InvalidInput
        A given ``noise_multiplier`` whose schedule spends more than the target ε,
        no σ reaching the target, a step's σ above :data:`MAX_NOISE_MULTIPLIER`, an
        accountant failing on the schedule (the message names the schedule), or
        adaptive clipping with 2σ_b ≤ σ.
    """
    shape = epoch_shape(spec.noise_schedule, spec.noise_gamma, spec.noise_step_epochs, spec.epochs)
    accountant = accountant or spec.accountant
    try:
        if spec.noise_multiplier is not None:
            plan = NoiseSchedule(float(spec.noise_multiplier), shape, sample_rate, steps_per_epoch,
                                 releases)
            _check_sigma_range(plan, "noise_multiplier")
            _check_fixed(plan, spec, accountant)
        else:
            plan = calibrate_schedule(shape, target_epsilon=spec.target_epsilon,
                                      target_delta=spec.target_delta, sample_rate=sample_rate,
                                      steps_per_epoch=steps_per_epoch, accountant=accountant,
                                      releases=releases)
            _check_sigma_range(plan, "the calibrated")
    except InvalidInput as exc:
        if spec.noise_schedule == "constant":
            raise
        raise InvalidInput(f"{_describe(spec)}: {exc}") from None
    if spec.clipping == "adaptive":
        gradient_noise(plan.scale * max(shape), spec.count_noise)
    return plan


def _describe(spec: TrainingSpec) -> str:
    every = f" every {spec.noise_step_epochs} epochs" if spec.noise_schedule == "step" else ""
    return (f"noise_schedule {spec.noise_schedule!r} (noise_gamma {spec.noise_gamma}{every}, "
            f"{spec.epochs} epochs)")


def _check_sigma_range(plan: NoiseSchedule, what: str) -> None:
    largest = plan.scale * max(plan.shape)
    if largest > MAX_NOISE_MULTIPLIER:
        raise InvalidInput(f"{what} σ {largest:.4g} is above the limit {MAX_NOISE_MULTIPLIER:g}")


def _check_fixed(plan: NoiseSchedule, spec: TrainingSpec, accountant: str) -> None:
    # The RDP bound is cheap and never below PRV's ε: it settles the clear cases, and
    # spares PRV a huge (slow, memory-hungry) privacy-loss domain when σ is far too small.
    bound = plan.epsilon("rdp", spec.target_delta)
    if bound <= spec.target_epsilon:
        return
    what = f"noise_multiplier {spec.noise_multiplier}"
    if accountant == "rdp" or bound > RDP_REFUSAL_FACTOR * spec.target_epsilon:
        raise InvalidInput(f"{what} spends ε={bound:.4f} (RDP bound) over {plan.total_steps} steps, "
                           f"more than target_epsilon {spec.target_epsilon}")
    eps = plan.epsilon(accountant, spec.target_delta)
    if eps > spec.target_epsilon:
        raise InvalidInput(f"{what} spends ε={eps:.4f} over {plan.total_steps} steps, "
                           f"more than target_epsilon {spec.target_epsilon}")
