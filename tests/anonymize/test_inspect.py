"""``anonymize inspect``: column classification and a policy that is safe to run unchanged."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privtrain.anonymize.cli import add_anonymize_commands
from privtrain.anonymize.detect import measure
from privtrain.anonymize.free_text import examine_free_text
from privtrain.anonymize.inspect_table import inspect_table
from privtrain.anonymize.keys import generate_key, load_key
from privtrain.anonymize.operators.registry import OperatorContext, get_operator
from privtrain.anonymize.policy import load_policy
from privtrain.datasets import fetch_compas
from privtrain.platform.cli import main


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_anonymize_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_compas_proposal_run_unchanged_removes_identifiers_and_reaches_k5(
    tmp_path: Path, signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    raw = fetch_compas()
    policy = tmp_path / "compas.policy.toml"
    assert _cli(["anonymize", "inspect", str(raw), "--out", str(policy)]) == 0
    assert "direct_identifier" in capsys.readouterr().out
    proposal = load_policy(policy)
    roles = {n: c.role for n, c in proposal.columns.items()}
    for name in ("id", "name", "first", "last", "dob", "c_case_number", "r_case_number"):
        assert roles[name] == "direct_identifier", name
        assert proposal.columns[name].operator in {"drop", "hmac", "pseudonym"}
    assert {"sex", "race", "age"} <= set(proposal.quasi_identifiers)
    # Column by column, event dates move by a keyed offset per person; those whose range
    # meets dob's are dropped, or a shifted date could equal a real date of birth.
    first_look = {p.name: p for p in inspect_table(raw, review=False)}
    shifted = {n for n, p in first_look.items() if 'operator = "date_shift"' in p.lines}
    assert len(shifted) == 10 and {"c_jail_in", "r_offense_date", "out_custody"} <= shifted
    assert all('subject = "id"' in first_look[n].lines for n in shifted)
    for name in ("c_offense_date", "c_arrest_date", "in_custody"):
        assert 'operator = "drop"' in first_look[name].lines, name
    # Measured on the release, each of them leaves over 5 % of the rows unique beside the
    # QIs (a record's dates are public): the proposal drops them, saying so.
    text = policy.read_text(encoding="utf-8")
    for name in shifted:
        assert proposal.columns[name].operator == "drop", name
        block = text[text.index(f"[columns.{name}]") - 400 : text.index(f"[columns.{name}]")]
        assert "unique, over the 5 % that `run` accepts" in " ".join(
            block.replace("#", " ").split()
        ), name

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    out = tmp_path / "compas.anon.parquet"
    run = ["anonymize", "run", str(raw), "--policy", str(policy), "--key", str(key)]
    run += ["--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    assert _cli(run) == 0
    manifest = str(out) + ".manifest.json"
    assert _cli(["anonymize", "verify", str(out), "--manifest", manifest, "--raw", str(raw)]) == 0
    table = pd.read_parquet(out)
    assert table.groupby(proposal.quasi_identifiers, dropna=False).size().min() >= 5
    assert "dob" not in table.columns
    # A 0/1 outcome is proposed as a two-value category, so a trainer can predict it.
    recid = proposal.columns["two_year_recid"]
    assert (recid.type, recid.operator) == ("categorical", "keep")
    assert json.loads(Path(manifest).read_text())["manifest"]["columns"]["two_year_recid"] == {
        "type": "categorical", "values": ["0", "1"]}


def test_value_patterns_decide_the_kind(tmp_path: Path) -> None:
    """Values alone classify e-mails, phones, IPs, URLs and dates; a ZIP keeps its zero."""
    path = tmp_path / "t.csv"
    path.write_text(
        "contact,tel,host,site,when,zip\n"
        "a.b@example.org,+1 617 555 0100,10.0.0.1,https://example.org/a,2021-03-04,02134\n"
        "c.d@example.test,+44 20 7946 0958,192.168.1.20,http://example.test,2020-12-31,10001\n",
        encoding="utf-8",
    )
    kinds = {p.name: (p.kind, p.role) for p in inspect_table(path)}
    assert kinds["contact"] == ("email", "direct_identifier")
    assert kinds["tel"] == ("phone", "direct_identifier")
    assert kinds["host"] == ("ipv4", "direct_identifier")
    assert kinds["site"] == ("url", "direct_identifier")
    assert kinds["when"][0] == "date"
    assert kinds["zip"] == ("zip", "quasi_identifier")
    assert measure(pd.Series(["02134", "02134", None])).distinct == 1


def test_nearly_unique_numbers_are_dropped_and_few_distinct_are_kept() -> None:
    """Adult's census weight ``fnlwgt`` (28,523 distinct of 48,842: uniqueness 0.58) would
    link a record to any other release of it: dropped; ``capital_gain`` (123 distinct) kept."""
    from privtrain.datasets import fetch_adult

    proposals = {p.name: p for p in inspect_table(fetch_adult())}
    assert "operator = \"drop\"" in proposals["fnlwgt"].lines
    assert "operator = \"keep\"" in proposals["capital_gain"].lines


def _compas_rows(tmp_path: Path, rows: int = 400) -> Path:
    """The first COMPAS rows plus a phone column (three spellings of US numbers) and
    officers' notes that quote the person's name, phone and case number."""
    raw = pd.read_csv(fetch_compas(), dtype="string", keep_default_na=False, na_values=[""])
    raw = raw.head(rows).reset_index(drop=True)
    spellings = ["(305) 555-{:04d}", "305.555.{:04d}", "+1 305 555 {:04d}"]
    phone = [spellings[i % 3].format(i // 3) for i in range(rows)]
    case, charge = raw["c_case_number"].fillna("pending"), raw["c_charge_desc"].fillna("none")
    notes = [
        f"{raw['name'][i].title()} called from {phone[i]} about case {case[i]}; "
        f"charge: {charge[i]}."
        for i in range(rows)
    ]
    table = raw[["id", "name", "sex", "age", "race", "c_jail_in", "c_jail_out"]].assign(
        phone=phone, notes=notes
    )
    path = tmp_path / "compas_notes.csv"
    table.to_csv(path, index=False)
    return path


def test_proposal_uses_date_shift_scrub_and_e164_and_runs_unchanged(
    tmp_path: Path, signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Event dates are shifted per person, notes scrubbed with the name columns as sources,
    phones tokenized after E.164; the file anonymizes as proposed and verifies.

    Each jail date leaves nearly every row unique beside the QIs, so the reviewed
    proposal drops them; the per-column proposal (``review=False``) shifts them, and
    runs once the policy accepts them with a reason."""
    raw_path = _compas_rows(tmp_path)
    policy = tmp_path / "notes.policy.toml"
    argv = ["anonymize", "inspect", str(raw_path), "--out", str(policy), "--no-presidio"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "info: free text judged by built-in patterns" in out
    reviewed = load_policy(policy).columns
    assert reviewed["c_jail_in"].operator == reviewed["c_jail_out"].operator == "drop"
    inspect_table(raw_path, policy, presidio=False, review=False)
    with policy.open("a", encoding="utf-8") as fh:
        fh.write('\n[risk.accept]\nc_jail_in = "test of date_shift"\n'
                 'c_jail_out = "test of date_shift"\n')
    proposal = load_policy(policy)
    cols = proposal.columns
    assert (cols["c_jail_in"].operator, cols["c_jail_in"].subject) == ("date_shift", "id")
    assert (cols["c_jail_out"].operator, cols["c_jail_out"].subject) == ("date_shift", "id")
    assert (cols["phone"].operator, cols["phone"].normalize) == ("hmac", "phone")
    assert (cols["notes"].operator, cols["notes"].role) == ("scrub", "other")
    assert cols["notes"].names_from == ("name",)
    text = policy.read_text(encoding="utf-8")
    assert "# An event date: all dates of one id value move by the same keyed" in text
    assert "# Sampled 200 texts; built-in patterns found phone in 200, id in " in text
    assert "name in 200." in text

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    anon = tmp_path / "notes.anon.parquet"
    run = ["anonymize", "run", str(raw_path), "--policy", str(policy), "--key", str(key)]
    run += ["--out", str(anon), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    assert main(run) == 0
    manifest = str(anon) + ".manifest.json"
    verify = ["anonymize", "verify", str(anon), "--manifest", manifest, "--raw", str(raw_path)]
    assert main(verify) == 0

    raw = pd.read_csv(raw_path, dtype="string", keep_default_na=False, na_values=[""])
    table = pd.read_parquet(anon)
    assert len(table) >= 0.95 * len(raw)
    # One number, three spellings: E.164 first, so rows 3j..3j+2 share one token.
    assert 100 <= table["phone"].nunique() <= -(-len(raw) // 3)
    assert not table["phone"].isin(raw["phone"]).any()
    assert not table["notes"].str.contains("555", regex=False).any()
    for name in raw["name"].str.title():
        assert not table["notes"].str.contains(name, regex=False).any(), name
    assert table["notes"].str.startswith("[NAME] called from [PHONE] about case ").all()
    numbers = raw["notes"].str.extract(r"about case (\w+);")[0].drop_duplicates()
    numbers = numbers[numbers != "pending"]
    assert len(numbers) > 350 and (numbers.str.len() == 13).all()
    for number in numbers:
        assert not table["notes"].str.contains(number, regex=False).any(), number
    # Align output rows with raw rows by the id token, then: one offset per person for
    # both dates (so the length of stay survives), within +-365 days, not the same for all.
    ctx = OperatorContext(cols["id"], load_key(key), proposal.locale, str(raw_path))
    tokens = get_operator("hmac").transform(raw["id"], ctx)
    assert tokens is not None
    raw_of = raw.assign(token=tokens.to_numpy()).set_index("token")
    aligned = raw_of.loc[table["id"]]
    shift = {
        col: (
            pd.to_datetime(table[col]).reset_index(drop=True)
            - pd.to_datetime(aligned[col].str[:10]).reset_index(drop=True)
        ).dt.days.to_numpy(dtype="float64", na_value=np.nan)
        for col in ("c_jail_in", "c_jail_out")
    }
    both = ~np.isnan(shift["c_jail_in"]) & ~np.isnan(shift["c_jail_out"])
    assert both.sum() > 300
    assert (shift["c_jail_in"][both] == shift["c_jail_out"][both]).all()
    assert np.abs(shift["c_jail_in"][both]).max() <= 365
    assert len(np.unique(shift["c_jail_in"][both])) > 50


def test_free_text_fallback_names_its_detector_and_finds_known_names(tmp_path: Path) -> None:
    """Without Presidio (not asked for, or not installed) the built-in patterns judge."""
    proposals = {p.name: p for p in inspect_table(_compas_rows(tmp_path), presidio=False)}
    notes = proposals["notes"]
    assert (notes.kind, notes.role, notes.detector) == ("free_text", "other", "built-in patterns")
    assert proposals["name"].detector is None
    assert 'operator = "scrub"' in notes.lines
    assert notes.lines[1].startswith("# Sampled 200 texts; built-in patterns found phone in 200")
    if importlib.util.find_spec("presidio_analyzer") is None:
        default = {p.name: p for p in inspect_table(_compas_rows(tmp_path))}["notes"]
        assert default.detector == "built-in patterns (presidio-analyzer is not installed)"
        assert default.lines == [
            line.replace("built-in patterns", default.detector) for line in notes.lines
        ]


def test_presidio_drops_free_text_with_names_scrub_would_miss() -> None:
    """With Presidio and an English spaCy model installed: names the table does not hold
    survive scrubbing, Presidio sees them, and the column is reported as missed."""
    pytest.importorskip("presidio_analyzer", reason="optional extra `presidio` not installed")
    findings = examine_free_text(
        pd.Series(["Visited by Margaret Thornbury of Springfield, Illinois on Tuesday."] * 3
                  + ["Call Jane Doe at jane.doe@example.org."]),  # fmt: skip
        frozenset({"jane", "doe"}),
        "US",
    )
    if not findings.detector.startswith("Presidio"):
        pytest.skip(f"Presidio present but not usable here: {findings.detector}")
    assert findings.found.get("PERSON", 0) >= 1 and findings.found.get("EMAIL_ADDRESS") == 1
    assert findings.missed.get("PERSON", 0) + findings.missed.get("LOCATION", 0) >= 1


FIRSTS = ["Ann", "Carl", "Maria", "John", "Priya", "Omar", "Lucy", "Peter"]
LASTS = ["Smith", "Khan", "Lee", "Garcia", "Novak", "Brown"]
VISITS = ["2020-01-09", "09/03/2021", "March 9, 2019", "2021.04.20"]


def _clinic_table(tmp_path: Path, rows: int = 400) -> Path:
    """A clinic file whose ``name`` column holds 48 full names (few distinct values), a
    ``attending`` column of 12 doctors' names without a name word in its title, visit
    dates in four formats, notes quoting first names, and one 2 MB ``status`` value."""
    names = [f"{f} {last}" for f in FIRSTS for last in LASTS]
    doctors = [f"{f} {last}" for f in FIRSTS[:4] for last in LASTS[3:]]
    table = pd.DataFrame({
        "id": [f"P{i:05d}" for i in range(rows)],
        "name": [names[i % len(names)] for i in range(rows)],
        "attending": [doctors[i % len(doctors)] for i in range(rows)],
        "brand_name": [("Acme", "Globex")[i % 2] for i in range(rows)],
        "sex": [("F", "M")[i % 2] for i in range(rows)],
        "visit": [VISITS[i % 4] for i in range(rows)],
        "notes": [f"Called {names[i % len(names)].split()[0]} at [PHONE] about visit {i}, "
                  "who asked for a new appointment." for i in range(rows)],
        "status": ["open"] * (rows - 1) + ["x" * 2_000_000],
    })  # fmt: skip
    path = tmp_path / "clinic.csv"
    table.to_csv(path, index=False)
    return path


def test_few_distinct_full_names_are_direct_identifiers_and_scrub_sources(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """48 distinct names over 400 rows: pseudonymized, never listed in a domain; notes
    are scrubbed with the name column as the source of known names."""
    raw_path = _clinic_table(tmp_path)
    policy = tmp_path / "clinic.policy.toml"
    proposals = {p.name: p for p in inspect_table(raw_path, policy, presidio=False)}
    assert (proposals["name"].kind, proposals["name"].role) == ("person_name", "direct_identifier")
    # Values alone: given name + surname, the given name a common one.
    assert proposals["attending"].kind == "person_name"
    assert (proposals["brand_name"].kind, proposals["brand_name"].role) == ("category", "other")
    cols = load_policy(policy).columns
    assert (cols["name"].operator, cols["name"].faker) == ("pseudonym", "name")
    assert cols["attending"].operator in {"pseudonym", "hmac"}
    assert set(cols["notes"].names_from) == {"name", "attending"}
    text = policy.read_text(encoding="utf-8")
    raw = pd.read_csv(raw_path, dtype="string")
    for person in set(raw["name"]) | set(raw["attending"]):
        assert person not in text, person

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    out = tmp_path / "clinic.anon.parquet"
    run = ["anonymize", "run", str(raw_path), "--policy", str(policy), "--key", str(key)]
    run += ["--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    assert main(run) == 0
    table = pd.read_parquet(out)
    assert not table["name"].isin(raw["name"]).any()
    assert not table["attending"].isin(raw["attending"]).any()
    for first in FIRSTS:
        assert not table["notes"].str.contains(f"Called {first} ", regex=False).any(), first
    assert table["notes"].str.startswith("Called [NAME] at [PHONE] about visit ").all()


def test_dates_in_mixed_formats_are_dropped_not_kept_as_text(tmp_path: Path) -> None:
    """C-A06: ISO, slashed, month-name and dotted dates in one column read no single
    way: the proposal drops the column (an id exists, so date_shift was possible)."""
    visit = {p.name: p for p in inspect_table(_clinic_table(tmp_path), presidio=False)}["visit"]
    assert visit.kind == "date"
    assert 'operator = "drop"' in visit.lines
    assert any("parse in no single reading" in line for line in visit.lines)


def test_a_huge_value_makes_free_text_not_a_category_in_policy_or_manifest(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """One 2 MB value in a two-value column: not a category (its value is no label), so
    neither the policy nor the signed manifest copies it."""
    raw_path = _clinic_table(tmp_path)
    policy = tmp_path / "clinic.policy.toml"
    status = {p.name: p for p in inspect_table(raw_path, policy, presidio=False)}["status"]
    assert status.kind == "free_text" and 'type = "categorical"' not in status.lines
    assert policy.stat().st_size < 20_000
    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    out = tmp_path / "clinic.anon.parquet"
    run = ["anonymize", "run", str(raw_path), "--policy", str(policy), "--key", str(key)]
    run += ["--out", str(out), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    assert main(run) == 0
    manifest = Path(str(out) + ".manifest.json")
    assert manifest.stat().st_size < 50_000
    assert "x" * 1_000 not in manifest.read_text(encoding="utf-8")


def test_names_under_another_header_and_notes_quoting_them_are_not_kept(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """Forty people of many origins under a header that does not say "name", and a
    low-cardinality note column quoting them: the first is a name column (given names of
    many locales), the second is scrubbed with it, and no name reaches the policy or the
    output."""
    people = ["Ivan Petrov", "Marta Kowalska", "Klara Novak", "Priya Patel", "Greta Gerwig",
              "Rosa Parks", "Umar Farooq", "Irene Adler", "Elena Gilbert", "Nils Holgersson",
              "George Lucas", "Alice Johnson", "Liam Neeson", "Vera Wang", "Fatima Zahra",
              "Sven Larsen", "Chiara Rossi", "Pierre Durand", "Lucas Silva", "Jan Jansen"] * 2
    people = [f"{p.split()[0]} {p.split()[1]}{'son' if i >= 20 else ''}" for i, p in enumerate(people)]
    rows = [(i, people[i % 40], 20 + i % 50, f"Patient {people[i % 40]} reported pain",
             ["north", "south"][i % 2]) for i in range(400)]
    raw_path = tmp_path / "people.csv"
    pd.DataFrame(rows, columns=["id", "contact", "age", "note", "ward"]).to_csv(raw_path, index=False)
    policy = tmp_path / "people.policy.toml"
    assert main(["anonymize", "inspect", str(raw_path), "--out", str(policy), "--no-presidio"]) == 0
    cols = load_policy(policy).columns
    assert cols["contact"].role == "direct_identifier"
    assert cols["contact"].operator in ("pseudonym", "hmac")
    assert (cols["note"].operator, cols["note"].names_from) == ("scrub", ("contact",))
    assert cols["ward"].operator == "keep"
    text = policy.read_text(encoding="utf-8")
    assert not [p for p in people if p in text]

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    anon = tmp_path / "people.anon.parquet"
    run = ["anonymize", "run", str(raw_path), "--policy", str(policy), "--key", str(key), "--out",
           str(anon), "--signing-key", str(signer[0]), "--signing-cert", str(signer[1])]
    assert main(run) == 0
    written = pd.read_parquet(anon).astype("string").to_csv(index=False)
    written += Path(str(anon) + ".manifest.json").read_text(encoding="utf-8")
    assert not [p for p in people if p in written]
    assert "Patient [NAME] reported pain" in written


def test_zip_quasi_identifier_is_truncated_not_dropped(tmp_path: Path) -> None:
    """A ZIP column with few codes is proposed as ZIP truncation (leading zeros kept)."""
    path = tmp_path / "z.csv"
    pd.DataFrame({"id": range(200), "zip": [f"0{i % 5}134" for i in range(200)],
                  "age": [20 + i % 40 for i in range(200)]}).to_csv(path, index=False)
    proposals = {p.name: p for p in inspect_table(path)}
    lines = proposals["zip"].lines
    assert 'operator = "generalize"' in lines and 'type = "zip"' in lines
    assert not any("Too many distinct values" in line for line in lines)
