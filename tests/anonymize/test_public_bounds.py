"""Published bounds and domains are the owner's declaration, never the private data's extremes.

``inspect`` proposes round limits strictly beyond the observed range and declared
category domains (a known vocabulary, else the observed values marked ``no public
domain known``), each with a ``TO CONFIRM`` comment; the example policies take theirs
from the data's documentation and name the source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from privtrain.anonymize.inspect_table import Proposal, inspect_table
from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file
from privtrain.anonymize.policy import Policy, load_policy
from privtrain.anonymize.public_bounds import CONFIRM, NO_PUBLIC_DOMAIN, VOCABULARIES
from privtrain.datasets import fetch_adult, fetch_compas

from .conftest import make_signer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FETCH = {"adult": fetch_adult, "compas": fetch_compas}


def _raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])


def _extremes(values: pd.Series) -> tuple[float, float]:
    num = pd.to_numeric(values.str.strip(), errors="coerce").dropna()
    return float(num.min()), float(num.max())


@pytest.fixture(scope="module")
def proposed(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[list[Proposal], Policy, Path]]:
    """inspect's proposal for real Adult and real COMPAS (the files the other tests use)."""
    folder = tmp_path_factory.mktemp("proposals")
    out = {}
    for name, fetch in FETCH.items():
        path = folder / f"{name}.policy.toml"
        proposals = inspect_table(fetch(), path, presidio=False)
        out[name] = (proposals, load_policy(path), path)
    return out


@pytest.mark.parametrize("dataset", ["adult", "compas"])
def test_inspect_proposes_no_observed_extreme_and_marks_every_domain(
    dataset: str, proposed: dict[str, tuple[list[Proposal], Policy, Path]]
) -> None:
    proposals, policy, _ = proposed[dataset]
    raw = _raw(FETCH[dataset]())
    vocabularies = {values: what for what, values in VOCABULARIES}
    bounds = domains = 0
    for p in proposals:
        col = policy.columns[p.name]
        comments = [line for line in p.lines if line.startswith("#")]
        if col.lower is not None or col.upper is not None:
            lo, hi = _extremes(raw[p.name])
            # Strictly beyond: no bound equals (or gives away) the smallest or largest value.
            assert col.lower is not None and col.upper is not None
            assert col.lower < lo and col.upper > hi, (p.name, col.lower, col.upper, lo, hi)
            assert any(f"{CONFIRM} lower/upper" in c for c in comments), p.name
            bounds += 1
        if col.domain is not None or col.hierarchy is not None:
            values = tuple(col.domain) if col.domain is not None else tuple(col.hierarchy or ())
            marks = [c for c in comments if CONFIRM in c]
            assert marks, p.name
            if "standard values of" in marks[0]:
                # A declared vocabulary: all of its values, whatever the rows hold.
                assert tuple(sorted(values)) in {tuple(sorted(v)) for v in vocabularies}, p.name
            else:
                # No public domain known: the observed values, marked so in the policy.
                assert NO_PUBLIC_DOMAIN in marks[0], p.name
                observed = set(raw[p.name].dropna().str.strip()) - {""}
                assert set(values) == observed, p.name
            domains += 1
    # Non-vacuous: COMPAS keeps fewer numbers since its day counts, which single rows out,
    # are dropped by the review of what else is released.
    assert bounds >= (4 if dataset == "adult" else 5) and domains >= 5
    if dataset == "adult":
        cols = policy.columns
        assert (cols["capital_loss"].lower, cols["capital_loss"].upper) == (-1, 5000)
        assert (cols["age"].lower, cols["age"].upper, cols["age"].top_code) == (10, 100, 90)
        assert cols["split"].domain == ("train", "test")  # the train/test vocabulary


