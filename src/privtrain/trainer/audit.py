"""Empirical privacy audit in one training run (Steinke, Nasr & Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023): m canaries are each
included in the training data independently with probability ½; after one run an
auditor scores every canary, guesses "in" for the highest scores and "out" for the
lowest, and abstains on the rest. If the training is (ε, δ)-DP, the number of
correct guesses among r is (up to a δ term) stochastically dominated by
Binomial(r, e^ε / (1 + e^ε)), so a count of correct guesses too large for that
binomial at the chosen confidence proves that the run was *not* (ε, δ)-DP for any
smaller ε: the largest such ε is the audit's lower bound ε_lower.

Canaries here are the paper's white-box gradient canaries for DP-SGD ("Dirac"
canaries): canary i is a sample whose gradient is ``sign_i · G · e_{c_i}``, a
spike of norm G (1000 × ``max_grad_norm``) on its own coordinate c_i of the
flattened trainable parameters. An included canary joins each logical batch with
the rows' sample rate q (Poisson, from the job's secret randomness) and is clipped
like any sample (to C under DP, not at all with ``mechanism="none"``). Its score is
``sign_i`` times the sum, over steps, of the privatized gradient sum at c_i: a
post-processing of the outputs DP-SGD releases at every step, so a correct
implementation can never let ε_lower exceed its ε. ``mechanism="none"`` (no noise,
no clipping) is there to check the audit itself: it must catch that run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from privtrain.errors import InvalidInput, shown
from privtrain.trainer.dp_randomness import DPRandomness, Stream
from privtrain.trainer.secure_noise import NoiseObserver
from privtrain.trainer.spec import TrainingSpec

MECHANISMS = ("dp", "none")
# Raw gradient norm of a canary, in units of max_grad_norm: far above C, so under DP it is
# clipped to exactly C (the worst case the analysis allows), and without clipping it stands out.
CANARY_NORM = 1000.0
# Clip bound that disables clipping for mechanism "none".
NO_CLIPPING = 1e30


@dataclass(frozen=True)
class AuditSettings:
    """What one audit run does.

    Attributes
    ----------
    canaries : int
        m, canaries each included with probability ½ (2 ≤ m ≤ trainable parameters).
    mechanism : str
        ``dp`` (the job's DP-SGD) or ``none`` (no noise, no clipping: checks the audit).
    guesses : int
        r, guesses made: r/2 "in" on the highest scores, r/2 "out" on the lowest
        (even, 2 ≤ r ≤ m); fixed before the run, as the paper requires.
    confidence : float
        Confidence of the lower bound (0.95: the bound is wrong with probability ≤ 5%).
    """

    canaries: int
    mechanism: str = "dp"
    guesses: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise InvalidInput(f"audit mechanism must be one of {MECHANISMS}, got "
                               f"{shown(self.mechanism)}")
        if not (isinstance(self.canaries, int) and self.canaries >= 2):
            raise InvalidInput(f"canaries must be an integer >= 2, got {shown(self.canaries)}")
        guesses = self.guesses or max(2, 2 * (self.canaries // 10))
        if not (2 <= guesses <= self.canaries and guesses % 2 == 0):
            raise InvalidInput(f"guesses must be even and in [2, canaries={self.canaries}], got {guesses}")
        if not 0.5 <= self.confidence < 1:
            raise InvalidInput(f"confidence must be in [0.5, 1), got {self.confidence}")
        object.__setattr__(self, "guesses", guesses)


@dataclass(frozen=True)
class AuditResult:
    """Figures of one audit: the guesses, and the lower bound they prove."""

    mechanism: str
    canaries: int
    included: int
    guesses: int
    correct: int
    confidence: float
    delta: float
    epsilon_lower: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return dataclasses.asdict(self)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of ≥ v correct guesses out of r under (ε, δ)-DP (Steinke et al. 2023, Thm 3/5.2).

    ``P[Bin(r, p) ≥ v] + 2mδ · max_{1≤i≤v} P[v-i ≤ Bin(r, p) < v] / i`` with
    ``p = e^ε / (1 + e^ε)``, the accuracy of ε-DP randomized response.
    """
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, p))
    if delta <= 0 or v == 0:
        return min(1.0, tail)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # P[Bin = v-1], P[Bin = v-2], ...
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))
    return min(1.0, tail + 2 * m * delta * alpha)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε whose p-value for ``v`` correct of ``r`` guesses is below 1 - confidence (0 if none).

    Binary search to 1e-4 (the p-value grows as ε grows).
    """
    if not 0 <= v <= r <= m:
        raise InvalidInput(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    alpha = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < alpha:
        low, high = high, high * 2
        if high > 1e3:
            return low
    while high - low > 1e-4:
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < alpha:
            low = middle
        else:
            high = middle
    return low


class CanaryAudit(NoiseObserver):
    """Dirac gradient canaries in a DP-SGD run, and their scores.

    Parameters
    ----------
    model : nn.Module
        The model to train; canaries sit on distinct coordinates of its trainable
        parameters (flattened in ``parameters()`` order).
    settings : AuditSettings
    randomness : DPRandomness
        The job's secret randomness (stream CANARY): coordinates, signs, inclusion
        and every step's canary batch.
    sample_rate : float
        q of the job: each included canary joins each logical batch with it.
    delta : float
        δ at which the lower bound is stated (the job's).
    """

    def __init__(self, model: nn.Module, settings: AuditSettings, randomness: DPRandomness, *,
                 sample_rate: float, delta: float) -> None:
        sizes = [p.numel() for p in model.parameters() if p.requires_grad]
        total = sum(sizes)
        m = settings.canaries
        if m > total:
            raise InvalidInput(f"{m} canaries need as many trainable parameters; the model has {total}")
        self.settings = settings
        self.randomness = randomness
        self.sample_rate = sample_rate
        self.delta = delta
        keys = randomness.words(Stream.CANARY, 0, total)
        coordinates = np.sort(np.argpartition(keys, m - 1)[:m]) if m < total else np.arange(total)
        self.included = randomness.bernoulli(Stream.CANARY, 1, m, 0.5)
        self.signs = np.where(randomness.words(Stream.CANARY, 2, m) & 1, 1.0, -1.0)
        bounds = np.cumsum([0, *sizes])
        owner = np.searchsorted(bounds, coordinates, side="right") - 1
        # Per parameter tensor: (canary indices, offsets inside the flattened tensor).
        self._by_param = [(np.flatnonzero(owner == i), coordinates[owner == i] - bounds[i])
                          for i in range(len(sizes))]
        self._total = total
        self._step = 0
        self._scores = np.zeros(m)
        self._clip_base = 0.0

    def training_spec(self, spec: TrainingSpec) -> TrainingSpec:
        """The spec to train with: the job's, without clipping for mechanism ``none``.

        Raises
        ------
        InvalidInput
            The audit runs flat clipping, a constant noise schedule and one process only.
        """
        if spec.clipping != "flat" or spec.noise_schedule != "constant" or spec.world_size != 1:
            raise InvalidInput("the privacy audit trains with flat clipping, a constant noise schedule "
                               "and world_size 1")
        self._clip_base = spec.max_grad_norm
        if self.settings.mechanism == "none":
            return dataclasses.replace(spec, max_grad_norm=NO_CLIPPING)
        return spec

    def before_noise(self, params: list[nn.Parameter], clip_bound: float) -> None:
        """Add every included canary that this step's Poisson draw picks, clipped to ``clip_bound``."""
        if sum(p.numel() for p in params) != self._total:
            raise InvalidInput("the optimizer's parameters are not the audited model's")
        picked = self.randomness.bernoulli(Stream.CANARY, 3 + self._step, len(self.signs),
                                           self.sample_rate) & self.included
        self._step += 1
        size = min(CANARY_NORM * self._clip_base, clip_bound)
        for p, (canaries, offsets) in zip(params, self._by_param, strict=True):
            active = picked[canaries]
            if not active.any():
                continue
            flat = p.summed_grad.view(-1)
            values = torch.as_tensor(self.signs[canaries][active] * size, dtype=flat.dtype,
                                     device=flat.device)
            flat.index_add_(0, torch.as_tensor(offsets[active], device=flat.device), values)

    def after_noise(self, params: list[nn.Parameter]) -> None:
        """Add each canary's coordinate of the privatized sum (times its sign) to its score."""
        for p, (canaries, offsets) in zip(params, self._by_param, strict=True):
            if len(canaries):
                seen = p.grad.view(-1)[torch.as_tensor(offsets, device=p.grad.device)]
                self._scores[canaries] += self.signs[canaries] * seen.double().cpu().numpy()

    def result(self) -> AuditResult:
        """Guess "in" for the r/2 highest scores and "out" for the r/2 lowest; the lower bound."""
        half = self.settings.guesses // 2
        order = np.argsort(self._scores, kind="stable")
        guessed_out, guessed_in = order[:half], order[-half:]
        correct = int(self.included[guessed_in].sum() + (~self.included[guessed_out]).sum())
        m, r = self.settings.canaries, self.settings.guesses
        return AuditResult(
            mechanism=self.settings.mechanism, canaries=m, included=int(self.included.sum()),
            guesses=r, correct=correct, confidence=self.settings.confidence, delta=self.delta,
            epsilon_lower=epsilon_lower_bound(m, r, correct, self.delta, self.settings.confidence),
        )
