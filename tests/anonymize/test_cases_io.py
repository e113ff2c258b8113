"""Cases C-A02 (Unicode), C-A05 (encodings and types) and C-A06 (mixed dates), end to end."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.errors import AnonymizationError, PolicyError
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.anonymize.tableio import read_table

POLICY_HEAD = "k = 1\nmax_suppression = 0.0\n"


def _run(
    tmp_path: Path, raw: Path, policy: Path, key: Path, signer: tuple[Path, Path], **kw: object
) -> pd.DataFrame:
    out = tmp_path / "out.parquet"
    anonymize_file(
        raw, policy, key, out, signing_key_path=signer[0], signing_cert_path=signer[1], **kw
    )  # type: ignore[arg-type]
    return pd.read_parquet(out)


@pytest.mark.parametrize("locale", ["nl_NL", "de_DE", "zh_CN"])
def test_c_a02_unicode_round_trips_and_nfc_nfd_share_a_pseudonym(
    tmp_path: Path,
    write: Callable[[str, str], Path],
    key_path: Path,
    signer: tuple[Path, Path],
    locale: str,
) -> None:
    """C-A02: UTF-8 round-trips, output e-mails are ASCII, NFC and NFD José agree."""
    nfc = unicodedata.normalize("NFC", "José Núñez")
    nfd = unicodedata.normalize("NFD", "José Núñez")
    assert nfc != nfd
    raw = write(
        "people.csv",
        "name,email,city\n"
        "Zoë van den Berg,zoe.berg@example.test,Utrecht\n"
        "Jürgen Weiß,j.weiss@example.test,Köln\n"
        "王小明,xm.wang@example.test,上海\n"
        f"{nfc},jose@example.test,Sevilla\n"
        f"{nfd},jose@example.test,Sevilla\n",
    )
    policy = write(
        "p.toml",
        POLICY_HEAD + f'locale = "{locale}"\n'
        '[columns.name]\noperator = "pseudonym"\nrole = "direct_identifier"\ntype = "text"\nfaker = "name"\n'
        '[columns.email]\noperator = "pseudonym"\nrole = "direct_identifier"\ntype = "text"\nfaker = "email"\n'
        '[columns.city]\noperator = "keep"\nrole = "other"\ntype = "text"\n',
    )
    table = _run(tmp_path, raw, policy, key_path, signer)
    assert table["city"].tolist() == ["Utrecht", "Köln", "上海", "Sevilla", "Sevilla"]
    assert table["name"].iloc[3] == table["name"].iloc[4]
    assert table["name"].nunique() == 4
    assert table["email"].map(lambda e: e.isascii() and e.count("@") == 1).all()


def test_c_a05_cp1252_zip_leading_zero_and_a_person_named_na(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """C-A05: cp1252 read by --encoding and by detection; 02134 keeps its zero; NA is a name."""
    raw = tmp_path / "cp1252.csv"
    raw.write_bytes("name,city,zip\nJosé Müller,Köln,02134\nNA,Köln,02134\n".encode("cp1252"))
    policy = write(
        "p.toml",
        POLICY_HEAD + '[columns.name]\noperator = "keep"\nrole = "other"\ntype = "text"\n'
        '[columns.city]\noperator = "keep"\nrole = "other"\ntype = "text"\n'
        '[columns.zip]\noperator = "keep"\nrole = "other"\ntype = "text"\n',
    )
    for encoding in ("cp1252", None):
        table = _run(tmp_path, raw, policy, key_path, signer, encoding=encoding)
        assert table["name"].tolist() == ["José Müller", "NA"]
        assert table["city"].tolist() == ["Köln", "Köln"]
        assert table["zip"].tolist() == ["02134", "02134"]
    bad_byte = r"cp1252\.csv: line 2 \(the header is line 1\), byte \d+: not valid utf-8"
    with pytest.raises(AnonymizationError, match=bad_byte):
        read_table(raw, "utf-8")
    # Only when the policy says so does "NA" mean missing.
    assert read_table(raw, "cp1252", ("NA",))["name"].isna().tolist() == [False, True]


def test_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    raw = tmp_path / "bom.csv"
    raw.write_bytes(b"\xef\xbb\xbfname,zip\nAnn,02134\n")
    assert list(read_table(raw).columns) == ["name", "zip"]


def _date_policy(write: Callable[[str, str], Path], extra: str) -> Path:
    return write(
        "p.toml",
        POLICY_HEAD
        + '[columns.person]\noperator = "hmac"\nrole = "direct_identifier"\ntype = "text"\n'
        '[columns.seen]\noperator = "date_shift"\nrole = "other"\nsubject = "person"\n'
        "shift_days = 30\n" + extra,
    )


def test_c_a06_mixed_dates_need_a_day_first_policy_and_iso_is_never_reinterpreted(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    """C-A06: ISO stays ISO, slashed dates follow day_first, empty stays empty."""
    raw = write(
        "d.csv",
        'person,seen\nann,2021-03-04\nann,04/03/2021\nann,"March 4, 2021"\nann,\nbob,2021-03-04\n',
    )
    with pytest.raises(PolicyError, match=r"d\.csv: row 2, column 'seen': .* set day_first"):
        _run(tmp_path, raw, _date_policy(write, ""), key_path, signer)
    table = _run(tmp_path, raw, _date_policy(write, "day_first = true\n"), key_path, signer)
    seen = pd.to_datetime(table["seen"])
    # All three spellings are 4 March 2021: one subject, one offset, one shifted date.
    assert seen.iloc[0] == seen.iloc[1] == seen.iloc[2]
    assert pd.isna(table["seen"].iloc[3])
    assert abs((seen.iloc[0] - pd.Timestamp("2021-03-04")).days) <= 30
    table_us = _run(tmp_path, raw, _date_policy(write, "day_first = false\n"), key_path, signer)
    us = pd.to_datetime(table_us["seen"])
    assert (us.iloc[1] - us.iloc[0]).days == 30  # 04/03 read as April 3: 30 days later
    assert us.iloc[0] == seen.iloc[0]  # the ISO value is never reinterpreted


def test_c_a06_unparseable_date_is_reported_not_guessed(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    raw = write("d.csv", "person,seen\nann,2021-03-04\nbob,soon\n")
    with pytest.raises(
        PolicyError, match=r"d\.csv: row 2, column 'seen': value 'soon' is not a date"
    ):
        _run(tmp_path, raw, _date_policy(write, "day_first = true\n"), key_path, signer)
    assert not (tmp_path / "out.parquet").exists()
