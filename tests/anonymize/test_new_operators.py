"""mask, noise, phone normalization, scrub, and date / ZIP generalization, on real values.

Names, case numbers and birth dates are the first rows of the real COMPAS file;
capital gains and hours are real UCI Adult values.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.keys import SecretKey
from privtrain.anonymize.operators import get_operator, registered_operators
from privtrain.anonymize.operators.generalize import Generalization, level_domain
from privtrain.anonymize.operators.hmac_token import hmac_tokens
from privtrain.anonymize.operators.mask import mask_column
from privtrain.anonymize.operators.noise import add_noise, noise_draws
from privtrain.anonymize.operators.phone import e164, phone_normalized
from privtrain.anonymize.operators.pseudonym import pseudonyms
from privtrain.anonymize.operators.registry import OperatorContext
from privtrain.anonymize.operators.scrub import known_names, scrub_column
from privtrain.anonymize.policy import load_policy

KEY = secrets.token_bytes(32)
ALL_KINDS = ("email", "url", "ip", "phone", "id", "name")


def test_new_operators_are_registered() -> None:
    assert {"mask", "noise", "scrub", "date_shift"} <= registered_operators()


# --- mask ---------------------------------------------------------------------


def test_mask_keeps_last_digits_of_case_numbers() -> None:
    cases = pd.Series(["13011352CF10A", None, "13001275CF10A", "13011352CF10A"], dtype="string")
    out = mask_column(cases, 0, 4, "*")
    assert out[0] == "*********F10A"
    assert out.isna().tolist() == [False, True, False, False]
    assert out[0] == out[3]


def test_mask_never_shows_more_than_half_of_a_value() -> None:
    """C-A05: a person named "NA" is masked like any short value, never shown whole."""
    out = mask_column(pd.Series(["NA", "7", "ed", "miguel", "hernandez"]), 2, 2, "#")
    # At most len // 2 characters shown, first ones first.
    assert out.tolist() == ["N#", "#", "e#", "mi###l", "he#####ez"]
    assert all(o != v for o, v in zip(out, ["NA", "7", "ed", "miguel", "hernandez"], strict=True))


# --- noise --------------------------------------------------------------------

CAPITAL_GAIN = pd.Series(["2174", "0", "0", "14084", "5178", "0", "", "99999"])


def test_noise_is_keyed_reproducible_and_clipped() -> None:
    a = add_noise(CAPITAL_GAIN, KEY, "capital_gain", "laplace", 500.0, 0, 99999)
    b = add_noise(CAPITAL_GAIN, KEY, "capital_gain", "laplace", 500.0, 0, 99999)
    c = add_noise(CAPITAL_GAIN, secrets.token_bytes(32), "capital_gain", "laplace", 500.0, 0, 99999)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert str(a.dtype) == "Int64" and a.isna().tolist() == [False] * 6 + [True, False]
    assert int(a.min()) >= 0 and int(a.max()) <= 99999
    assert a.tolist() != [int(v) if v else pd.NA for v in CAPITAL_GAIN]


def test_noise_depends_on_row_not_on_chunking() -> None:
    """C-A07: a chunk holding rows 4..7 gets the same noise as the whole file."""
    whole = add_noise(CAPITAL_GAIN, KEY, "g", "gaussian", 100.0, 0, 99999)
    tail = add_noise(CAPITAL_GAIN.iloc[4:], KEY, "g", "gaussian", 100.0, 0, 99999)
    assert whole.iloc[4:].tolist() == tail.tolist()


@pytest.mark.parametrize(("kind", "std"), [("laplace", 2**0.5 * 3.0), ("gaussian", 3.0)])
def test_noise_has_the_declared_distribution(kind: str, std: float) -> None:
    x = noise_draws(KEY, "hours_per_week", np.arange(200_000, dtype=np.int64), kind, 3.0)
    assert abs(x.mean()) < 0.05
    assert abs(x.std() - std) / std < 0.02
    if kind == "laplace":
        assert abs(np.median(np.abs(x)) - 3.0 * np.log(2)) < 0.05


def test_noise_refuses_values_outside_the_domain() -> None:
    with pytest.raises(PolicyError, match=r"adult.csv: row 2, column 'hours_per_week'"):
        add_noise(pd.Series(["40", "168"]), KEY, "hours_per_week", "laplace", 2, 1, 99, "adult.csv")


# --- phone normalization ---------------------------------------------------------


def test_phone_spellings_share_one_token_and_pseudonym() -> None:
    values = pd.Series(["(305) 555-0134", "305.555.0134", "+1 305 555 0134", None, "305-555-0199"])
    codes, uniques = phone_normalized(values, "US", "people.csv", "phone")
    assert uniques == ["+13055550134", "+13055550199"]
    tokens = hmac_tokens(values, "phone", KEY, (codes, uniques))
    assert tokens[0] == tokens[1] == tokens[2] != tokens[4] and pd.isna(tokens[3])
    fakes = pseudonyms(values, "phone", KEY, "phone_number", "en_US", normalized=(codes, uniques))
    assert fakes[0] == fakes[1] == fakes[2] != fakes[4]
    assert e164("030 901820", "DE") == "+4930901820"


def test_unparseable_phone_names_row_not_value() -> None:
    with pytest.raises(PolicyError) as info:
        phone_normalized(pd.Series(["305-555-0134", "call me"]), "US", "people.csv", "phone")
    assert "people.csv: row 2, column 'phone': not a phone number (region US)" in str(info.value)
    assert "call me" not in str(info.value)


# --- scrub --------------------------------------------------------------------


def test_scrub_replaces_every_kind_with_typed_placeholders() -> None:
    frame = pd.DataFrame(
        {
            "name": ["miguel hernandez", "kevon dixon", "Zoë van den Berg"],
            "c_case_number": ["13011352CF10A", "13001275CF10A", "13005330CF10A"],
        }
    )
    names = known_names(frame, ["name", "c_case_number"])
    assert {"miguel", "hernandez", "kevon", "dixon", "zoë"} <= names
    assert not any(any(ch.isdigit() for ch in n) for n in names)
    text = pd.Series(
        [
            (
                "Kevon DIXON (case 13001275CF10A) called from (305) 555-0134, wrote to "
                "k.dixon@example.org, see https://www.broward.org/a?id=7. Host 10.12.0.7."
            ),
            None,
            "Zoe\u0308 van den Berg: SSN 123-45-6789, card 4111 1111 1111 1111, on 2013-08-14",
            (
                "Kevon DIXON (case 13001275CF10A) called from (305) 555-0134, wrote to "
                "k.dixon@example.org, see https://www.broward.org/a?id=7. Host 10.12.0.7."
            ),
        ],
        dtype="string",
    )
    out = scrub_column(text, ALL_KINDS, names, "US")
    assert out[0] == (
        "[NAME] (case [ID]) called from [PHONE], wrote to [EMAIL], see [URL]. Host [IP]."
    )
    assert pd.isna(out[1]) and out[3] == out[0]
    assert out[2] == "[NAME]: SSN [ID], card [ID], on 2013-08-14"


def test_scrub_only_the_kinds_asked_for() -> None:
    text = pd.Series(["mail ed.philo@example.org or call +49 30 901820"])
    out = scrub_column(text, ["email"], frozenset(), None)
    assert out[0] == "mail [EMAIL] or call +49 30 901820"
    assert scrub_column(text, ["phone"], frozenset(), "US")[0] == (
        "mail ed.philo@example.org or call [PHONE]"
    )


def test_scrub_works_per_distinct_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from privtrain.anonymize.operators import scrub

    seen: list[int] = []
    real = scrub.scrub_texts

    def spy(texts: pd.Series, *args: object) -> pd.Series:
        seen.append(len(texts))
        return real(texts, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(scrub, "scrub_texts", spy)
    scrub.scrub_column(pd.Series(["a 555-0134", "b"] * 5000), ALL_KINDS, frozenset(), "US")
    assert seen == [2]


# --- date and ZIP generalization ------------------------------------------------

DATE_ZIP_POLICY = """
    k = 2
    [columns.dob]
    operator = "generalize"
    role = "quasi_identifier"
    type = "date"
    lower = 1900-01-01
    upper = 2014-12-31
    date_levels = ["month", "year"]
    [columns.zip]
    operator = "generalize"
    role = "quasi_identifier"
    type = "zip"
    keep_digits = [3, 1]
