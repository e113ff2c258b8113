"""Privacy accounting: noise calibration and ε tracking over Opacus accountants.

PRV: Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential
Privacy". RDP: Mironov 2017, "Rényi Differential Privacy"; subsampled Gaussian
analysis of Mironov, Talwar & Zhang 2019.
"""

from __future__ import annotations

import bisect
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opacus.accountants import IAccountant, create_accountant

from privtrain.errors import InvalidInput

# How many exact ε evaluations a job makes while running; between two of them
# the reported ε is the (larger) value at the next evaluation point.
EPSILON_EVALUATIONS = 16
PRV_RELATIVE_EPS_ERROR = 0.002
PRV_MIN_EPS_ERROR = 1e-5
PRV_DEFAULT_EPS_ERROR = 0.01

# (noise_multiplier σ, sample_rate q, steps) segments, as Opacus accountants keep them.
History = list[tuple[float, float, int]]
# Largest σ the calibration tries, as Opacus' get_noise_multiplier.
MAX_SEARCH_SIGMA = 1e6

# (monotonic deadline, seconds allowed) of the ε evaluations in this context (see time_limit).
_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("privtrain_accounting_deadline",
                                                                default=None)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Bound the ε evaluations made inside the block to about ``seconds`` in all.

    A calibration makes a few dozen evaluations, each from milliseconds (RDP) to seconds
    (PRV over a million steps); once ``seconds`` have passed, the next evaluation raises
    :class:`~privtrain.errors.InvalidInput` instead of starting, so the block ends within
    ``seconds`` plus one evaluation. Used around a job's admission (the scheduler's thread
    admits one job at a time).
    """
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _check_deadline() -> None:
    limit = _DEADLINE.get()
    if limit is not None and time.monotonic() > limit[0]:
        raise InvalidInput(f"calibrating the job's noise took longer than {limit[1]:g} s, the "
                           "server's limit; use the rdp accountant, fewer steps (epochs, or a "
                           "larger batch) or a fixed noise_multiplier")

# PRV takes log(1 - q), which is -inf for an unsampled Gaussian (q = 1: a released statistic)
# and handled as such. Set once for that module: catch_warnings is not thread-safe, and the
# ledger composes on several threads.
warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning,
                        module="opacus.accountants.analysis.prv.prvs")


def epsilon_for(
    accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps, at the given δ.

    Parameters
    ----------
    accountant : {"prv", "rdp"}
    noise_multiplier : float
        σ, noise standard deviation relative to ``max_grad_norm``.
    sample_rate : float
        q, probability that a record joins a batch.
    steps : int
        Number of DP-SGD steps (an empty Poisson batch is a step too).
    delta : float
        δ at which ε is reported.
    """
    return epsilon_for_history(accountant, [(noise_multiplier, sample_rate, steps)], delta)


def epsilon_for_history(accountant: str, history: History, delta: float) -> float:
    """ε of the composition of ``history``'s (σ, q, steps) segments at δ (0 for no steps).

    Heterogeneous steps (a noise schedule) compose as in Opacus' accountants:
    PRV convolves each segment's privacy random variable, RDP adds each
    segment's Rényi divergence per order.

    Raises
    ------
    InvalidInput
        The accountant fails numerically on these σ (named in the message).
    """
    history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not history:
        return 0.0
    _check_deadline()
    acc = create_accountant(mechanism=accountant)
    acc.history = history
    try:
        return _get_epsilon(acc, delta)
    except (ValueError, ArithmeticError) as exc:
        # Opacus' analyses fail this way outside their numeric range (e.g. RDP's
        # "result of subtraction must be non-negative", PRV's "Maximum allowed size").
        sigmas = [s for s, _, _ in history]
        raise InvalidInput(
            f"the {accountant} accountant cannot evaluate σ from {min(sigmas):.4g} to "
            f"{max(sigmas):.4g} at δ={delta}: {type(exc).__name__}: {exc}"
        ) from None


def _get_epsilon(acc: IAccountant, delta: float) -> float:
    """ε of ``acc`` at ``delta``; PRV to a relative precision, RDP as is.

    Opacus' PRV accountant takes an absolute ``eps_error`` (default 0.01) and
    returns the upper end of its interval: at ε ≈ 0.1 that upper end can sit 10%
    above the true value. A first coarse evaluation sets the error to 0.2% of ε
    (at least 1e-5) for a second one, which keeps PRV within about 0.5% of
    Google's PLD accountant (``tests/trainer/test_accounting.py``) and still an
    upper bound.
    """
    with warnings.catch_warnings():
        # RDP warns when the optimal order is at the edge of its grid; the bound
        # it returns is still valid (just not the tightest).
        warnings.filterwarnings("ignore", message="Optimal order")
        coarse = float(acc.get_epsilon(delta=delta))
        if acc.mechanism() != "prv":
            return coarse
        eps_error = max(PRV_MIN_EPS_ERROR, PRV_RELATIVE_EPS_ERROR * coarse)
        if eps_error >= PRV_DEFAULT_EPS_ERROR:
            return coarse
        return min(coarse, float(acc.get_epsilon(delta=delta, eps_error=eps_error)))


