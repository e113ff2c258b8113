"""``privtrain anonymize inspect | keygen | run | verify``: the data owner's command line.

``platform/cli.py`` calls :func:`add_anonymize_commands` on its subparsers; each
command stores its handler as ``args.func``, which returns the exit code.
Failures are raised as ``PrivtrainError`` subclasses for the top-level CLI to
print as one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file, verify_output


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_anonymize_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``anonymize keygen``, ``anonymize run`` and ``anonymize verify``.

    Parameters
    ----------
    subparsers
        The object returned by ``ArgumentParser.add_subparsers()``.
    """
    anon = subparsers.add_parser("anonymize", help="anonymize a table on the data owner's machine")
    sub = anon.add_subparsers(dest="anonymize_command", required=True, metavar="COMMAND")

    insp = sub.add_parser(
        "inspect", help="classify the columns of INPUT and write a commented policy to edit"
    )
    insp.add_argument("input", type=Path, metavar="INPUT", help="raw CSV, Parquet or JSON Lines")
    insp.add_argument("--out", type=Path, default=None, metavar="POLICY.toml")
    insp.add_argument("--k", type=_positive_int, default=5, help="k written into the policy")
    insp.add_argument(
        "--encoding", default=None, help="CSV text encoding (default: UTF-8, else detected)"
    )
    insp.add_argument(
        "--no-presidio",
        action="store_true",
        help="judge free text with the built-in patterns even when Presidio is installed",
    )
    insp.set_defaults(func=_inspect)

    keygen = sub.add_parser("keygen", help="create a new HMAC secret key file (mode 0600)")
    keygen.add_argument("--out", type=Path, required=True, metavar="KEYFILE")
    keygen.set_defaults(func=_keygen)

    run = sub.add_parser("run", help="anonymize INPUT into Parquet + signed manifest")
    run.add_argument("input", type=Path, metavar="INPUT", help="raw CSV, Parquet or JSON Lines")
    run.add_argument("--policy", type=Path, required=True, metavar="POLICY.toml")
    run.add_argument("--key", type=Path, required=True, metavar="KEYFILE")
    run.add_argument(
        "--out", type=Path, required=True, metavar="OUTPUT",
        help="file to write: Parquet, or CSV / JSON Lines when it ends in .csv / .jsonl"
    )
    run.add_argument("--signing-key", type=Path, required=True, metavar="OWNER.key")
    run.add_argument("--signing-cert", type=Path, required=True, metavar="OWNER.pem")
    run.add_argument(
        "--encoding", default=None, help="CSV text encoding (default: UTF-8, else detected)"
    )
    run.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="REPORT.html",
        help="also write a risk and utility report (HTML, and JSON beside it)",
    )
    run.add_argument(
        "--previous-manifest",
        type=Path,
        default=None,
        metavar="EARLIER.manifest.json",
        help="signed manifest of an earlier release: refuse a run whose tokens or "
        "pseudonyms would not match it",
    )
    run.add_argument(
        "--rotate-key",
        action="store_true",
        help="with --previous-manifest: accept a new key on purpose (recorded as "
        "rotated_from_key_id; tokens change)",
    )
    run.add_argument(
        "--remap",
        action="store_true",
        help="with --previous-manifest: accept another Faker version, locale, pseudonym "
        "scheme or pseudonym store (recorded as remapped_from; pseudonyms change)",
    )
    run.add_argument(
        "--pseudonym-store",
        type=Path,
        default=None,
        metavar="STORE",
        help="the pseudonyms handed out under this key (SQLite, mode 0600; default: "
        "KEYFILE.pseudonyms.sqlite beside --key, created on first use); keep it with the key",
    )
    run.set_defaults(func=_run)

    verify = sub.add_parser("verify", help="check an anonymized file against its signed manifest")
    verify.add_argument("output", type=Path, metavar="OUTPUT")
    verify.add_argument("--manifest", type=Path, required=True, metavar="M")
    verify.add_argument(
        "--raw", type=Path, default=None, help="raw input: also check no direct identifier leaked"
    )
    verify.add_argument("--encoding", default=None, help="CSV text encoding of --raw")
    verify.set_defaults(func=_verify)


