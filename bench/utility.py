"""Accuracy against ε for the DP-SGD engine, next to non-private training of the same model.

Adult (UCI census, anonymized with examples/adult/policy.toml; MLP) and the
5,000-image MNIST subset (Opacus' MNIST CNN), ε in {0.5, 1, 3, 8} at δ = 1e-5,
three seeds each; the non-private baseline trains the same model with the same
optimizer, epochs and batch size, without clipping or noise. Prints a table and,
as its last line, one JSON object: {"adult": {ε: median accuracy, ...,
"non_private": ...}, "mnist": {...}}.

Run: ``.venv/bin/python bench/utility.py`` (about 15 minutes on 2 CPU cores;
``--seeds 1 --epsilons 3`` for a quick look).
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

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.datasets.adult import fetch_adult
from privtrain.datasets.mnist_subset import fetch_mnist_subset
from privtrain.secure_transport.issuing import ClientBundle, issue_bundle
from privtrain.secure_transport.pki import init_pki
from privtrain.secure_transport.roles import Role
from privtrain.trainer.dp_sgd import run_dp_sgd
from privtrain.trainer.engine import accuracy, build_encoder, split_rows
from privtrain.trainer.spec import TrainingSpec
from privtrain.trainer.validation import prepare_model

POLICY = Path(__file__).resolve().parents[1] / "examples" / "adult" / "policy.toml"
DELTA = 1e-5
ADULT = dict(model="mlp", hidden_sizes=(64,), epochs=5, batch_size=512, max_physical_batch_size=512,
             learning_rate=0.5, momentum=0.9, max_grad_norm=1.0, target_column="income")
MNIST = dict(model="cnn", epochs=10, batch_size=512, max_physical_batch_size=256, learning_rate=0.25,
             momentum=0.9, max_grad_norm=1.0, target_column="label")
MNIST_TEST_ROWS = 1000
# Without clipping, the DP learning rates diverge; the non-private baseline uses its own.
NON_PRIVATE_LR = {"adult": 0.5, "mnist": 0.1}


class _Silent:
    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, report: Any) -> None: ...
    def on_epoch(self, epoch: int, acc: float, eps: float) -> None: ...


def adult_tensors(work: Path) -> tuple[TensorDataset, np.ndarray, np.ndarray, tuple[int, ...], int, dict]:
    """Anonymize Adult once; return train data, test arrays, input shape, classes, domains."""
    owner = ClientBundle(work / "owner")
    issue_bundle(init_pki(work / "pki"), role=Role.DATA_OWNER, name="owner", out=owner.directory)
    key = work / "owner.hmac"
    generate_key(key)
    out = work / "adult.anon.parquet"
    anonymize_file(fetch_adult(), POLICY, key, out, signing_key_path=owner.key,
                   signing_cert_path=owner.cert)
    manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())["manifest"]
    table = pq.read_table(out).to_pandas()
    spec = TrainingSpec(dataset_id="adult", **ADULT)  # type: ignore[arg-type]
    train, test = split_rows(table, spec)
    encoder = build_encoder(spec, manifest["columns"])
    x, y = encoder.encode(train)
    xt, yt = encoder.encode(test)
    return (TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), xt, yt, (encoder.width,),
            len(encoder.classes), manifest)


def mnist_tensors() -> tuple[TensorDataset, np.ndarray, np.ndarray, tuple[int, ...], int]:
    """The MNIST subset split 4,000 / 1,000 by a fixed permutation (the file is sorted by digit)."""
    images, labels = fetch_mnist_subset()
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:MNIST_TEST_ROWS], order[MNIST_TEST_ROWS:]
    return (TensorDataset(torch.from_numpy(images[train]), torch.from_numpy(labels[train])),
            images[test], labels[test], (1, 28, 28), 10)


def non_private(spec: TrainingSpec, model: nn.Module, data: TensorDataset, xt: np.ndarray,
                yt: np.ndarray, seed: int, lr: float) -> float:
    """Same model, optimizer, epochs and batch size; no clipping, no noise."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=spec.batch_size, shuffle=True, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=spec.momentum)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(spec.epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    return accuracy(model, xt, yt, torch.device("cpu"))


def run_task(name: str, base: dict, data: TensorDataset, xt: np.ndarray, yt: np.ndarray,
             shape: tuple[int, ...], classes: int, epsilons: list[float], seeds: list[int],
             work: Path) -> dict[str, float]:
    """Median accuracy per ε and non-private, over ``seeds``; prints one row per run."""
    medians: dict[str, float] = {}
    for eps in [*epsilons, None]:
        accs = []
        for seed in seeds:
            spec = TrainingSpec(dataset_id=name, seed=seed, target_epsilon=eps or 1.0,
                                target_delta=DELTA, accountant="prv", **base)  # type: ignore[arg-type]
            torch.manual_seed(seed)
            prepared = prepare_model(spec, shape, classes)
            started = time.perf_counter()
            if eps is None:
                acc = non_private(spec, prepared.model, data, xt, yt, seed, NON_PRIVATE_LR[name])
                spent = float("inf")
            else:
                result = run_dp_sgd(spec, prepared.model, data,
                                    lambda m: accuracy(m, xt, yt, torch.device("cpu")),
                                    work / f"{name}-{eps}-{seed}", _Silent(),
                                    clipping_mode=prepared.clipping_mode,
                                    max_physical_batch_size=prepared.max_physical_batch_size)
                acc, spent = result.test_accuracy, result.epsilon
            accs.append(acc)
            label = "non-private" if eps is None else f"{eps:g}"
            print(f"{name:<6} ε={label:<11} seed={seed}  accuracy={acc:.4f}  "
                  f"ε spent={spent:.4f}  {time.perf_counter() - started:6.1f} s", flush=True)
        medians["non_private" if eps is None else f"{eps:g}"] = round(statistics.median(accs), 4)
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 3.0, 8.0])
    parser.add_argument("--tasks", nargs="+", default=["adult", "mnist"], choices=["adult", "mnist"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = list(range(args.seeds))
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="privtrain-utility-") as tmp:
        work = Path(tmp)
        if "adult" in args.tasks:
            data, xt, yt, shape, classes, _ = adult_tensors(work)
            figures["adult"] = run_task("adult", ADULT, data, xt, yt, shape, classes, args.epsilons,
                                        seeds, work)
        if "mnist" in args.tasks:
            data, xt, yt, shape, classes = mnist_tensors()
            figures["mnist"] = run_task("mnist", MNIST, data, xt, yt, shape, classes, args.epsilons,
                                        seeds, work)
    print()
    columns = [f"{e:g}" for e in args.epsilons] + ["non_private"]
    print(f"{'median accuracy':<16}" + "".join(f"{'ε=' + c if c != 'non_private' else c:>13}" for c in columns))
    for task, row in figures.items():
        print(f"{task:<16}" + "".join(f"{row[c]:>13.4f}" for c in columns))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
