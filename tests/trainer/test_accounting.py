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