def calibrate_noise_multiplier(
    *, target_epsilon: float, target_delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """Smallest σ (to Opacus' search tolerance) whose ε after ``steps`` is ≤ ``target_epsilon``.

    Opacus' binary search already returns the upper end of its bracket; the
    result is re-checked here and nudged up until the achieved ε is at most
    the target, so the guarantee never rests on a search tolerance.

    Raises
    ------
    InvalidInput
        No σ up to 10^4 reaches the target (e.g. a tiny ε with many steps), or the
        accountant fails on the σ it tries.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order")
            sigma = _search_noise_multiplier(target_epsilon, target_delta, sample_rate, steps,
                                             accountant, epsilon_tolerance=0.005)
    except (ValueError, ArithmeticError) as exc:
        raise InvalidInput(f"cannot calibrate noise for ε={target_epsilon}: {exc}") from None
    for _ in range(200):
        if epsilon_for(accountant, sigma, sample_rate, steps, target_delta) <= target_epsilon:
            return sigma
        sigma *= 1.005
        if sigma > 1e4:
            break
    raise InvalidInput(
        f"no noise_multiplier reaches ε ≤ {target_epsilon} at δ={target_delta} with "
        f"sample_rate={sample_rate:.6g} and {steps} steps"
    )


def _search_noise_multiplier(target_epsilon: float, target_delta: float, sample_rate: float,
                             steps: int, accountant: str, *, epsilon_tolerance: float) -> float:
    """Opacus' ``get_noise_multiplier`` search (doubling, then bisection on σ until ε is within
    ``epsilon_tolerance`` below the target), with :func:`time_limit` checked before each ε
    evaluation.

    Raises
    ------
    ValueError
        No σ up to :data:`MAX_SEARCH_SIGMA` reaches the target.
    InvalidInput
        The time limit passed.
    """
    acc = create_accountant(mechanism=accountant)

    def epsilon(sigma: float) -> float:
        _check_deadline()
        acc.history = [(sigma, sample_rate, steps)]
        return float(acc.get_epsilon(delta=target_delta))

    eps_high, sigma_low, sigma_high = float("inf"), 0.0, 10.0
    while eps_high > target_epsilon:
        sigma_high *= 2
        eps_high = epsilon(sigma_high)
        if sigma_high > MAX_SEARCH_SIGMA:
            raise ValueError("The privacy budget is too low.")
    while target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(sigma)
        if eps < target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


class EpsilonTracker:
    """Reports an upper bound of ε after each step without accounting inside the training loop.

    An exact PRV evaluation takes tenths of a second; the tracker evaluates ε
    once, before training, at :data:`EPSILON_EVALUATIONS` evenly spaced step
    counts plus every epoch end (the last one being the job's total), and for step ``t`` reports the
    value at the first evaluation point ≥ ``t``. ε grows with the step count, so
    the figure never under-reports; at the last step it is exact.

    ``history``, when given, maps a step count to the (σ, q, steps) segments of
    that many steps (a noise schedule, see :mod:`privtrain.trainer.noise_schedule`)
    and replaces the constant ``noise_multiplier``.
    """

    def __init__(
        self, accountant: str, noise_multiplier: float, sample_rate: float, total_steps: int,
        delta: float, *, steps_per_epoch: int | None = None,
        history: Callable[[int], History] | None = None,
    ) -> None:
        stride = max(1, -(-total_steps // EPSILON_EVALUATIONS))
        # Epoch ends are evaluation points too, so a checkpoint's ε is exact.
        epoch_ends = range(steps_per_epoch, total_steps, steps_per_epoch) if steps_per_epoch else ()
        self._points = sorted({*range(stride, total_steps, stride), *epoch_ends, total_steps})
        segments = history or (lambda steps: [(noise_multiplier, sample_rate, steps)])
        self._values = [epsilon_for_history(accountant, segments(point), delta) for point in self._points]
        # Each value is an upper bound; keep the sequence non-decreasing even if
        # two numerical evaluations disagree in their last digits.
        for i in range(len(self._values) - 2, -1, -1):
            self._values[i] = min(self._values[i], self._values[i + 1])

    def after(self, step: int) -> float:
        """Upper bound of ε after ``step`` steps (exact at an evaluation point; 0 for step 0)."""
        if step <= 0:
            return 0.0
        return self._values[min(bisect.bisect_left(self._points, step), len(self._points) - 1)]


def accountant_state(acc: IAccountant) -> dict[str, Any]:
    """JSON-able state of an Opacus accountant: mechanism and (σ, q, steps) history."""
    return {
        "mechanism": acc.mechanism(),
        "history": [[float(s), float(q), int(n)] for s, q, n in acc.history],
    }


def restore_accountant(state: dict[str, Any]) -> IAccountant:
    """Rebuild an accountant from :func:`accountant_state` output."""
    acc = create_accountant(mechanism=state["mechanism"])
    acc.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
    return acc


def accountant_epsilon(acc: IAccountant, delta: float) -> float:
    """ε of a live accountant at δ (0 before the first step)."""
    if not acc.history:
        return 0.0
    return _get_epsilon(acc, delta)
