"""Anonymizer speed and memory against plain pandas I/O on the same file (issue 3, C-A07).

Input: UCI Adult (``privtrain.datasets.fetch_adult``, 48,842 real rows) resampled with
replacement to 1 million and 5 million rows, all 17 columns kept as they are (so
``record_id`` values repeat), plus three columns taken from real COMPAS rows
(``privtrain.datasets.fetch_compas``, drawn independently, with replacement):
``name`` (COMPAS ``name``), ``dob`` (COMPAS ``dob``, ISO dates) and ``email``, derived
from the same COMPAS row as ``first.last@example.org`` (lower case, characters other
than letters, digits and hyphens dropped; ``example.org`` is reserved by RFC 2606). No
value is invented. The files are built once (seed 2024) and cached next to the datasets.

Policy: ``examples/adult/policy.toml`` (k = 10 over seven QIs, record_id HMAC, fnlwgt
dropped) plus ``name`` and ``email`` as Faker pseudonyms and ``dob`` shifted per person
(``date_shift``, subject ``name``), accepted under ``[risk.accept]`` (a shifted birth date
singles out nearly every row, which the run measures and would otherwise refuse).

Measured, each in its own subprocess so peak memory is that run's alone:

* ``io``: ``pandas.read_csv(path)`` + ``DataFrame.to_parquet`` (pandas defaults);
* ``anonymizer``: ``privtrain.anonymize.anonymize_file`` (two streaming passes, Parquet
  out, signed manifest), default chunk size, with an empty pseudonym store each time (so
  every run claims all its pseudonyms, as a first release does).

Time is wall-clock of the work inside the subprocess (imports excluded). The 1M file is
measured ``--reps`` times with the two interleaved (medians reported), the 5M file once
each. Peak memory is the subprocess's ``ru_maxrss``. The last output line is one JSON
object.

    python bench/anonymize.py [--reps 3] [--rows 1000000] [--big-rows 5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADULT_POLICY = ROOT / "examples" / "adult" / "policy.toml"
SEED = 2024
EXTRA_POLICY = """
# --- columns taken from real COMPAS rows (bench/anonymize.py) -----------------------
[columns.name]
operator = "pseudonym"
role = "direct_identifier"
type = "text"
faker = "name"

[columns.email]
operator = "pseudonym"
role = "direct_identifier"
type = "text"
faker = "email"

[columns.dob]
operator = "date_shift"
role = "other"
subject = "name"
shift_days = 180

