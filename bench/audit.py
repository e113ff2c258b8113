"""Empirical privacy audit of DP-SGD on the anonymized UCI Adult, with the product's own CLI.

Sets up what `make demo` sets up (PKI, database, server, the Adult table anonymized with
examples/adult/policy.toml and uploaded), then runs

    privtrain audit run --dataset ID --epsilon E --canaries M --json            (--runs times)
    privtrain audit run --dataset ID --epsilon E --canaries M --mechanism none --json

and prints each run's figures; the last line is one JSON object with all of them.
Steinke, Nasr & Jagielski 2023: under (ε, δ)-DP, ε_lower ≤ ε at 95% confidence; the run
without noise or clipping must be caught (ε_lower well above 1).

    python bench/audit.py [--epsilon 2] [--canaries 1000] [--runs 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from privtrain.datasets.adult import fetch_adult
from privtrain.platform.demo import PEOPLE, POLICY, privtrain, start_server

WORK = Path(".privtrain-audit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="audits of the DP run (fresh keys each)")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    started = time.monotonic()
    work = WORK.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pki, home = work / "pki", work / "home"
    privtrain("certs", "init", "--dir", pki)
    privtrain("db", "upgrade", "--home", home)
    bundles = {name: work / "people" / name for name in PEOPLE}
    for name, role in PEOPLE.items():
        privtrain("certs", "issue", "--role", role, "--name", name, "--out", bundles[name],
                  "--pki", pki, "--home", home)
    key, anon = work / "owner.hmac", work / "adult.anon.parquet"
    privtrain("anonymize", "keygen", "--out", key)
    privtrain("anonymize", "run", fetch_adult(), "--policy", POLICY, "--key", key, "--out", anon,
              "--signing-key", bundles["alice"] / "client.key",
              "--signing-cert", bundles["alice"] / "client.pem")
    server, target = start_server(work)

    def connection(name: str) -> list[str]:
        return ["--server", target, "--bundle", str(bundles[name])]

    try:
        manifest = json.loads(anon.with_name(anon.name + ".manifest.json").read_text())["manifest"]
        split = [] if "split" in manifest else ["--split-column", "split", "--train-split", "train",
                                                "--test-split", "test"]
        uploaded = json.loads(privtrain("dataset", "upload", anon, "--name", "adult", "--epsilon", "50",
                                        "--delta", "2e-5", *split, "--json", *connection("alice")))
        privtrain("dataset", "grant", uploaded["id"], "--trainer", "bob", *connection("alice"))
        common = ["audit", "run", "--dataset", uploaded["id"], "--epsilon", str(args.epsilon),
                  "--canaries", str(args.canaries), "--epochs", str(args.epochs), "--json"]
        runs = [json.loads(privtrain(*common, *connection("bob")).strip().splitlines()[-1])
                for _ in range(args.runs)]
        none = json.loads(privtrain(*common, "--mechanism", "none", *connection("carol"))
                          .strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    print(f"{'mechanism':9} {'epsilon':>8} {'correct':>8} {'guesses':>8} {'epsilon_lower':>14}")
    for figures in (*runs, none):
        eps = "-" if figures["epsilon"] is None else f"{figures['epsilon']:.3f}"
        print(f"{figures['mechanism']:9} {eps:>8} {figures['correct']:8d} {figures['guesses']:8d} "
              f"{figures['epsilon_lower']:14.3f}")
    print(json.dumps({
        "dataset": "UCI Adult, anonymized (examples/adult/policy.toml)", "epsilon": args.epsilon,
        "canaries": args.canaries, "epochs": args.epochs,
        "dp_epsilon_lower": [r["epsilon_lower"] for r in runs],
        "dp_correct": [r["correct"] for r in runs], "guesses": none["guesses"],
        "none_epsilon_lower": none["epsilon_lower"], "none_correct": none["correct"],
        "wall_s": round(time.monotonic() - started, 1),
    }))
    return 0 if all(r["epsilon_lower"] <= args.epsilon for r in runs) and none["epsilon_lower"] >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
