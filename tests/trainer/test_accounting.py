"""Our ε against an independent implementation: Google's dp-accounting."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from privtrain.trainer.accounting import epsilon_for


def _random_settings(count: int, seed: int) -> list[tuple[float, float, int, float]]:
    rng = np.random.default_rng(seed)
    return [
        (float(10 ** rng.uniform(-3, -1)), float(rng.uniform(0.6, 3.0)),
         int(rng.integers(10, 3000)), float(10 ** rng.uniform(-7, -4)))
        for _ in range(count)
    ]


def _event(q: float, sigma: float, steps: int):
    import dp_accounting

    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), _random_settings(20, seed=2024))
def test_prv_epsilon_matches_google_pld_within_one_percent(q: float, sigma: float, steps: int,
                                                          delta: float) -> None:
    """PRV (ours, through Opacus) vs dp-accounting's PLD accountant: within 1%, never below
    PLD's value by more than 1% (PLD with a fine grid is itself a tight upper bound)."""
    from dp_accounting import pld

    reference = pld.PLDAccountant(value_discretization_interval=1e-4)
    reference.compose(_event(q, sigma, steps))
    expected = reference.get_epsilon(delta)
    ours = epsilon_for("prv", sigma, q, steps, delta)
    assert ours == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), _random_settings(5, seed=7))
def test_rdp_epsilon_matches_google_rdp(q: float, sigma: float, steps: int, delta: float) -> None:
    """RDP (ours, through Opacus) vs dp-accounting's RDP accountant: within 1%."""
    from dp_accounting import rdp

    reference = rdp.RdpAccountant()
    reference.compose(_event(q, sigma, steps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = epsilon_for("rdp", sigma, q, steps, delta)
    assert ours == pytest.approx(reference.get_epsilon(delta), rel=0.01)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_search_matches_opacus(accountant: str) -> None:
    """Our search (Opacus' get_noise_multiplier with a time limit between evaluations) finds
    the same σ."""
    from opacus.accountants.utils import get_noise_multiplier

    from privtrain.trainer.accounting import _search_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for eps, q, steps in [(1.0, 0.01, 1000), (3.0, 0.02, 500)]:
            assert _search_noise_multiplier(eps, 1e-5, q, steps, accountant,
                                            epsilon_tolerance=0.005) == get_noise_multiplier(
                target_epsilon=eps, target_delta=1e-5, sample_rate=q, steps=steps,
                accountant=accountant, epsilon_tolerance=0.005)


def test_a_calibration_past_its_time_limit_stops_with_the_reason() -> None:
    """A million PRV steps take minutes to calibrate; within time_limit the next ε evaluation
    after the limit refuses instead of starting."""
    import time

    from privtrain.errors import InvalidInput
    from privtrain.trainer.accounting import calibrate_noise_multiplier, time_limit

    started = time.monotonic()
    with pytest.raises(InvalidInput, match="took longer than 0 s, the server's limit"):
        with time_limit(0.0):
            calibrate_noise_multiplier(target_epsilon=1.0, target_delta=1e-5, sample_rate=0.001,
                                       steps=1_000_000, accountant="prv")
    assert time.monotonic() - started < 1.0
    assert epsilon_for("rdp", 1.0, 0.01, 100, 1e-5) > 0  # no limit outside the block
