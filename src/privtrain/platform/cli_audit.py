"""``privtrain audit run``: an empirical lower bound on ε from one training run.

Steinke, Nasr & Jagielski 2023 (see :mod:`privtrain.trainer.audit`): the server
trains one job on the dataset with canaries, each included with probability ½,
scores them and turns the correct guesses into ε_lower at the given confidence.
``--mechanism dp`` audits the job's DP-SGD (charged to the dataset like a job);
``--mechanism none`` (admins only, charges nothing, releases no parameters) trains
without noise or clipping, to check that the audit catches what it must.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from privtrain.errors import InvalidInput
from privtrain.platform.cli_args import POSITIVE, add_connection_args, connect, positive_float


def _audit_run(args: argparse.Namespace) -> int:
    from privtrain.platform.client import job_spec
    from privtrain.platform.progress import watch_with_progress
    from privtrain.proto.privtrain.v1 import privtrain_pb2 as pb

    spec = job_spec(
        dataset_id=args.dataset, model=args.model, hidden_sizes=args.hidden or [],
        target_column=args.target or "", target_epsilon=args.epsilon, target_delta=args.delta,
        epochs=args.epochs, batch_size=args.batch_size, max_grad_norm=args.max_grad_norm,
        learning_rate=args.lr, accountant=args.accountant, release_test_accuracy="none",
    )
    audit = pb.AuditSettings(canaries=args.canaries, mechanism=args.mechanism,
                             guesses=args.guesses or 0, confidence=args.confidence)
    with connect(args) as client:
        job = client.submit_audit(spec, audit)
        if not args.json:
            print(f"audit job {job.id} {job.state}")
        code = watch_with_progress(client, job.id, quiet=args.json)
        job = client.get_job(job.id)
    if job.state != "SUCCEEDED" or not job.result.HasField("audit"):
        raise InvalidInput(f"audit job {job.id} ended {job.state}: {job.error or 'no audit result'}")
    figures = _figures(job)
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"ε_lower = {figures['epsilon_lower']:.4f} at {figures['confidence']:.0%} confidence "
              f"({figures['correct']} of {figures['guesses']} guesses right, "
              f"{figures['canaries']} canaries, mechanism {figures['mechanism']}); "
              f"the run's ε = {figures['epsilon']}")
    return code


def _figures(job: Any) -> dict[str, Any]:
    """The audit's figures; ``epsilon`` is the run's (None without DP)."""
    audit = job.result.audit
    epsilon = job.result.epsilon if audit.mechanism == "dp" and math.isfinite(job.result.epsilon) else None
    return {
        "job_id": job.id, "dataset": job.spec.dataset_id, "mechanism": audit.mechanism,
        "epsilon": epsilon, "delta": audit.delta, "epsilon_lower": audit.epsilon_lower,
        "canaries": audit.canaries, "guesses": audit.guesses, "correct": audit.correct,
        "confidence": audit.confidence,
    }


def add_audit_commands(sub: Any) -> None:
    """Register ``audit run`` on ``sub``."""
    audit = sub.add_parser("audit", help="empirical privacy audits").add_subparsers(dest="sub",
                                                                                   required=True)
    run = audit.add_parser("run", help="train once with canaries and bound ε from below "
                                       "(Steinke, Nasr & Jagielski 2023)")
    run.add_argument("--dataset", required=True, help="dataset id")
    run.add_argument("--epsilon", type=positive_float, required=True, help="target ε of the run")
    run.add_argument("--delta", type=float, default=1e-5, help="target δ of the run")
    run.add_argument("--canaries", type=POSITIVE, required=True,
                     help="canaries, each included with probability 1/2")
    run.add_argument("--mechanism", default="dp", choices=["dp", "none"],
                     help="dp: the job's DP-SGD; none: no noise, no clipping (admins; checks the audit)")
    run.add_argument("--guesses", type=POSITIVE, default=None,
                     help="guesses, half 'in' and half 'out' (even; default canaries / 5)")
    run.add_argument("--confidence", type=float, default=0.95, help="confidence of the bound")
    run.add_argument("--target", default=None,
                     help="label column (default: the dataset's last categorical column, or the "
                          "images' label)")
    run.add_argument("--model", default="mlp", help="registered architecture")
    run.add_argument("--hidden", type=POSITIVE, nargs="*", default=None, help="MLP hidden widths")
    run.add_argument("--epochs", type=POSITIVE, default=5)
    run.add_argument("--batch-size", type=POSITIVE, default=512)
    run.add_argument("--max-grad-norm", type=positive_float, default=1.0)
    run.add_argument("--lr", type=positive_float, default=0.5)
    run.add_argument("--accountant", default="prv", choices=["prv", "rdp"])
    add_connection_args(run)
    run.set_defaults(func=_audit_run)
