"""Utility of anonymization: DP-SGD on the anonymized UCI Adult vs on the raw UCI Adult.

Claim checked: "a DP model trained on the anonymized Adult keeps >= 97% of the
accuracy of the same model trained on the raw Adult (both private, same ε)".

Both arms use :func:`privtrain.trainer.engine.train` with one spec: MLP with one
hidden layer of 64, ε = 3, δ = 1e-5 (PRV accountant), 5 epochs, Poisson batches of
expected size 512, momentum SGD, the source's train/test split, target ``income``.

* anonymized: ``examples/adult/policy.toml`` applied by ``anonymize_file`` (k = 10,
  at most 5 % suppression); feature domains = the signed manifest's ``columns``.
  Suppressed rows are gone from both its train and its test split.
* raw: the same columns before anonymization (the policy's kept and generalized
  columns at level 0; dropped and identifier columns left out), with domains
  declared from the policy file itself, never from the data: a numeric QI's
  ``lower``/``upper`` (age 17..90), a categorical QI's hierarchy keys (education,
  native country, ...), a kept column's declared domain. Test rows: the full raw
  test split.

The anonymized arm's own test split lacks its suppressed rows, so the anonymized
model is also scored on every raw test row generalized to the released levels
(none suppressed): the raw arm's test rows, as the deployed model would see them.
``ratio`` uses each arm's own test split (the claim as stated);
``ratio_same_test_rows`` uses the raw test rows for both.

Each arm runs for every seed; the table shows each run, the JSON the medians:

    python bench/anonymize_utility.py [--seeds 0 1 2] [--device cpu|cuda|auto]

The last output line is one JSON object:
``{"raw_accuracy", "anonymized_accuracy", "ratio", "epsilon", "seeds", ...}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "examples" / "adult" / "policy.toml"
sys.path.insert(0, str(ROOT / "tests" / "anonymize"))  # make_signer: a throwaway owner cert


class _Quiet:
    """Reporter that keeps nothing (the result carries the final accuracy)."""

    def on_start(self, info: dict[str, Any]) -> None:
        pass

    def on_step(self, report: Any) -> None:
        pass

    def on_epoch(
        self, epoch: int, released_accuracy: float | None, exact_accuracy: float, epsilon: float
    ) -> None:
        pass


def raw_domains(policy_path: Path) -> dict[str, dict[str, Any]]:
    """Feature domains of the raw columns, from the policy file alone (no data read)."""
    from privtrain.anonymize.operators import get_operator
    from privtrain.anonymize.operators.generalize import level_domain
    from privtrain.anonymize.operators.registry import OperatorContext
    from privtrain.anonymize.policy import load_policy

    policy = load_policy(policy_path)
    domains: dict[str, dict[str, Any]] = {}
    for name, col in policy.columns.items():
        if col.operator == "generalize":
            domains[name] = level_domain(col, 0)
        elif col.operator == "keep":
            ctx = OperatorContext(col, None, policy.locale, str(policy_path))  # type: ignore[arg-type]
            domain = get_operator("keep").output_domain(ctx)
            assert domain is not None
            domains[name] = domain
    return domains


def released_view(raw: pd.DataFrame, policy_path: Path, levels: dict[str, int]) -> pd.DataFrame:
    """Every raw row as the release would show it (QIs at the chosen levels), none suppressed."""
    from privtrain.anonymize.operators.generalize import Generalization
    from privtrain.anonymize.policy import load_policy

    policy = load_policy(policy_path)
    view = raw.copy()
    for q, level in levels.items():
        view[q] = Generalization(raw[q], policy.columns[q], str(policy_path)).labels(level)
    return view


def accuracy_on(parameters: Path, table: pd.DataFrame) -> float:
    """Accuracy of a trained parameter file on the test rows of ``table`` (the file's own
    feature encoding and split, as the server evaluates)."""
    from privtrain.trainer.evaluate import evaluate_parameters

    return evaluate_parameters(parameters.read_bytes(), table)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epsilon", type=float, default=3.0)
    args = parser.parse_args()

    from conftest import make_signer

    from privtrain.anonymize.keys import generate_key
    from privtrain.anonymize.pipeline import anonymize_file
    from privtrain.anonymize.policy import load_policy
    from privtrain.anonymize.tableio import read_table
    from privtrain.datasets import fetch_adult
    from privtrain.trainer.engine import TableSplit, train
    from privtrain.trainer.plan import plan_job
    from privtrain.trainer.spec import TrainingSpec

    split = TableSplit(column="split", train="train", test="test")

    raw_path = fetch_adult()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        signing_key, signing_cert = make_signer(tmp)
        generate_key(tmp / "hmac.key")
        started = time.perf_counter()
        run = anonymize_file(
            raw_path,
            POLICY,
            tmp / "hmac.key",
            tmp / "adult.parquet",
            signing_key_path=signing_key,
            signing_cert_path=signing_cert,
        )
        anon_seconds = time.perf_counter() - started
        manifest = json.loads(run.manifest_path.read_text(encoding="utf-8"))["manifest"]
        anon_table = pd.read_parquet(run.output_path)
        anon_domains = manifest["columns"]
        policy = load_policy(POLICY)
        raw_table = read_table(raw_path, None, policy.missing_values)
        domains = raw_domains(POLICY)
        raw_table = raw_table[list(domains)]
        view = released_view(raw_table, POLICY, run.levels)
        all_test = view[(view["split"] == "test").fillna(False)]
        print(
            f"anonymized Adult: {run.rows_out} of {run.rows_raw} rows "
            f"({run.rows_suppressed} suppressed), k = {run.k_achieved}, levels {run.levels}, "
            f"{anon_seconds:.1f} s"
        )

        rows = []
        for seed in args.seeds:
            for arm, table, doms in (
                ("raw", raw_table, domains),
                ("anonymized", anon_table, anon_domains),
            ):
                spec = TrainingSpec(
                    dataset_id=f"adult-{arm}",
                    target_column="income",
                    model="mlp",
                    hidden_sizes=(64,),
                    target_epsilon=args.epsilon,
                    target_delta=1e-5,
                    epochs=5,
                    batch_size=512,
                    seed=seed,
                    device=args.device,
                    # The owner's own measurement: exact test accuracy, no DP release of
                    # it (the whole ε goes to training, in both arms alike).
                    release_test_accuracy="none",
                )
                out_dir = tmp / f"{arm}-{seed}"
                out_dir.mkdir()
                # No server publishes noisy counts here: the plan takes the exact ones.
                labels = table[split.column].astype("string")
                plan = plan_job(
                    spec, int((labels == split.train).sum()), int((labels == split.test).sum())
                )
                result = train(spec, table, doms, split, out_dir, _Quiet(), plan=plan)
                rows.append(
                    {
                        "arm": arm,
                        "seed": seed,
                        "accuracy": result.exact_test_accuracy,
                        "epsilon": result.epsilon,
                        "sigma": result.noise_multiplier,
                        "train_rows": result.train_rows,
                        "test_rows": result.test_rows,
                        "seconds": result.train_seconds,
                    }
                )
                r = rows[-1]
                if arm == "anonymized":
                    # The same model on every raw test row, generalized but not suppressed:
                    # the people the deployed model meets, and the raw arm's test set.
                    r["accuracy_all_test_rows"] = accuracy_on(result.parameters_path, all_test)
                print(
                    f"{arm:<11} seed {seed}  accuracy {r['accuracy']:.4f}  ε {r['epsilon']:.3f}  "
                    f"σ {r['sigma']:.3f}  train {r['train_rows']:>6}  test {r['test_rows']:>6}  "
                    f"{r['seconds']:.1f} s"
                    + (
                        f"  (all {len(all_test)} raw test rows: {r['accuracy_all_test_rows']:.4f})"
                        if "accuracy_all_test_rows" in r
                        else ""
                    ),
                    flush=True,
                )

    med = {
        arm: statistics.median(r["accuracy"] for r in rows if r["arm"] == arm)
        for arm in ("raw", "anonymized")
    }
    ratio = med["anonymized"] / med["raw"]
    med_all = statistics.median(
        r["accuracy_all_test_rows"] for r in rows if r["arm"] == "anonymized"
    )
    print()
    print(f"{'arm':<11} {'median accuracy':>15}")
    for arm in ("raw", "anonymized"):
        print(f"{arm:<11} {med[arm]:>15.4f}")
    print(
        f"{'anonymized':<11} {med_all:>15.4f}  on all raw test rows (generalized, none suppressed)"
    )
    print(
        f"ratio anonymized / raw = {ratio:.4f} (target >= 0.97); on the same test rows "
        f"{med_all / med['raw']:.4f}"
    )
    print(
        json.dumps(
            {
                "raw_accuracy": round(med["raw"], 4),
                "anonymized_accuracy": round(med["anonymized"], 4),
                "ratio": round(ratio, 4),
                "anonymized_accuracy_all_test_rows": round(med_all, 4),
                "ratio_same_test_rows": round(med_all / med["raw"], 4),
                "epsilon": args.epsilon if args.epsilon != int(args.epsilon) else int(args.epsilon),
                "delta": 1e-5,
                "seeds": list(args.seeds),
                "model": "mlp-64",
                "epochs": 5,
                "batch_size": 512,
                "k": run.k_achieved,
                "rows_suppressed": run.rows_suppressed,
            }
        )
    )


if __name__ == "__main__":
    main()