def _inspect(args: argparse.Namespace) -> int:
    from privtrain.anonymize.inspect_table import inspect_table

    proposals = inspect_table(
        args.input, args.out, k=args.k, encoding=args.encoding, presidio=not args.no_presidio
    )
    print(f"{'column':<28} {'kind':<12} {'role':<18} {'distinct':>8} {'unique':>6} {'missing':>7}")
    for p in proposals:
        f = p.facts
        print(
            f"{p.name[:28]:<28} {p.kind:<12} {p.role:<18} {f.distinct:>8} "
            f"{f.uniqueness:>6.2f} {f.missing:>7}"
        )
    from privtrain.anonymize.public_bounds import CONFIRM

    marked = [p.name for p in proposals if any(CONFIRM in line for line in p.lines)]
    if marked and args.out is not None:
        print(f"info: {len(marked)} column(s) carry bounds or domains marked {CONFIRM} "
              "(published in the manifest): replace them with the documented ones")
    detectors = sorted({p.detector for p in proposals if p.detector is not None})
    if detectors:
        print(f"info: free text judged by {', '.join(detectors)}")
    if all('operator = "drop"' in p.lines for p in proposals):
        print("warning: every column is proposed as drop; `run` refuses to release nothing "
              "until you keep or transform at least one", file=sys.stderr)
    if args.out is not None:
        print(
            f"wrote {args.out}: review it, then `privtrain anonymize run ... --policy {args.out}`"
        )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    key = generate_key(args.out)
    print(f"wrote {args.out} (key_id {key.key_id}); keep it secret and backed up")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.report is not None:
        from privtrain.anonymize.pipeline import manifest_path_for
        from privtrain.anonymize.report import check_report_path

        others = [args.input, args.policy, args.key, args.out, manifest_path_for(args.out),
                  args.signing_key, args.signing_cert, args.previous_manifest,
                  args.pseudonym_store]  # fmt: skip
        check_report_path(args.report, [p for p in others if p is not None])
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a pipe or a log file gets the summary lines only
    ) as bar:
        task = bar.add_task("anonymize", total=1.0)
        report = anonymize_file(
            args.input,
            args.policy,
            args.key,
            args.out,
            signing_key_path=args.signing_key,
            signing_cert_path=args.signing_cert,
            encoding=args.encoding,
            progress=lambda stage, done: bar.update(task, description=stage, completed=done),
            previous_manifest=args.previous_manifest,
            rotate_key=args.rotate_key,
            remap=args.remap,
            pseudonym_store=args.pseudonym_store,
        )
    levels = ", ".join(f"{q}={lv}" for q, lv in report.levels.items())
    k_text = (
        f"k={report.k_achieved}, levels {levels}, precision loss {report.precision_loss:.3f}"
        if report.levels
        else "k not applicable: the policy declares no quasi-identifiers"
    )
    print(
        f"wrote {report.output_path} ({report.rows_out} of {report.rows_raw} rows, "
        f"{report.rows_suppressed} suppressed, {k_text})\n"
        f"wrote {report.manifest_path} (output sha256 {report.output_sha256})"
    )
    print(_released_line(report.released_risk, report.k_achieved, report.k_declared))
    for column, n in report.pseudonym_clashes.items():
        print(
            f"warning: column {column!r}: {n} value(s) of this file are, as real text, the "
            "pseudonym another person of this file kept from an earlier release (one person, "
            "one pseudonym); `verify --raw` will name the column",
            file=sys.stderr,
        )
    if args.previous_manifest is not None:
        changes = []
        if "rotated_from_key_id" in report.continuity:
            changes.append(f"key rotated from {report.continuity['rotated_from_key_id']}")
        if "remapped_from" in report.continuity:
            before = report.continuity["remapped_from"]
            was = (f"Faker {before['faker_version']} {before['faker_locale']}, "
                   f"{before['pseudonym_scheme']}")  # fmt: skip
            if "pseudonym_store" in before:
                store = before["pseudonym_store"]
                was += f", pseudonym store {store['id']} generation {store['generation']}"
            changes.append(f"pseudonyms remapped from {was}")
        print(
            f"continues {args.previous_manifest}: "
            + ("; ".join(changes) if changes else "same key and pseudonyms, tokens match")
        )
    if args.report is not None:
        from privtrain.anonymize.report import write_run_report

        try:
            figures = write_run_report(
                args.input,
                report.output_path,
                report.manifest_path,
                args.policy,
                args.report,
                encoding=args.encoding,
            )
        except BaseException as exc:
            # An earlier run's report there describes another release: it goes too.
            for stale in (args.report, args.report.with_suffix(".json")):
                stale.unlink(missing_ok=True)
            written = f"{report.output_path} and its manifest were written, the report was not"
            if isinstance(exc, OSError):
                raise AnonymizationError(
                    f"{written}: {exc.strerror or exc}: {exc.filename or args.report}"
                ) from None
            print(f"{written} (interrupted)", file=sys.stderr)
            raise
        risk = figures["risk"]["after"]
        wide = figures.get("released_risk", {}).get("risk_attacker_known", {})
        beside = (f"; on the QIs + attacker-known columns {wide['share_unique']:.1%} unique, "
                  f"marketer risk {wide['marketer']:.3f}") if wide else ""  # fmt: skip
        summary = (
            f"unique records {figures['before']['share_unique']:.1%} -> "
            f"{figures['after']['share_unique']:.1%}, prosecutor risk max "
            f"{risk.get('prosecutor_max', 0):.3f} avg {risk.get('prosecutor_avg', 0):.4f}{beside}"
            if figures["quasi_identifiers"]
            else "no quasi-identifiers: no k, no re-identification risk claimed"
        )
        print(
            f"wrote {args.report} and {args.report.with_suffix('.json')} ({summary}; "
            f"verdict: {figures['verdict']})"
        )
    return 0


