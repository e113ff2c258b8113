"""Job options the server must refuse at submission, through the real gRPC server: schedules
whose σ falls too far, options that do not apply to the chosen setting. Each is one
INVALID_ARGUMENT line naming the option, answered within seconds, with no budget reserved."""

from __future__ import annotations

import time

import grpc
import pytest
from server_harness import AnonymizedAdult, RunningServer, adult_spec, upload_adult

REFUSALS = [
    # The tester's hanging request: σ would have to span 1e300 within two epochs.
    ({"epochs": 2, "target_epsilon": 0.5, "batch_size": 64, "noise_schedule": "exponential",
      "noise_gamma": 1e-300}, "noise_gamma 1e-300 makes the last epoch's σ"),
    # gamma**2 underflowed to 0 and calibration divided by it (INTERNAL before).
    ({"epochs": 3, "noise_schedule": "exponential", "noise_gamma": 1e-200}, "the limit is 0.001"),
    # Passed an RDP check, then died in the worker's PRV accountant.
    ({"epochs": 2, "noise_schedule": "exponential", "noise_gamma": 1e-20}, "the limit is 0.001"),
    ({"epochs": 2, "noise_schedule": "step", "noise_step_epochs": 1_000_000},
     "noise_step_epochs 1000000 must be below epochs 2"),
    ({"target_unclipped_quantile": 0.7}, "target_unclipped_quantile applies only with clipping 'adaptive'"),
    ({"clipping": "per_layer", "max_clipbound": 5.0}, "max_clipbound applies only with clipping 'adaptive', not 'per_layer'"),
    ({"noise_gamma": 0.5}, "noise_gamma applies only with noise_schedule 'exponential' or 'step', not 'constant'"),
    ({"noise_schedule": "exponential", "epochs": 2, "noise_step_epochs": 2},
     "noise_step_epochs applies only with noise_schedule 'step', not 'exponential'"),
    ({"hidden_sizes": [32]}, "hidden_sizes applies only with model 'mlp', not 'logistic_regression'"),
]


def test_inapplicable_options_and_runaway_schedules_are_invalid_argument_before_any_budget(
        running: RunningServer, adult: AnonymizedAdult) -> None:
    ds = upload_adult(running, adult, epsilon=5.0)
    with running.client("trainer") as trainer:
        for overrides, message in REFUSALS:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                trainer.submit(adult_spec(ds.id, **overrides))
            elapsed = time.monotonic() - started
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (overrides, info.value.details())
            assert message in info.value.details(), (overrides, info.value.details())
            assert "\n" not in info.value.details()
            assert elapsed < 5.0, (overrides, elapsed)
        remaining = {d.id: d.epsilon_remaining for d in trainer.list_datasets()}
        jobs = trainer.list_jobs()
    assert remaining[ds.id] == pytest.approx(ds.epsilon_remaining)
    assert list(jobs) == []


def test_decaying_schedule_within_the_limits_is_accepted(
        running: RunningServer, adult: AnonymizedAdult) -> None:
    """The same options with their settings on pass submission (the refusals above are about
    the options, not the values): a step schedule decaying once, adaptive clipping bounds."""
    ds = upload_adult(running, adult, epsilon=5.0)
    spec = adult_spec(ds.id, epochs=2, noise_schedule="step", noise_gamma=0.5, noise_step_epochs=1,
                      clipping="adaptive", max_clipbound=5.0)
    with running.client("trainer") as trainer:
        job = trainer.submit(spec)
        trainer.cancel(job.id)
    assert job.state == "PENDING"
    assert job.spec.noise_step_epochs == 1 and job.spec.max_clipbound == pytest.approx(5.0)
