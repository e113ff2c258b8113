"""Risk and utility report of one anonymization run: figures (JSON) and a page (HTML).

Risk (El Emam & Dankar 2008, "Protecting privacy using k-anonymity", JAMIA 15(5)).
With f_j the size of equivalence class j in the released table (n rows, J classes)
and F_j the size of the same class in the population:

* prosecutor (the attacker knows the target is in the release): per-record risk
  1/f_j; maximum 1/min f_j; average J/n;
* journalist (the attacker does not know whether the target is in the release):
  maximum 1/min F_j; average over released records of 1/F_j;
* marketer (the attacker re-identifies as many records as possible): expected share
  re-identified (1/n) * sum_j f_j/F_j.

Population assumption: the raw input is the population (F_j = size of class j among
all raw rows generalized to the released levels, suppressed rows included). A data
owner who knows the real population (a census table) should read the journalist
and marketer figures as upper bounds: a larger population only lowers them.
Because suppression removes whole classes, F_j = f_j on released classes here, so
journalist equals prosecutor and marketer equals J/n.

Sign-off (``release``, ``columns``, ``privacy_models``, ``measures``, ``verdict``): what a
privacy officer approves. The SHA-256 of the input, output, policy and manifest files,
the HMAC key id, the manifest's signer and date; per column its role, treatment,
parameters, published domain and what an attacker can learn; k, and l and t whenever
the policy requires them, as required and achieved; and every measure in plain words
with its threshold and a verdict (:mod:`privtrain.anonymize.report_text`). A policy
without quasi-identifiers claims no k: the report says "not applicable".

Utility: discernibility DM = sum_kept |E|^2 + suppressed * n_raw (Bayardo & Agrawal
2005); generalization precision 1 - mean_i(level_i / height_i) (Sweeney 2002); AECS
= released rows / classes and its normalized form AECS / k (LeFevre et al. 2006,
"Mondrian"); non-uniform entropy sum over QIs and raw records of
-log2 P(raw value | released value), suppressed records charged as fully
generalized (Gionis & Tassa 2009; ARX), with its share of the fully generalized
table's entropy.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from privtrain.anonymize import report_text
from privtrain.anonymize.report_html import render_html
from privtrain.anonymize.risk import class_sizes, combine_codes
from privtrain.atomic_files import staged_bytes

if TYPE_CHECKING:
    from privtrain.anonymize.policy import Policy

REPORT_FORMAT = "privtrain-anonymization-report"
REPORT_VERSION = 2
# Class-size buckets [lo, hi] of the distribution; hi None = open-ended.
BUCKETS: tuple[tuple[int, int | None], ...] = (
    (1, 1), (2, 2), (3, 4), (5, 9), (10, 19), (20, 49), (50, 99), (100, 999), (1000, None),
)  # fmt: skip
# A record is "at risk" when its prosecutor risk exceeds this (class smaller than 5),
# the threshold El Emam & Dankar use for public releases.
RISK_THRESHOLD = report_text.RISK_THRESHOLD
_NA = "\x00<missing>"


def _keys(frame: pd.DataFrame, qis: Sequence[str]) -> npt.NDArray[np.int64]:
    cols = []
    for q in qis:
        codes, uniques = pd.factorize(frame[q].astype("string").fillna(_NA))
        cols.append((np.asarray(codes, dtype=np.int64), max(len(uniques), 1)))
    return combine_codes(cols, len(frame))


def _distribution(sizes: npt.NDArray[np.int64]) -> list[dict[str, Any]]:
    out = []
    for lo, hi in BUCKETS:
        sel = (sizes >= lo) & (sizes <= (hi if hi is not None else np.iinfo(np.int64).max))
        label = str(lo) if hi == lo else (f"{lo}-{hi}" if hi is not None else f"{lo}+")
        out.append({"sizes": label, "classes": int(sel.sum()), "records": int(sizes[sel].sum())})
    return out


def _risk(f_row: npt.NDArray[np.int64], big_f_row: npt.NDArray[np.int64]) -> dict[str, Any]:
    """Prosecutor / journalist / marketer risk from each record's sample and population class."""
    n = len(f_row)
    if n == 0:
        return {"records": 0}
    p = 1.0 / f_row
    return {
        "prosecutor_max": float(p.max()),
        "prosecutor_avg": float(p.mean()),
        "journalist_max": float(1.0 / big_f_row.min()),
        "journalist_avg": float((1.0 / big_f_row).mean()),
        "marketer": float((1.0 / big_f_row).sum() / n),
        "records_at_risk": int((p > RISK_THRESHOLD).sum()),
        "share_at_risk": float((p > RISK_THRESHOLD).mean()),
        "risk_threshold": RISK_THRESHOLD,
    }