def _released_line(block: dict[str, object], k: int, k_declared: int | None) -> str:
    """One line on what the release reveals beyond the QIs (privtrain.anonymize.released_risk)."""
    shares = block.get("kept_column_uniqueness") or {}
    known = list(block.get("attacker_known_columns") or [])  # type: ignore[call-overload]
    assert isinstance(shares, dict)
    parts = []
    if known:
        top = max(known, key=lambda c: shares[c])
        parts.append(f"most unique beside the QIs: {top} {shares[top]:.1%} "
                     f"(threshold {block.get('uniqueness_threshold', 0.05):.0%})")  # fmt: skip
    accepted = block.get("accepted_columns") or {}
    if accepted:
        parts.append(f"accepted: {', '.join(accepted)}")  # type: ignore[arg-type]
    if k_declared is not None:
        proxies = ", ".join(block.get("proxies") or {})  # type: ignore[arg-type]
        parts.append(f"k = {k} counting the proxies {proxies} (declared QIs: k = {k_declared})")
    return "released risk: " + ("; ".join(parts) or "no column beside the QIs")


def _verify(args: argparse.Namespace) -> int:
    problems = verify_output(args.output, args.manifest, args.raw, raw_encoding=args.encoding)
    if problems:
        raise AnonymizationError(f"{args.output}: verification failed: {'; '.join(problems)}")
    from privtrain.anonymize.manifest import verify_manifest

    manifest = verify_manifest(args.manifest.read_bytes()).manifest
    k = "k" if manifest["quasi_identifiers"] else "no k (no quasi-identifiers, none claimed)"
    figures = f"domains, {k}, l and t" if manifest.get("privacy_models") else f"domains and {k}"
    checked = f"manifest signature, data hash, {figures} verified"
    if manifest.get("released_risk"):
        counted = " and k counting proxies" if manifest.get("proxy_quasi_identifiers") else ""
        checked += f"; uniqueness beside the QIs{counted} recomputed"
    if args.raw is not None:
        checked += f"; no direct-identifier value of {args.raw} appears in the output"
    print(f"{args.output}: {checked}")
    return 0