def test_the_manifest_of_a_proposal_publishes_no_observed_extreme(
    tmp_path: Path, proposed: dict[str, tuple[list[Proposal], Policy, Path]]
) -> None:
    """What travels: every numeric domain and every band label of the signed manifest."""
    _, policy, policy_path = proposed["compas"]
    signer = make_signer(tmp_path)
    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    out = tmp_path / "compas.parquet"
    report = anonymize_file(fetch_compas(), policy_path, key, out,
                            signing_key_path=signer[0], signing_cert_path=signer[1])  # fmt: skip
    manifest = json.loads(report.manifest_path.read_text())["manifest"]
    raw = _raw(fetch_compas())
    checked = 0
    for name, domain in manifest["columns"].items():
        if domain.get("type") == "numeric":
            lo, hi = _extremes(raw[name])
            assert domain["lower"] < lo and domain["upper"] > hi, name
            checked += 1
        elif name in manifest["quasi_identifiers"] and policy.columns[name].type == "numeric":
            # A band's first and last label start and end at the public bounds.
            numbers = [int(x) for v in domain["values"] for x in re.findall(r"-?\d+", v)]
            lo, hi = _extremes(raw[name])
            assert lo not in numbers[:1] and hi not in numbers[-1:], name
            checked += 1
    assert checked >= 8


def test_a_small_file_does_not_publish_its_extremes(tmp_path: Path) -> None:
    """The defect as reported: a 3-row file with ages 28, 33, 51 proposed ``lower = 28``,
    ``upper = 51``; a kept count from 0 was published from 0."""
    path = tmp_path / "three.csv"
    path.write_text("id,age\n1,28\n2,51\n3,33\n", encoding="utf-8")
    policy_path = tmp_path / "p.toml"
    inspect_table(path, policy_path, presidio=False)
    age = load_policy(policy_path).columns["age"]
    assert (age.lower, age.upper) == (20, 60)
    rows = "".join(f"{i},{v}\n" for i, v in enumerate([0, 3, 7, 3, 0, 7, 3, 0]))
    path.write_text("id,visits\n" + rows, encoding="utf-8")
    inspect_table(path, policy_path, presidio=False)
    visits = load_policy(policy_path).columns["visits"]
    assert (visits.operator, visits.lower, visits.upper) == ("keep", -1, 10)


def test_template_sensitive_suggestion_names_only_released_columns(
    proposed: dict[str, tuple[list[Proposal], Policy, Path]],
) -> None:
    """COMPAS's empty ``violent_recid`` is a dropped sensitive column: the suggestion left it
    in, and uncommenting it was refused. Uncommented now, the policy loads."""
    proposals, policy, path = proposed["compas"]
    text = path.read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("# sensitive_attributes = "))
    named = json.loads(line.partition("= ")[2])
    dropped = {n for n, c in policy.columns.items() if c.operator == "drop"}
    assert "violent_recid" in dropped and policy.columns["violent_recid"].role == "sensitive"
    assert named and not set(named) & dropped
    uncommented = text.replace(line, line[2:]).replace("# l = 2", "l = 2")
    path.with_name("uncommented.toml").write_text(uncommented, encoding="utf-8")
    loaded = load_policy(path.with_name("uncommented.toml"))
    assert loaded.l == 2 and list(loaded.sensitive_attributes) == named


def _source_of(lines: list[str], header: int) -> str:
    """The comment block that applies to the column at ``lines[header]``: the nearest one
    above it, across the blocks of columns without comments (a shared comment)."""
    i = header - 1
    while i >= 0:
        if lines[i].startswith("#"):
            block = []
            while i >= 0 and lines[i].startswith("#"):
                block.append(lines[i])
                i -= 1
            return "\n".join(reversed(block))
        i -= 1
    return ""


@pytest.mark.parametrize("dataset", ["adult", "compas"])
def test_example_policies_take_bounds_and_domains_from_named_documentation(dataset: str) -> None:
    path = EXAMPLES / dataset / "policy.toml"
    policy = load_policy(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    for name, col in policy.columns.items():
        if col.lower is None and col.domain is None and col.hierarchy is None:
            continue
        header = lines.index(f"[columns.{name}]")
        assert "Source" in _source_of(lines, header), name
    if dataset == "adult":
        # The observed maximum (held by 3 people) was published as the upper bound.
        assert policy.columns["capital_loss"].upper == 99999  # not the observed 4356
        assert policy.split is not None and policy.split.column == "split"
    else:
        assert (policy.columns["age"].lower, policy.columns["age"].upper) == (0, 120)
        assert policy.split is not None and policy.split.method == "random_holdout"