def _classes(frame: pd.DataFrame, qis: Sequence[str]) -> dict[str, Any]:
    n = len(frame)
    if n == 0:
        return {"records": 0, "classes": 0, "k": 0, "unique_records": 0, "share_unique": 0.0,
                "distribution": _distribution(np.zeros(0, dtype=np.int64))}  # fmt: skip
    counts, row_size = class_sizes(_keys(frame, qis))
    return {
        "records": n,
        "classes": int(counts.size),
        "k": int(counts.min()),
        "unique_records": int((row_size == 1).sum()),
        "share_unique": float((row_size == 1).mean()),
        "distribution": _distribution(counts),
        "_row_size": row_size,
    }


def _entropy_loss(
    raw_q: pd.Series, gen_q: pd.Series, kept: npt.NDArray[np.bool_]
) -> tuple[float, float]:
    """Non-uniform entropy of one QI (bits) and its fully generalized maximum."""
    raw = raw_q.astype("string").fillna(_NA)
    gen = gen_q.astype("string").fillna(_NA).where(kept, "\x00<suppressed>")
    pair = raw + "\x1f" + gen
    p = pair.map(pair.value_counts()).to_numpy(dtype=float) / gen.map(gen.value_counts()).to_numpy(
        dtype=float
    )
    top = raw.map(raw.value_counts()).to_numpy(dtype=float) / len(raw)
    return float(-np.log2(p).sum()), float(-np.log2(top).sum())


