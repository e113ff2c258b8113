"""DP-SGD options end to end: a job with adaptive clipping and a decaying noise schedule,
submitted through the real gRPC server, trains in a worker and stays within its ε."""

from __future__ import annotations

import pytest
from server_harness import AnonymizedAdult, RunningServer, adult_spec, upload_adult, wait_terminal


def test_adaptive_clipping_with_exponential_noise_schedule_succeeds_within_target(
        running: RunningServer, adult: AnonymizedAdult) -> None:
    """The options survive spec → proto → server → worker: SUCCEEDED, ε ≤ target, ε per
    step never decreasing, the ledger charging what the accountant spent."""
    ds = upload_adult(running, adult, epsilon=5.0)
    spec = adult_spec(ds.id, target_epsilon=1.5, epochs=2, clipping="adaptive",
                      max_grad_norm=0.1, target_unclipped_quantile=0.6,
                      noise_schedule="exponential", noise_gamma=0.8, precision="bf16")
    with running.client("trainer") as trainer:
        job = trainer.submit(spec)
        events = wait_terminal(trainer, job.id)
        done = trainer.get_job(job.id)
    assert done.state == "SUCCEEDED", done.error
    assert done.spec.clipping == "adaptive" and done.spec.noise_schedule == "exponential"
    assert done.spec.noise_gamma == pytest.approx(0.8) and done.spec.precision == "bf16"
    steps = [e.step for e in events if e.WhichOneof("event") == "step"]
    eps = [s.epsilon for s in steps]
    assert eps == sorted(eps) and 0 < eps[-1] <= 1.5
    assert done.result.epsilon <= 1.5
    assert done.epsilon_spent == pytest.approx(done.result.epsilon)
    assert done.result.test_accuracy > 0.7  # the noisy release (σ = 20 rows on ~15k)


def test_count_noise_too_small_is_invalid_argument_before_any_budget_is_reserved(
        running: RunningServer, adult: AnonymizedAdult) -> None:
    """Adaptive clipping whose count noise σ_b cannot carry the calibrated σ (2σ_b ≤ σ): found
    when σ is calibrated at admission, the job FAILs naming unclipped_num_std; the dataset's
    budget is untouched."""
    ds = upload_adult(running, adult, epsilon=5.0)
    spec = adult_spec(ds.id, target_epsilon=0.3, clipping="adaptive", unclipped_num_std=0.2)
    with running.client("trainer") as trainer:
        job = trainer.submit(spec)
        wait_terminal(trainer, job.id)
        final = trainer.get_job(job.id)
        remaining = {d.id: d.epsilon_remaining for d in trainer.list_datasets()}
    assert final.state == "FAILED" and "unclipped_num_std" in final.error
    assert remaining[ds.id] == pytest.approx(ds.epsilon_remaining)
    assert running.server.db.budget.entry_of_job(job.id) is None
