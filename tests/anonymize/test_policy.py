"""Policy validation: every mistake names the file and the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.errors import PolicyError
from privtrain.anonymize.operators.generalize import Generalization, level_domain
from privtrain.anonymize.policy import load_policy

GOOD = """
    k = 5
    [columns.email]
    operator = "hmac"
    role = "direct_identifier"
    type = "text"
    [columns.zip]
    operator = "generalize"
    role = "quasi_identifier"
    type = "categorical"
    hierarchy = { "02134" = ["0213*", "*"], "02139" = ["0213*", "*"] }
    [columns.age]
    operator = "generalize"
    role = "quasi_identifier"
    type = "numeric"
    lower = 0
    upper = 99
    intervals = [5, 10]
    bottom_code = 18
    top_code = 90
"""


def test_good_policy_loads(write: Callable[[str, str], Path]) -> None:
    policy = load_policy(write("p.toml", GOOD))
    assert policy.k == 5 and policy.max_suppression == 0.05 and policy.locale == "en_US"
    assert policy.quasi_identifiers == ["zip", "age"]
    assert policy.direct_identifiers == ["email"]
    assert len(policy.sha256) == 64
    assert level_domain(policy.columns["age"], 1)["values"][:3] == ["<18", "18-19", "20-24"]
    assert level_domain(policy.columns["age"], 2)["values"][-2:] == ["80-89", "90+"]
    assert level_domain(policy.columns["zip"], 1) == {"type": "categorical", "values": ["0213*"]}


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (("k = 5", "k = 5\nkk = 1"), "kk", "unknown key"),
        (('type = "text"', 'type = "text"\nlevels = 3'), "columns.email.levels", "unknown key"),
        (
            ('operator = "hmac"', 'operator = "hash"'),
            "columns.email.operator",
            "unknown operator 'hash'",
        ),
        (
            ('operator = "hmac"', 'operator = "keep"'),
            "columns.email.operator",
            "direct_identifier must be",
        ),
        (("    intervals = [5, 10]\n", ""), "columns.age.intervals", "needs intervals"),
        (
            ("intervals = [5, 10]", "intervals = [5, 12]"),
            "columns.age.intervals",
            "multiple of the previous",
        ),
        (("hierarchy = ", "hierarchyy = "), "columns.zip.hierarchyy", "unknown key"),
        (
            ('"02139" = ["0213*", "*"]', '"02139" = ["0213*", "x"]'),
            "columns.zip.hierarchy.02139",
            "must be a tree",
        ),
        (("k = 5", "k = 0"), "k", "integer >= 1"),
        (("k = 5", "k = 5\nmax_suppression = 1.5"), "max_suppression", "[0, 1)"),
    ],
)
def test_policy_errors_name_file_and_key(
    write: Callable[[str, str], Path], edit: tuple[str, str], key: str, problem: str
) -> None:
    path = write("bad.toml", GOOD.replace(*edit, 1))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert problem in msg


def test_unknown_faker_provider_named(write: Callable[[str, str], Path]) -> None:
    path = write(
        "p.toml",
        """
        k = 1
        [columns.name]
        operator = "pseudonym"
        role = "direct_identifier"
        type = "text"
        faker = "no_such_provider"
        """,
    )
    with pytest.raises(
        PolicyError,
        match=r"columns\.name\.faker: Faker \(en_US\) has no provider 'no_such_provider'",
    ):
        load_policy(path)


def test_value_missing_from_hierarchy_names_row_column_value(
    write: Callable[[str, str], Path],
) -> None:
    policy = load_policy(write("p.toml", GOOD))
    values = pd.Series(["02134", "02139", "94105"], dtype="string")
    with pytest.raises(PolicyError) as info:
        Generalization(values, policy.columns["zip"], "people.csv")
    assert str(info.value).startswith(
        "people.csv: row 3, column 'zip': value '94105' is missing from"
    )
    assert "columns.zip.hierarchy" in str(info.value)


def test_out_of_domain_number_names_row(write: Callable[[str, str], Path]) -> None:
    policy = load_policy(write("p.toml", GOOD))
    with pytest.raises(
        PolicyError, match=r"people\.csv: row 2, column 'age': value 120 is outside"
    ):
        Generalization(
            pd.Series(["30", "120"], dtype="string"), policy.columns["age"], "people.csv"
        )
    with pytest.raises(
        PolicyError, match=r"people\.csv: row 1, column 'age': value 'old' is not a finite number"
    ):
        Generalization(pd.Series(["old"], dtype="string"), policy.columns["age"], "people.csv")


def test_toml_syntax_error_names_file(write: Callable[[str, str], Path]) -> None:
    path = write("p.toml", "k = = 3\n")
    with pytest.raises(PolicyError, match="not valid UTF-8 TOML"):
        load_policy(path)
