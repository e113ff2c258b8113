"""The anonymization run: raw table + policy + key -> anonymized Parquet + signed manifest.

Order of work, chosen so nothing half-done is ever left on disk: read and
validate everything, apply the column operators, search the generalization
lattice, suppress the records of small classes, re-check k on the finished
table, encode the Parquet file in memory, build and sign the manifest, and
only then write both files atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faker
import numpy as np
import pandas as pd

from privtrain import __version__
from privtrain.atomic_files import atomic_write_bytes
from privtrain.anonymize.errors import AnonymizationError, ManifestError, PolicyError
from privtrain.anonymize.keys import load_key
from privtrain.anonymize.lattice import search
from privtrain.anonymize.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    sign_manifest,
    verify_manifest,
)
from privtrain.anonymize.operators.generalize import Generalization
from privtrain.anonymize.operators.registry import OperatorContext, get_operator
from privtrain.anonymize.policy import Policy, load_policy
from privtrain.anonymize.risk import k_anonymity
from privtrain.errors import NotFound

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class AnonymizationReport:
    """Outcome of :func:`anonymize_file`.

    Attributes
    ----------
    rows_raw, rows_out, rows_suppressed : int
        Input rows, output rows, rows removed because their class was smaller than k.
    k_achieved : int
        Smallest equivalence class of the output over the QIs (>= the policy's k).
    levels : dict[str, int]
        Generalization level per QI (0 = raw).
    precision_loss : float
        mean_i(level_i / height_i) in [0, 1] (Sweeney 2002).
    discernibility : int
        Discernibility metric (Bayardo & Agrawal 2005).
    aecs : float
        Average equivalence class size, rows per class.
    output_path, manifest_path : Path
        Files written.
    output_sha256 : str
        Hex SHA-256 of the Parquet file bytes.
    """

    rows_raw: int
    rows_out: int
    rows_suppressed: int
    k_achieved: int
    levels: dict[str, int]
    precision_loss: float
    discernibility: int
    aecs: float
    output_path: Path
    manifest_path: Path
    output_sha256: str


def manifest_path_for(out_path: Path) -> Path:
    """``OUTPUT.manifest.json`` beside ``OUTPUT``."""
    return out_path.with_name(out_path.name + ".manifest.json")


def read_table(path: Path, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a CSV (every column as text) or Parquet table.

    CSV cells are read as strings so ZIP codes keep leading zeros and a person named
    "NA" stays "NA"; only an empty cell is missing.

    Raises
    ------
    NotFound
        No such file.
    AnonymizationError
        Undecodable bytes (the message suggests ``--encoding``) or malformed CSV/Parquet.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: input file not found")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path).reset_index(drop=True)
        return pd.read_csv(
            path, dtype="string", keep_default_na=False, na_values=[""], encoding=encoding
        )
    except UnicodeDecodeError as exc:
        raise AnonymizationError(
            f"{path}: byte {exc.start} is not valid {encoding}; pass --encoding (e.g. cp1252)"
        ) from None
    except (ValueError, OSError) as exc:
        raise AnonymizationError(f"{path}: cannot read table ({exc})") from None


def _check_columns(df: pd.DataFrame, policy: Policy, source: str) -> None:
    declared = set(policy.columns)
    for name in df.columns:
        if name not in declared:
            raise PolicyError(
                f"{policy.source}: columns.{name}: input column {name!r} of {source} "
                "is not declared; "
                f'every column needs a [columns.{name}] entry (use operator = "drop" if unneeded)'
            )
    for name in policy.columns:
        if name not in df.columns:
            raise PolicyError(f"{policy.source}: columns.{name}: declared but absent from {source}")


def anonymize_file(
    input_path: Path,
    policy_path: Path,
    key_path: Path,
    out_path: Path,
    *,
    signing_key_path: Path,
    signing_cert_path: Path,
    encoding: str = "utf-8",
    progress: Progress | None = None,
) -> AnonymizationReport:
    """Anonymize one table and write ``out_path`` (Parquet) and its signed manifest.

    Parameters
    ----------
    input_path : Path
        Raw CSV or Parquet table.
    policy_path : Path
        Policy TOML (:func:`privtrain.anonymize.policy.load_policy`).
    key_path : Path
        HMAC key file (:func:`privtrain.anonymize.keys.load_key`).
    out_path : Path
        Output Parquet file; the manifest goes to ``OUTPUT.manifest.json``.
    signing_key_path, signing_cert_path : Path
        The data owner's TLS private key (PEM, ECDSA P-256 or Ed25519) and certificate.
    encoding : str
        Text encoding of a CSV input.
    progress : callable(stage, fraction) | None
        Called with a stage name and the overall fraction done in [0, 1].

    Returns
    -------
    AnonymizationReport

    Raises
    ------
    PolicyError, KeyFileError, AnonymizationError, ManifestError, NotFound
        Nothing is written when any of them is raised.
    """

    def tick(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    out_path = Path(out_path)
    policy = load_policy(policy_path)
    key = load_key(key_path)
    try:
        signing_key = Path(signing_key_path).read_bytes()
        signing_cert = Path(signing_cert_path).read_bytes()
    except OSError as exc:
        raise NotFound(
            f"{exc.filename}: cannot read signing key/certificate ({exc.strerror})"
        ) from None
    tick("read", 0.0)
    df = read_table(input_path, encoding)
    source = str(input_path)
    _check_columns(df, policy, source)
    n = len(df)
    tick("generalize", 0.2)

    gens = {q: Generalization(df[q], policy.columns[q], source) for q in policy.quasi_identifiers}
    result = search(gens, n, policy.k, policy.max_suppression)  # type: ignore[arg-type]
    tick("operators", 0.5)

    out: dict[str, pd.Series] = {}
    domains: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(df.columns):
        col = policy.columns[name]
        ctx = OperatorContext(col, key, policy.locale, source, result.levels.get(name))
        if col.operator == "generalize":
            # Reuse the levels the lattice search already computed.
            values: pd.Series | None = gens[name].labels(result.levels[name])
        else:
            values = get_operator(col.operator).transform(df[name], ctx)
        if values is not None:
            out[name] = values[result.keep].reset_index(drop=True)
            domain = get_operator(col.operator).output_domain(ctx)
            assert domain is not None
            domains[name] = domain
        tick("operators", 0.5 + 0.3 * (i + 1) / len(df.columns))
    table = pd.DataFrame(out)

    # Independent re-check on the finished table: the lattice's codes and the
    # written labels must agree, or the manifest would claim a k that is not there.
    k_out = k_anonymity(table, policy.quasi_identifiers)
    if k_out != result.k_achieved or k_out < policy.k:
        raise AnonymizationError(
            f"internal check failed: output has k = {k_out}, the lattice search claimed "
            f"{result.k_achieved} (target {policy.k}); nothing was written"
        )
    tick("write", 0.85)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False, engine="pyarrow")
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "tool_version": __version__,
        "policy_sha256": policy.sha256,
        "input_rows": n,
        "output_rows": len(table),
        "rows_suppressed": result.rows_suppressed,
        "k_target": policy.k,
        "k_achieved": result.k_achieved,
        "max_suppression": policy.max_suppression,
        "quasi_identifiers": policy.quasi_identifiers,
        "direct_identifiers": policy.direct_identifiers,
        "generalization_levels": result.levels,
        "generalization_heights": result.heights,
        "information_loss": {
            "precision_loss": result.precision_loss,
            "discernibility": result.discernibility,
            "aecs": result.aecs,
            "lattice_nodes_total": result.nodes_total,
            "lattice_nodes_evaluated": result.nodes_evaluated,
        },
        "key_id": key.key_id,
        "faker_version": faker.VERSION,
        "faker_locale": policy.locale,
        "output_sha256": digest,
        "output_bytes": len(data),
        "columns": domains,
    }
    signed = sign_manifest(manifest, signing_key, signing_cert)
    manifest_path = manifest_path_for(out_path)
    atomic_write_bytes(out_path, data)
    atomic_write_bytes(manifest_path, signed)
    tick("done", 1.0)
    return AnonymizationReport(
        rows_raw=n,
        rows_out=len(table),
        rows_suppressed=result.rows_suppressed,
        k_achieved=result.k_achieved,
        levels=result.levels,
        precision_loss=result.precision_loss,
        discernibility=result.discernibility,
        aecs=result.aecs,
        output_path=out_path,
        manifest_path=manifest_path,
        output_sha256=digest,
    )


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


def verify_output(
    output_path: Path, manifest_path: Path, raw_path: Path | None = None
) -> list[str]:
    """Check an anonymized file against its signed manifest (and its raw input).

    Checks: manifest structure and signature; SHA-256 and size of the data; row count,
    column names and declared domains; k recomputed from the data over the manifest's
    QIs; and, with ``raw_path``, that no raw value of a direct-identifier column equals
    any output cell.

    Returns
    -------
    list of str
        Problems found; empty when everything holds. Messages never quote raw values.
    """
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
        table = pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError) as exc:
        return [*problems, f"{output_path}: not a readable Parquet file ({exc})"]
    if len(table) != manifest["output_rows"]:
        problems.append(f"output has {len(table)} rows, manifest says {manifest['output_rows']}")
    if set(table.columns) != set(manifest["columns"]):
        problems.append(
            f"output columns {sorted(table.columns)} differ from the manifest's "
            f"{sorted(manifest['columns'])}"
        )
    problems += _domain_problems(table, manifest["columns"])
    qis = [q for q in manifest["quasi_identifiers"] if q in table.columns]
    if len(qis) != len(manifest["quasi_identifiers"]):
        problems.append("a quasi-identifier named in the manifest is missing from the output")
    else:
        k = k_anonymity(table, qis)
        if k != manifest["k_achieved"]:
            problems.append(
                f"k recomputed from the output is {k}, manifest says {manifest['k_achieved']}"
            )
        if k < manifest["k_target"]:
            problems.append(
                f"k recomputed from the output is {k}, below the target {manifest['k_target']}"
            )
    if raw_path is not None:
        problems += _leak_problems(
            table, read_table(Path(raw_path)), manifest["direct_identifiers"]
        )
    return problems


def _leak_problems(table: pd.DataFrame, raw: pd.DataFrame, direct: list[str]) -> list[str]:
    # Distinct values only, as object arrays: pandas' hash-table isin, not the Arrow
    # string path that loops in Python over the lookup values.
    outputs = {
        name: pd.Series(pd.unique(table[name].dropna().astype("string").str.strip()), dtype=object)
        for name in table.columns
    }
    problems = []
    for di in direct:
        if di not in raw.columns:
            problems.append(f"direct identifier {di!r} is not a column of the raw file")
            continue
        secrets_ = np.asarray(
            pd.unique(raw[di].dropna().astype("string").str.strip()), dtype=object
        )
        for name, values in outputs.items():
            hits = int(values.isin(secrets_).sum())
            if hits:
                problems.append(
                    f"{hits} distinct value(s) of output column {name!r} equal a raw value of "
                    f"direct identifier {di!r}"
                )
    return problems