def build_report(
    raw_df: pd.DataFrame,
    out_df: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    *,
    policy: Policy | None = None,
    levels: Mapping[str, int] | None = None,
    source: str = "<input>",
    k_target: int | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compute the risk and utility figures of an anonymized table.

    Parameters
    ----------
    raw_df : pd.DataFrame
        The raw input, n_raw rows (as read by the anonymizer: text cells).
    out_df : pd.DataFrame
        The released table, n_out rows, QIs at their released levels.
    quasi_identifiers : sequence of str
        QI columns (present in both tables).
    policy : Policy | None
        With ``levels``: generalize the raw QIs to the released levels, which gives the
        population classes F_j, the suppressed records and the non-uniform entropy.
        Without: the release is its own population and entropy is not computed.
    levels : mapping QI -> level | None
        Generalization level per QI (the manifest's ``generalization_levels``).
    source : str
        Input name for errors raised while generalizing.
    k_target : int | None
        The policy's k, for the normalized AECS (default: ``policy.k``).
    manifest : mapping | None
        The run's manifest: the published domains, key id and split of ``columns``.

    Returns
    -------
    dict
        JSON-ready: ``rows``, ``before``/``after`` (classes, k, unique records,
        class-size distribution), ``risk`` before/after, ``information_loss``, ``levels``;
        ``privacy_models`` (k, l, t required and achieved), ``columns`` (with a policy),
        ``measures`` and ``verdict``. Without quasi-identifiers ``k`` is None: not claimed.
    """
    qis = list(quasi_identifiers)
    n_raw, n_out = len(raw_df), len(out_df)
    before = _classes(raw_df, qis)
    after = _classes(out_df, qis)
    f_before = before.pop("_row_size", np.zeros(0, dtype=np.int64))
    f_after = after.pop("_row_size", np.zeros(0, dtype=np.int64))
    big_f_after = f_after
    loss: dict[str, Any] = {}
    k = k_target if k_target is not None else (policy.k if policy is not None else None)

    if policy is not None and levels is not None and qis:
        from privtrain.anonymize.operators.generalize import Generalization

        gens = {q: Generalization(raw_df[q], policy.columns[q], source) for q in qis}
        population = pd.DataFrame({q: gens[q].labels(levels[q]) for q in qis})
        # A raw record is released iff its generalized class is a released class
        # (suppression removes whole classes).
        pop_keys = _keys(pd.concat([population, out_df[qis]], ignore_index=True), qis)
        released = set(pop_keys[n_raw:].tolist())
        kept = np.isin(pop_keys[:n_raw], np.fromiter(released, dtype=np.int64))
        _, pop_size = class_sizes(pop_keys[:n_raw])
        big_f_after = np.zeros(n_out, dtype=np.int64)
        if n_out:
            size_of = pd.Series(pop_size, index=pop_keys[:n_raw]).groupby(level=0).first()
            big_f_after = size_of.reindex(pop_keys[n_raw:]).to_numpy(dtype=np.int64)
        heights = {q: gens[q].height for q in qis}
        nue = [_entropy_loss(raw_df[q], population[q], kept) for q in qis]
        total, top = sum(a for a, _ in nue), sum(b for _, b in nue)
        loss["precision"] = 1.0 - sum(levels[q] / heights[q] for q in qis) / len(qis)
        loss["non_uniform_entropy_bits"] = total
        loss["non_uniform_entropy_share"] = total / top if top > 0 else 0.0
        if int(kept.sum()) != n_out:
            loss["note"] = "released rows do not match the raw classes at these levels"
    if not qis:  # one class of every row: no k is claimed
        before["k"] = after["k"] = None
    suppressed = n_raw - n_out
    classes_out = after["classes"]
    loss["discernibility"] = _dm(f_after) + suppressed * n_raw
    loss["aecs"] = n_out / classes_out if classes_out else 0.0
    if k:
        loss["aecs_normalized"] = loss["aecs"] / k
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "quasi_identifiers": qis,
        "levels": dict(levels) if levels is not None else None,
        "k_target": k,
        "rows": {
            "input": n_raw,
            "output": n_out,
            "suppressed": suppressed,
            "share_suppressed": suppressed / n_raw if n_raw else 0.0,
        },
        "before": before,
        "after": after,
        "risk": {
            "population": "raw input" if policy is not None and levels is not None else "release",
            "before": _risk(f_before, f_before),
            "after": _risk(f_after, big_f_after),
        },
        "information_loss": loss,
    }
    if policy is not None:
        report["max_suppression"] = policy.max_suppression
    report["privacy_models"] = report_text.privacy_models(
        k, after["k"], qis, _required_models(policy), _achieved_models(out_df, qis, policy)
    )
    if policy is not None:
        manifest = manifest or {}
        report["columns"] = report_text.column_entries(
            policy, levels, manifest.get("columns"), manifest.get("key_id"), manifest.get("split")
        )
    return finalize_report(report)


def _required_models(policy: Policy | None) -> dict[str, Any]:
    if policy is None or (policy.l is None and policy.t is None):
        return {}
    return {"l": policy.l, "l_kind": policy.l_diversity, "t": policy.t,
            "sensitive_attributes": list(policy.sensitive_attributes)}  # fmt: skip


def _achieved_models(
    out_df: pd.DataFrame, qis: Sequence[str], policy: Policy | None
) -> dict[str, Any]:
    """l and t measured on the released table (not read back from the run)."""
    from privtrain.anonymize.privacy_models import table_models

    required = _required_models(policy)
    names = required.get("sensitive_attributes") or []
    if not required or not names or len(out_df) == 0 or any(n not in out_df for n in names):
        return {}
    assert policy is not None
    columns = {n: {"type": policy.columns[n].type} for n in names}
    return table_models(out_df, {"sensitive_attributes": names}, list(qis), columns)


def finalize_report(report: dict[str, Any]) -> dict[str, Any]:
    """Add (or renew) ``measures`` and ``verdict`` from every figure the report now holds.

    :func:`write_report` calls it again, so figures added after :func:`build_report`
    (by other checks) are measured too.
    """
    report["measures"] = report_text.measures(report)
    report["verdict"] = report_text.overall(report["measures"])
    return report


def _dm(row_size: npt.NDArray[np.int64]) -> int:
    # sum over classes |E|^2 == sum over rows of the row's class size.
    return int(row_size.sum())


def write_report(report: Mapping[str, Any], html_path: Path) -> tuple[Path, Path]:
    """Write the report as HTML at ``html_path`` and as JSON beside it (``.json``).

    ``measures`` and ``verdict`` are renewed first (:func:`finalize_report`). Both files
    are written atomically (temporary file + rename).

    Returns
    -------
    (html_path, json_path)
    """
    html_path = Path(html_path)
    json_path = html_path.with_suffix(".json")
    report = finalize_report(dict(report))
    figures = (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    # Both staged before either is renamed: a full disk leaves neither half of the report.
    with staged_bytes(json_path, figures) as commit_json, staged_bytes(
        html_path, render_html(report).encode("utf-8")
    ) as commit_html:
        commit_json()
        commit_html()
    return html_path, json_path


def report_for_run(
    raw_df: pd.DataFrame, out_df: pd.DataFrame, manifest: Mapping[str, Any], policy: Policy
) -> dict[str, Any]:
    """:func:`build_report` with the QIs and levels a run's manifest records, and the
    figures of what else is released (``kept_column_uniqueness``, ``released_risk``:
    :func:`privtrain.anonymize.released_risk.report_fields`)."""
    from privtrain.anonymize.released_risk import report_fields

    report = build_report(
        raw_df,
        out_df,
        manifest["quasi_identifiers"],
        policy=policy,
        levels=manifest["generalization_levels"],
        k_target=manifest["k_target"],
        manifest=manifest,
    )
    report.update(report_fields(manifest, out_df))
    return report


def file_sha256(path: Path, stop: threading.Event | None = None) -> tuple[str, int]:
    """Hex SHA-256 and size in bytes of a file, read in 1 MiB blocks.

    Raises
    ------
    OSError
        The file cannot be read.
    InterruptedError
        ``stop`` was set before the end (the caller no longer wants the digest).
    """
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            if stop is not None and stop.is_set():
                raise InterruptedError(f"{path}: hashing stopped")
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _signer(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Who signed the manifest: the embedded certificate's subject and fingerprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(str(envelope["signer_certificate"]).encode("ascii"))
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return {
        "common_name": str(names[0].value) if names else None,
        "subject": cert.subject.rfc4514_string(),
        "certificate_sha256": hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest(),
        "certificate_serial": format(cert.serial_number, "x"),
        "algorithm": envelope.get("signature_algorithm"),
    }


def release_entry(
    input_path: Path,
    output_path: Path,
    manifest_path: Path,
    policy_path: Path,
    envelope: Mapping[str, Any],
) -> dict[str, Any]:
    """The ``release`` section: the files' SHA-256, the key id, the signer and the dates."""
    manifest = envelope["manifest"]
    files: dict[str, Any] = {}
    for role, path in (("input", input_path), ("output", output_path),
                       ("policy", policy_path), ("manifest", manifest_path)):  # fmt: skip
        digest, size = file_sha256(Path(path))
        files[role] = {"file": Path(path).name, "sha256": digest, "bytes": size}
    files["input"]["rows"] = manifest.get("input_rows")
    files["output"]["rows"] = manifest.get("output_rows")
    files["output"]["matches_manifest"] = files["output"]["sha256"] == manifest.get(
        "output_sha256"
    )
    files["policy"]["matches_manifest"] = files["policy"]["sha256"] == manifest.get(
        "policy_sha256"
    )
    if "input_sha256" in manifest:  # absent from manifests written before it was recorded
        files["input"]["matches_manifest"] = files["input"]["sha256"] == manifest["input_sha256"]
    return {
        **files,
        "key_id": manifest.get("key_id"),
        "signer": _signer(envelope),
        "signed_at": manifest.get("created_at"),
        "report_created_at": datetime.now(UTC).isoformat(timespec="seconds").replace(
            "+00:00", "Z"
        ),
        "tool_version": manifest.get("tool_version"),
        "split": manifest.get("split"),
    }


def check_report_path(html_path: Path, others: Sequence[Path]) -> None:
    """Refuse a report path (or its JSON twin) that is a folder or would overwrite ``others``.

    Raises
    ------
    AnonymizationError
        Naming the clash; called before the run, so nothing is written.
    """
    from privtrain.anonymize.errors import AnonymizationError

    html_path = Path(html_path)
    targets = {html_path.resolve(), html_path.with_suffix(".json").resolve()}
    for other in others:
        if Path(other).resolve() in targets:
            raise AnonymizationError(
                f"report {html_path} (or its .json twin) would overwrite {other}; "
                "choose another --report"
            )
    if html_path.suffix.lower() not in {".html", ".htm"}:
        raise AnonymizationError(f"report {html_path}: --report needs a file name ending in .html")
    folder = html_path.resolve().parent
    if not folder.is_dir():
        raise AnonymizationError(f"report folder {folder} does not exist")
    try:  # a read-only folder (or file system) would fail only after the run
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise AnonymizationError(
            f"report folder {folder} is not writable ({exc.strerror}); choose another --report"
        ) from None


def write_run_report(
    input_path: Path,
    output_path: Path,
    manifest_path: Path,
    policy_path: Path,
    html_path: Path,
    *,
    encoding: str | None = None,
) -> dict[str, Any]:
    """Report on a finished run from its files: raw input, written output, manifest, policy.

    This is what ``anonymize run --report`` calls after the run; a pipeline that still
    holds both tables can call :func:`report_for_run` and :func:`write_report` instead.

    Returns
    -------
    dict
        The report that was written (HTML at ``html_path``, JSON beside it).
    """
    from privtrain.anonymize.policy import load_policy
    from privtrain.anonymize.tableio import read_table

    policy = load_policy(policy_path)
    envelope = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    manifest = envelope["manifest"]
    raw = read_table(Path(input_path), encoding, policy.missing_values)
    out = read_table(Path(output_path))
    report = report_for_run(raw, out, manifest, policy)
    report["release"] = release_entry(input_path, output_path, manifest_path, policy_path, envelope)
    finalize_report(report)
    write_report(report, html_path)
    return report


def headline(report: Mapping[str, Any]) -> dict[str, Any]:
    """The few figures worth signing into a manifest (``risk`` entry), JSON-ready."""
    after = report["risk"]["after"]
    return {
        "prosecutor_max": after.get("prosecutor_max"),
        "prosecutor_avg": after.get("prosecutor_avg"),
        "journalist_max": after.get("journalist_max"),
        "marketer": after.get("marketer"),
        "share_unique_before": report["before"]["share_unique"],
        "share_unique_after": report["after"]["share_unique"],
        "population": report["risk"]["population"],
    }
