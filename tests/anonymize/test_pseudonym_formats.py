"""Pseudonyms drawn from the locale's own Faker formats and word lists (v2's draws, kept
by v3's store)."""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
from faker import Faker

from privtrain.anonymize.operators.faker_formats import Choice, template
from privtrain.anonymize.operators.pseudonym import DOMAIN, SCHEME, pseudonyms

KEY = secrets.token_bytes(32)


def test_scheme_names_the_format_derivation() -> None:
    """v3 assigns through the pseudonym store; its draws are v2's, under v2's domain."""
    assert SCHEME == "privtrain/pseudonym/v3"
    assert DOMAIN == b"privtrain/pseudonym/v2\x00"


def test_en_us_names_are_built_from_fakers_word_lists() -> None:
    person = Faker("en_US").name.__self__
    firsts = set(person.first_names_male) | set(person.first_names_female)
    lasts = set(person.last_names)
    values = pd.Series([f"Person {i}" for i in range(2000)])
    fakes = pseudonyms(values, "name", KEY, "name", "en_US")
    assert fakes.nunique() == 2000
    # Faker's en_US formats are "[prefix] first last [suffix]"; the bare form dominates.
    bare = [f.split(" ") for f in fakes if len(f.split(" ")) == 2]
    assert len(bare) > 1800
    assert all(first in firsts and last in lasts for first, last in bare)


def test_en_us_emails_are_ascii_user_names_at_safe_domains() -> None:
    """C-A02: ASCII e-mails, at the RFC 2606 domains Faker's safe email uses."""
    values = pd.Series([f"user{i}@example.test" for i in range(1000)])
    fakes = pseudonyms(values, "email", KEY, "email", "en_US")
    assert fakes.nunique() == 1000
    for fake in fakes:
        user, domain = fake.split("@")
        assert fake.isascii() and fake == fake.lower() and user
        assert domain in {"example.org", "example.com", "example.net"}


def test_weights_follow_fakers_weights() -> None:
    """A weighted word list is drawn in proportion to Faker's weights."""
    choice = Choice.of({"a": 0.9, "b": 0.1})
    words = np.random.default_rng(0).integers(0, 2**64 - 1, 20000, dtype=np.uint64)
    share = float(np.mean(choice.pick(words) == "a"))
    assert 0.88 < share < 0.92


def test_locale_with_its_own_name_code_draws_from_faker() -> None:
    """ja_JP overrides Faker's person methods, so its pseudonyms come from Faker itself."""
    fake = Faker("ja_JP")
    assert template(fake, "name") is None
    fakes = pseudonyms(pd.Series(["佐藤 太郎", "鈴木 花子"]), "name", KEY, "name", "ja_JP")
    assert fakes.nunique() == 2 and all(f for f in fakes)


def test_other_providers_keep_the_faker_path_and_stay_deterministic() -> None:
    """C-A01: a provider without a template (city) still gives the same value per key."""
    assert template(Faker("en_US"), "city") is None
    one = pseudonyms(pd.Series(["Utrecht", "Köln"]), "city", KEY, "city", "de_DE")
    two = pseudonyms(pd.Series(["Köln"]), "city", KEY, "city", "de_DE")
    assert one[1] == two[0] and one[0] != one[1]


def test_pseudonym_never_equals_a_raw_value_of_the_column() -> None:
    """A real last name of the table is never handed out as another value's pseudonym."""
    person = Faker("en_US").last_name.__self__
    raw = pd.Series(list(person.last_names)[:200])
    fakes = pseudonyms(raw, "last_name", KEY, "last_name", "en_US")
    assert not {f.casefold() for f in fakes} & {r.casefold() for r in raw}
    assert fakes.nunique() == 200