# A shifted date of birth beside the quasi-identifiers singles out nearly every row, so
# `run` refuses it unless the policy accepts it (privtrain.anonymize.released_risk): the
# bench keeps it to time date_shift.
[risk.accept]
dob = "bench only: times date_shift on a column that singles rows out"
"""


def cache_dir() -> Path:
    from privtrain.datasets.wheel import cache_root

    return cache_root("bench-anonymize")


def build_input(rows: int) -> Path:
    """The resampled CSV of ``rows`` rows (built on first use, then cached)."""
    import numpy as np
    import pandas as pd

    from privtrain.atomic_files import atomic_write_bytes
    from privtrain.datasets import fetch_adult, fetch_compas

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"adult_compas_{rows}.csv"
    # The policy follows the example's current text, whatever the cached input's age.
    policy = folder / "policy.toml"
    atomic_write_bytes(policy, (ADULT_POLICY.read_text() + EXTRA_POLICY).encode())
    if path.is_file():
        return path
    adult = pd.read_csv(fetch_adult(), dtype=str, keep_default_na=False)
    compas = pd.read_csv(
        fetch_compas(), dtype=str, keep_default_na=False, usecols=["name", "first", "last", "dob"]
    )

    def local(part: pd.Series) -> pd.Series:
        return part.str.lower().str.replace(r"[^a-z0-9-]", "", regex=True)

    compas["email"] = local(compas["first"]) + "." + local(compas["last"]) + "@example.org"
    rng = np.random.default_rng(SEED + rows)
    tmp = path.with_name(path.name + ".part")
    block = 500_000
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            a = adult.iloc[rng.integers(0, len(adult), n)].reset_index(drop=True)
            c = compas.iloc[rng.integers(0, len(compas), n)].reset_index(drop=True)
            part = pd.concat([a, c[["name", "email", "dob"]]], axis=1)
            part.to_csv(fh, index=False, header=start == 0, lineterminator="\n")
    os.replace(tmp, path)
    return path


def _child(kind: str, path: Path, work: Path) -> None:
    """Run one measurement in this (fresh) process; print one JSON line."""
    if kind == "io":
        import pandas as pd

        t0 = time.perf_counter()
        df = pd.read_csv(path)
        df.to_parquet(work / "io.parquet", index=False)
        seconds = time.perf_counter() - t0
        rows = len(df)
    else:
        from privtrain.anonymize import anonymize_file
        from privtrain.anonymize.keys import generate_key
        from privtrain.anonymize.pseudonym_store import default_store_path
        from privtrain.secure_transport.issuing import ClientBundle, issue_bundle
        from privtrain.secure_transport.pki import init_pki
        from privtrain.secure_transport.roles import Role

        key = work / "owner.hmac.key"
        if not key.exists():
            generate_key(key)
        # Every run claims its pseudonyms afresh (the first release's cost), rather than
        # finding them in the store an earlier repetition left beside the key.
        default_store_path(key).unlink(missing_ok=True)
        owner = ClientBundle(work / "owner")
        issue_bundle(init_pki(work / "pki", overwrite=True), role=Role.DATA_OWNER, name="owner",
                     out=owner.directory, overwrite=True)
        t0 = time.perf_counter()
        report = anonymize_file(
            path,
            cache_dir() / "policy.toml",
            key,
            work / "anon.parquet",
            signing_key_path=owner.key,
            signing_cert_path=owner.cert,
        )
        seconds = time.perf_counter() - t0
        rows = report.rows_raw
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "rows": rows, "seconds": seconds, "peak_rss_mb": peak_mb}))


def measure(kind: str, path: Path, work: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path), str(work)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs of each on the 1M file")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=5_000_000, help="0: skip")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return

    small = build_input(args.rows)
    big = build_input(args.big_rows) if args.big_rows else None
    runs: dict[str, list[dict[str, float]]] = {"io": [], "anonymizer": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rep in range(args.reps):
            order = ["io", "anonymizer"] if rep % 2 == 0 else ["anonymizer", "io"]
            for kind in order:
                runs[kind].append(measure(kind, small, work))
        big_runs = {k: measure(k, big, work) for k in ("io", "anonymizer")} if big else {}

    def rate(rs: list[dict[str, float]]) -> float:
        return statistics.median(r["rows"] / r["seconds"] for r in rs)

    def peak(rs: list[dict[str, float]]) -> float:
        return max(r["peak_rss_mb"] for r in rs)

    io_rate, anon_rate = rate(runs["io"]), rate(runs["anonymizer"])
    print(f"input: {small.name} ({small.stat().st_size / 1e6:.0f} MB), {os.cpu_count()} CPUs")
    print(f"{'file':<10} {'what':<12} {'rows/s':>12} {'seconds':>9} {'peak RSS MB':>12}")
    for kind, rs in runs.items():
        secs = statistics.median(r["seconds"] for r in rs)
        print(f"{'1M':<10} {kind:<12} {rate(rs):>12,.0f} {secs:>9.2f} {peak(rs):>12,.0f}")
    for kind, r in big_runs.items():
        print(
            f"{'5M':<10} {kind:<12} {r['rows'] / r['seconds']:>12,.0f} {r['seconds']:>9.2f} "
            f"{r['peak_rss_mb']:>12,.0f}"
        )
    result = {
        "rows": int(runs["anonymizer"][0]["rows"]),
        "anonymizer_rows_per_s": round(anon_rate),
        "io_rows_per_s": round(io_rate),
        "ratio": round(anon_rate / io_rate, 3),
        "peak_rss_mb_1m": round(peak(runs["anonymizer"]), 1),
        "peak_rss_mb_5m": round(big_runs["anonymizer"]["peak_rss_mb"], 1) if big else None,
        "io_peak_rss_mb_1m": round(peak(runs["io"]), 1),
        "io_peak_rss_mb_5m": round(big_runs["io"]["peak_rss_mb"], 1) if big else None,
        "rows_5m": int(big_runs["anonymizer"]["rows"]) if big else None,
        "ratio_5m": (
            round(
                (big_runs["anonymizer"]["rows"] / big_runs["anonymizer"]["seconds"])
                / (big_runs["io"]["rows"] / big_runs["io"]["seconds"]),
                3,
            )
            if big
            else None
        ),
        "reps": args.reps,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
