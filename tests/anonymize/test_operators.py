"""hmac and pseudonym operators: per distinct value, keyed, missing stays missing."""

from __future__ import annotations

import secrets

import pandas as pd
import pytest

from privtrain.anonymize.errors import AnonymizationError
from privtrain.anonymize.operators import get_operator, registered_operators
from privtrain.anonymize.operators.hmac_token import hmac_tokens
from privtrain.anonymize.operators.pseudonym import pseudonyms

KEY = secrets.token_bytes(32)


def test_builtin_operators_are_registered() -> None:
    assert {"keep", "drop", "hmac", "pseudonym", "generalize"} <= registered_operators()
    assert get_operator("hmac").name == "hmac"


def test_hmac_is_deterministic_and_normalizes() -> None:
    """C-A01, C-A02: same key -> same token; NFC/NFD, spaces and e-mail case agree."""
    a = hmac_tokens(pd.Series(["alice@example.org", "Jos\u00e9"]), "email", KEY)
    b = hmac_tokens(pd.Series([" Alice@Example.ORG ", "Jose\u0301"]), "email", KEY)
    assert a.tolist() == b.tolist()
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in a)
    assert hmac_tokens(pd.Series(["alice@example.org"]), "other_col", KEY)[0] != a[0]
    assert (
        hmac_tokens(pd.Series(["alice@example.org"]), "email", secrets.token_bytes(32))[0] != a[0]
    )


def test_hmac_keeps_case_of_non_email_text() -> None:
    t = hmac_tokens(pd.Series(["Rose", "rose"]), "name", KEY)
    assert t[0] != t[1]


def test_missing_values_stay_missing_without_shared_hash() -> None:
    """C-A04: empty and missing cells stay missing; no hash or pseudonym for blanks."""
    values = pd.Series(["bob", None, "", "   ", "bob"], dtype="string")
    tokens = hmac_tokens(values, "name", KEY)
    assert tokens.isna().tolist() == [False, True, True, True, False]
    assert tokens[0] == tokens[4]
    fakes = pseudonyms(values, "name", KEY, "name", "en_US")
    assert fakes.isna().tolist() == [False, True, True, True, False]
    assert fakes[0] == fakes[4]


def test_pseudonym_same_key_same_value_across_calls() -> None:
    """C-A01: a value gets the same pseudonym in every file and run with the same key."""
    one = pseudonyms(pd.Series(["alice@example.org", "x@y.org"]), "email", KEY, "email", "en_US")
    two = pseudonyms(pd.Series(["q@r.org", "ALICE@example.org"]), "email", KEY, "email", "en_US")
    assert one[0] == two[1]
    other = pseudonyms(
        pd.Series(["alice@example.org"]), "email", secrets.token_bytes(32), "email", "en_US"
    )
    assert other[0] != one[0]


def test_5000_distinct_names_get_5000_distinct_pseudonyms() -> None:
    """C-A03: never two people merged."""
    names = pd.Series([f"Name{i:04d}" for i in range(1, 5001)])
    fakes = pseudonyms(names, "first_name", KEY, "name", "en_US")
    assert fakes.nunique() == 5000
    assert not set(fakes) & set(names)


def test_small_faker_space_fails_naming_column_and_counts() -> None:
    """C-A03: 5,000 first names cannot map onto en_US's ~700 first names: an error, not a merge."""
    names = pd.Series([f"Name{i:04d}" for i in range(1, 5001)])
    with pytest.raises(AnonymizationError) as info:
        pseudonyms(names, "first_name", KEY, "first_name", "en_US", "people.csv")
    msg = str(info.value)
    assert msg.startswith("people.csv: column 'first_name': Faker provider 'first_name'")
    assert "5000 distinct values" in msg


def test_email_pseudonyms_are_ascii_in_every_locale() -> None:
    """C-A02: output e-mails are ASCII-valid, whatever the locale."""
    emails = pd.Series([f"user{i}@example.test" for i in range(300)])
    for locale in ("en_US", "de_DE", "zh_CN"):
        fakes = pseudonyms(emails, "email", KEY, "email", locale)
        assert all(f.isascii() and "@" in f for f in fakes)
        assert fakes.nunique() == 300


def test_unicode_name_nfc_and_nfd_share_a_pseudonym() -> None:
    """C-A02: precomposed and decomposed José are one person."""
    nfc, nfd = "Jos\u00e9 N\u00fa\u00f1ez", "Jose\u0301 Nu\u0301n\u0303ez"
    fakes = pseudonyms(pd.Series([nfc, nfd, "\u738b\u5c0f\u660e"]), "name", KEY, "name", "zh_CN")
    assert fakes[0] == fakes[1] != fakes[2]


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 64, 65, 200])
def test_keyed_digests_equal_one_shot_hmac(key_bytes: int) -> None:
    """The copied padded-key states give RFC 2104 HMAC-SHA256 of prefix + message, as
    hmac.digest does, for keys shorter than, equal to and (hashed first) longer than
    SHA-256's 64-byte block."""
    import hmac as std_hmac
    import os

    from privtrain.anonymize.keyed import keyed_digests

    secret, prefix = os.urandom(key_bytes), b"privtrain/hmac/v1\x00col\x00"
    messages = [b"", b"a", "José".encode(), os.urandom(200)]
    assert keyed_digests(secret, prefix, messages) == [
        std_hmac.digest(secret, prefix + m, "sha256") for m in messages
    ]