"""


def test_dates_generalize_to_month_and_year(write: Callable[[str, str], Path]) -> None:
    policy = load_policy(write("p.toml", DATE_ZIP_POLICY))
    col = policy.columns["dob"]
    dob = pd.Series(["1947-04-18", "1982-01-22", "", "1991-05-14", "1947-04-30"])
    g = Generalization(dob, col, "compas.csv")
    assert g.height == 3
    assert g.labels(0).tolist()[:2] == ["1947-04-18", "1982-01-22"]
    assert g.labels(1).tolist() == ["1947-04", "1982-01", pd.NA, "1991-05", "1947-04"]
    assert g.labels(2).tolist() == ["1947", "1982", pd.NA, "1991", "1947"]
    assert g.labels(3).tolist()[0] == "*"
    assert g.codes(1)[0][0] == g.codes(1)[0][4] != g.codes(1)[0][2]
    assert level_domain(col, 0) == {"type": "date", "lower": "1900-01-01", "upper": "2014-12-31"}
    months = level_domain(col, 1)["values"]
    assert months[0] == "1900-01" and months[-1] == "2014-12" and len(months) == 115 * 12
    assert level_domain(col, 2)["values"][-1] == "2014"
    with pytest.raises(PolicyError, match=r"compas.csv: row 2, column 'dob': date is outside"):
        Generalization(pd.Series(["1947-04-18", "1899-12-31"]), col, "compas.csv")


def test_zip_truncation_keeps_leading_zeros(write: Callable[[str, str], Path]) -> None:
    """C-A05: 02134 stays 02134 and truncates to 021**, never 2134 / 213**."""
    col = load_policy(write("p.toml", DATE_ZIP_POLICY)).columns["zip"]
    g = Generalization(pd.Series(["02134", "02139-4307", None, "33301"]), col, "people.csv")
    assert g.labels(0).tolist() == ["02134", "02139-4307", pd.NA, "33301"]
    assert g.labels(1).tolist() == ["021**", "021**", pd.NA, "333**"]
    assert g.labels(2).tolist() == ["0****", "0****", pd.NA, "3****"]
    as_ints = Generalization(pd.Series([2134, 33301], dtype="Int64"), col, "people.parquet")
    assert as_ints.labels(1).tolist() == ["021**", "333**"]
    assert len(level_domain(col, 1)["values"]) == 1000 and "021**" in level_domain(col, 1)["values"]
    with pytest.raises(PolicyError, match=r"people.csv: row 2, column 'zip': not a 5-digit code"):
        Generalization(pd.Series(["02134", "2134"]), col, "people.csv")


# --- policy validation ----------------------------------------------------------

BASE = """
    k = 2
    [columns.x]
    role = "{role}"
    type = "{type}"
    {body}
