"""``anonymize verify``: re-check an anonymized file against its signed manifest and raw input.

Every claim is recomputed from the bytes on disk, never read back from the run:
signature, SHA-256 and size; row count, columns and public domains; k (Sweeney
2002) and, when the manifest claims them, l-diversity and t-closeness over the
declared sensitive attributes; and, given the raw file, that no value of a raw
direct-identifier column survives as an output cell.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from privtrain.anonymize.errors import ManifestError
from privtrain.anonymize.manifest import verify_manifest
from privtrain.anonymize.released_risk import declared_view
from privtrain.anonymize.released_risk import verify_problems as released_problems
from privtrain.anonymize.risk import k_anonymity

# A bare number ("7", "-1", "3.5"): as a raw identifier value it equals a count or a
# score somewhere by coincidence, so it is only compared with identifier-like columns.
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _domain_problems(table: pd.DataFrame, columns: dict[str, Any]) -> list[str]:
    problems = []
    for name, dom in columns.items():
        if name not in table.columns or not isinstance(dom, dict):
            continue
        values = table[name].dropna()
        if dom.get("type") == "categorical":
            bad = ~values.astype("string").isin([str(v) for v in dom.get("values", [])])
        elif dom.get("type") == "numeric":
            num = pd.to_numeric(values, errors="coerce")
            bad = num.isna() | (num < dom["lower"]) | (num > dom["upper"])
        else:
            continue
        if bool(bad.any()):
            row = int(np.flatnonzero(bad.to_numpy(dtype=bool))[0])
            problems.append(
                f"column {name!r}: {int(bad.sum())} value(s) outside the manifest's domain "
                f"(first at output row {int(values.index[row]) + 1})"
            )
    return problems


def _k_problems(table: pd.DataFrame, manifest: dict[str, Any]) -> list[str]:
    qis = [q for q in manifest["quasi_identifiers"] if q in table.columns]
    if len(qis) != len(manifest["quasi_identifiers"]):
        return ["a quasi-identifier named in the manifest is missing from the output"]
    problems = []
    if not qis:
        # No quasi-identifiers: no k is claimed (0; manifests before this rule said the
        # row count, the one class of the whole table).
        if manifest["k_achieved"] not in (0, len(table)):
            problems.append(
                f"the manifest names no quasi-identifiers yet claims k = {manifest['k_achieved']}"
            )
        return problems
    k = k_anonymity(table, qis)
    if k != manifest["k_achieved"]:
        problems.append(
            f"k recomputed from the output is {k}, manifest says {manifest['k_achieved']}"
        )
    if k < manifest["k_target"]:
        problems.append(
            f"k recomputed from the output is {k}, below the target {manifest['k_target']}"
        )
    return problems


def verify_output(
    output_path: Path,
    manifest_path: Path,
    raw_path: Path | None = None,
    *,
    raw_encoding: str | None = None,
) -> list[str]:
    """Check an anonymized file against its signed manifest (and its raw input).

    Parameters
    ----------
    output_path : Path
        The anonymized file (Parquet).
    manifest_path : Path
        Its signed manifest.
    raw_path : Path | None
        The raw input; when given, no raw direct-identifier value may equal an output cell.
    raw_encoding : str | None
        Text encoding of a raw CSV (None: UTF-8, then detection).

    Returns
    -------
    list of str
        Problems found; empty when everything holds. Messages never quote raw values.
    """
    from privtrain.anonymize.privacy_models import model_problems
    from privtrain.anonymize.tableio import decode_table, read_table

    try:
        manifest_bytes = Path(manifest_path).read_bytes()
        data = Path(output_path).read_bytes()
    except OSError as exc:
        return [f"{exc.filename}: cannot read ({exc.strerror})"]
    try:
        manifest = verify_manifest(manifest_bytes).manifest
    except ManifestError as exc:
        return [f"{manifest_path}: {exc}"]
    problems = []
    try:
        verify_manifest(manifest_bytes, data)
    except ManifestError as exc:
        problems.append(f"{output_path}: {exc}")
    try:
        table = decode_table(data, Path(output_path))
    except (ValueError, OSError) as exc:
        return [*problems, f"{output_path}: not a readable table ({' '.join(str(exc).split())})"]
    if len(table) != manifest["output_rows"]:
        problems.append(f"output has {len(table)} rows, manifest says {manifest['output_rows']}")
    if set(table.columns) != set(manifest["columns"]):
        problems.append(
            f"output columns {sorted(table.columns)} differ from the manifest's "
            f"{sorted(manifest['columns'])}"
        )
    problems += _domain_problems(table, manifest["columns"])
    # k, l, t over the declared QIs, then over the QIs + kept proxies and the uniqueness
    # figures of what else is released (privtrain.anonymize.released_risk).
    declared = declared_view(manifest)
    problems += _k_problems(table, declared)
    problems += model_problems(table, declared)
    problems += released_problems(table, manifest)
    if raw_path is not None:
        raw = read_table(Path(raw_path), raw_encoding)
        problems += leak_problems(table, raw, manifest["direct_identifiers"], manifest["columns"])
    return problems


def _norm(values: pd.Series) -> pd.Series:
    text = values.dropna().astype("string").str.normalize("NFC")
    text = text.str.replace(r"\s+", " ", regex=True).str.strip().str.casefold()
    return pd.Series(pd.unique(text[text != ""]), dtype=object)


def leak_problems(
    table: pd.DataFrame,
    raw: pd.DataFrame,
    direct: list[str],
    domains: dict[str, Any] | None = None,
) -> list[str]:
    """Raw direct-identifier values that survive as output cells.

    Values are compared after Unicode NFC, whitespace runs made one space, stripping
    and case folding, so "Miguel  Hernandez" in the output matches "miguel hernandez"
    in the raw file. A raw value
    that is a bare number is compared only with the output column of the same name
    and with identifier or free-text columns: the record id ``7`` equalling a
    ``priors_count`` of 7 is a coincidence of small integers, not a leak.

    Returns
    -------
    list of str
        One line per (output column, identifier) pair with hits; never quotes a value.
    """
    domains = domains or {}
    outputs = {name: _norm(table[name]) for name in table.columns}
    problems = []
    for di in direct:
        if di not in raw.columns:
            problems.append(f"direct identifier {di!r} is not a column of the raw file")
            continue
        secrets_ = _norm(raw[di])
        numeric = secrets_.str.fullmatch(_NUMBER).to_numpy(dtype=bool)
        words = np.asarray(secrets_[~numeric], dtype=object)
        numbers = np.asarray(secrets_[numeric], dtype=object)
        for name, values in outputs.items():
            kind = (domains.get(name) or {}).get("type")
            lookup = words
            if name == di or kind in {"identifier", "text"}:
                lookup = np.concatenate([words, numbers])
            hits = int(values.isin(lookup).sum())
            if hits:
                problems.append(
                    f"{hits} distinct value(s) of output column {name!r} equal a raw value of "
                    f"direct identifier {di!r}"
                )
    return problems