"""


@pytest.mark.parametrize(
    ("role", "typ", "body", "key", "problem"),
    [
        ("direct_identifier", "text", 'operator = "mask"\nkeep_last = 6', "keep_last", "at most 4"),
        ("other", "text", 'operator = "mask"\nmask_char = "x"', "mask_char", "not a letter"),
        ("sensitive", "numeric", 'operator = "noise"\nlower = 0\nupper = 9', "scale", "positive"),
        (
            "sensitive",
            "numeric",
            'operator = "noise"\nlower = 0\nupper = 9\nscale = 1\ndistribution = "cauchy"',
            "distribution",
            "laplace",
        ),
        ("other", "numeric", 'operator = "scrub"', "type", "free text"),
        ("other", "text", 'operator = "scrub"\nscrub = ["ssn"]', "scrub", "non-empty list"),
        ("other", "text", 'operator = "scrub"\nnames_from = ["who"]', "names_from", "'who'"),
        ("other", "text", 'operator = "scrub"\nphone_region = "XX"', "phone_region", "region"),
        (
            "direct_identifier",
            "text",
            'operator = "hmac"\nnormalize = "email"',
            "normalize",
            "phone",
        ),
        (
            "direct_identifier",
            "text",
            'operator = "mask"\nnormalize = "phone"',
            "normalize",
            "not used",
        ),
        (
            "quasi_identifier",
            "date",
            'operator = "generalize"\nlower = 2020-01-01\nupper = 2000-01-01',
            "lower",
            "after upper",
        ),
        (
            "quasi_identifier",
            "date",
            (
                'operator = "generalize"\nlower = 2000-01-01\nupper = 2020-01-01\n'
                'date_levels = ["year", "month"]'
            ),
            "date_levels",
            "finest first",
        ),
        (
            "quasi_identifier",
            "zip",
            'operator = "generalize"\nkeep_digits = [1, 3]',
            "keep_digits",
            "decreasing",
        ),
        (
            "quasi_identifier",
            "zip",
            'operator = "generalize"\nkeep_digits = [5]',
            "keep_digits",
            "[1, 4]",
        ),
        ("other", "date", 'operator = "keep"', "type", "is for generalize"),
    ],
)
def test_new_options_errors_name_file_and_key(
    write: Callable[[str, str], Path], role: str, typ: str, body: str, key: str, problem: str
) -> None:
    path = write("p.toml", BASE.format(role=role, type=typ, body=body.replace("\n", "\n    ")))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: columns.x.{key}: ") and problem in msg, msg


def test_phone_region_comes_from_the_policy(write: Callable[[str, str], Path]) -> None:
    body = """
        locale = "de_DE"
        k = 2
        [columns.phone]
        operator = "hmac"
        role = "direct_identifier"
        type = "text"
        normalize = "phone"
        [columns.notes]
        operator = "scrub"
        role = "other"
        type = "text"
    """
    policy = load_policy(write("p.toml", body))
    assert policy.columns["phone"].phone_region == "DE"
    assert policy.columns["notes"].names_from == ("phone",)
    policy = load_policy(write("q.toml", 'phone_region = "US"\n' + body.replace("    ", "")))
    assert policy.columns["phone"].phone_region == policy.columns["notes"].phone_region == "US"
    ctx = OperatorContext(
        policy.columns["phone"], SecretKey("0123456789abcdef", KEY), "de_DE", "x.csv"
    )
    out = get_operator("hmac").transform(pd.Series(["(305) 555-0134", "305 555 0134"]), ctx)
    assert out[0] == out[1]
