"""Issue 10: claims that hold on the file as released.

k counts the kept proxies of quasi-identifiers (found by their values, whatever their
names), and every released column is measured for the rows it leaves unique beside the
quasi-identifiers, on the real Adult and COMPAS files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from privtrain.anonymize.errors import AnonymizationError, PolicyError
from privtrain.anonymize.inspect_table import inspect_table
from privtrain.anonymize.keys import generate_key
from privtrain.anonymize.pipeline import anonymize_file, verify_output
from privtrain.anonymize.policy import load_policy
from privtrain.anonymize.proxies import ProxySample, pair_measures
from privtrain.anonymize.released_risk import HashCounts, SizeSummary, figures, verify_problems
from privtrain.anonymize.report import write_run_report
from privtrain.datasets import fetch_adult, fetch_compas

ROOT = Path(__file__).resolve().parents[2]
ADULT_POLICY = (ROOT / "examples" / "adult" / "policy.toml").read_text(encoding="utf-8")


def _section(text: str, name: str) -> str:
    """The ``[columns.NAME]`` block of a policy (up to the next blank line)."""
    start = text.index(f"[columns.{name}]")
    return text[start : text.index("\n\n", start) + 2]


def _raw(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])


def _unique_share(table: pd.DataFrame, columns: list[str]) -> float:
    """Independent: a plain pandas group-by on the written file."""
    sizes = table.groupby(columns, dropna=False).size()
    return float(sizes[sizes == 1].sum() / len(table))


def _run(
    tmp_path: Path, signer: tuple[Path, Path], raw: Path, policy: str, name: str
) -> tuple[Path, Path]:
    policy_path = tmp_path / f"{name}.toml"
    policy_path.write_text(policy, encoding="utf-8")
    key = tmp_path / "owner.hmac.key"
    if not key.exists():
        generate_key(key)
    out = tmp_path / f"{name}.parquet"
    anonymize_file(raw, policy_path, key, out, signing_key_path=signer[0],
                   signing_cert_path=signer[1])  # fmt: skip
    return out, policy_path


# -- Adult: education_num and its renamed copy ------------------------------------------
@pytest.fixture(scope="module")
def adult_with_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Adult plus ``schooling_code``, a renamed copy of ``education_num``."""
    raw = _raw(fetch_adult())
    raw["schooling_code"] = raw["education_num"]
    path = tmp_path_factory.mktemp("adult") / "adult_copy.csv"
    raw.to_csv(path, index=False)
    return path


def _kept_education_num(policy: str) -> str:
    kept = (
        "[columns.education_num]\n"
        'operator = "keep"\nrole = "other"\ntype = "numeric"\nlower = 1\nupper = 16\n\n'
        "[columns.schooling_code]\n"
        'operator = "keep"\nrole = "other"\ntype = "numeric"\nlower = 1\nupper = 16\n\n'
    )
    return policy.replace(_section(policy, "education_num"), kept)


def test_adult_education_num_and_a_renamed_copy_are_proxies_and_k_is_not_signed_falsely(
    tmp_path: Path, signer: tuple[Path, Path], adult_with_copy: Path
) -> None:
    policy = _kept_education_num(ADULT_POLICY)
    with pytest.raises(AnonymizationError) as refused:
        _run(tmp_path, signer, adult_with_copy, policy, "refused")
    text = str(refused.value)
    assert "refused, nothing was written or signed" in text
    for name in ("education_num", "schooling_code"):
        assert f"{name} (proxy of education: its value fixes education in 100% of rows" in text
    assert "k = 10" in text and "[risk.acknowledge_proxy]" in text
    assert list(tmp_path.glob("refused.parquet*")) == []

    # Acknowledged: signed, with the k that holds counting both, and the declared one.
    acknowledged = policy + (
        "\n[risk.acknowledge_proxy]\n"
        'education_num = "the model needs the years of schooling"\n'
        'schooling_code = "the same, under the name a partner uses"\n'
    )
    out, _ = _run(tmp_path, signer, adult_with_copy, acknowledged, "acknowledged")
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())["manifest"]
    table = pd.read_parquet(out)
    qis = manifest["quasi_identifiers"]
    assert manifest["proxy_quasi_identifiers"] == ["education_num", "schooling_code"]
    true_k = int(table.groupby([*qis, "education_num", "schooling_code"], dropna=False)
                 .size().min())  # fmt: skip
    assert manifest["k_achieved"] == true_k < 10 <= manifest["k_declared"]
    assert manifest["k_declared"] == int(table.groupby(qis, dropna=False).size().min())
    proxies = manifest["released_risk"]["proxies"]
    for name in ("education_num", "schooling_code"):
        assert proxies[name]["of"]["education"]["determines"] == 1.0
        assert proxies[name]["acknowledged"]
    assert verify_output(out, Path(f"{out}.manifest.json"), adult_with_copy) == []


def test_inspect_flags_a_renamed_copy_of_education_num(adult_with_copy: Path) -> None:
    """The name says nothing; the values say it repeats education: proposed as a drop,
    with the evidence in its comment."""
    proposal = {p.name: p for p in inspect_table(adult_with_copy, presidio=False)}
    copy = proposal["schooling_code"]
    comment = " ".join(line.lstrip("# ") for line in copy.lines if line.startswith("#"))
    assert 'operator = "drop"' in copy.lines
    assert "proxy of education: its value fixes education in 100% of rows" in comment
    assert "It repeats education" in comment
    # relationship: a proxy of sex and of marital status, proposed as a quasi-identifier.
    rel = proposal["relationship"]
    comment = " ".join(line.lstrip("# ") for line in rel.lines if line.startswith("#"))
    assert 'operator = "generalize"' in rel.lines and rel.role == "quasi_identifier"
    assert "proxy of sex" in comment and "proxy of marital_status" in comment


def test_adult_relationship_is_a_proxy_of_sex_and_marital_status(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    """Husband is male in 19,715 of 19,716 rows, Wife female in 2,328 of 2,331."""
    raw = _raw(fetch_adult())
    codes = {c: pd.factorize(raw[c], use_na_sentinel=False)[0] for c in
             ("relationship", "sex", "marital_status", "occupation")}  # fmt: skip
    for qi in ("sex", "marital_status"):
        m = pair_measures(codes["relationship"], codes[qi])
        assert m.is_proxy and m.determines == pytest.approx(0.4514, abs=1e-4), qi
    assert not pair_measures(codes["occupation"], codes["sex"]).is_proxy

    # Kept as a plain column (the example before issue 10), the run is refused.
    kept = (
        "[columns.relationship]\n"
        'operator = "keep"\nrole = "sensitive"\ntype = "categorical"\n'
        'domain = ["Wife", "Own-child", "Husband", "Not-in-family", "Other-relative", '
        '"Unmarried"]\n\n'
    )
    policy = ADULT_POLICY.replace(_section(ADULT_POLICY, "relationship"), kept)
    with pytest.raises(AnonymizationError, match="proxies of quasi-identifiers") as refused:
        _run(tmp_path, signer, fetch_adult(), policy, "rel")
    assert re.search(r"relationship \(proxy of sex: .*; proxy of marital_status: ",
                     str(refused.value))  # fmt: skip

    # Acknowledged: signed with the k that counts it; Husband / Wife show sex and marital
    # status on 45 % of the released rows, whatever level those two are released at.
    acknowledged = policy + '\n[risk.acknowledge_proxy]\nrelationship = "model feature"\n'
    out, _ = _run(tmp_path, signer, fetch_adult(), acknowledged, "rel_ack")
    manifest = json.loads(Path(f"{out}.manifest.json").read_text())["manifest"]
    assert set(manifest["released_risk"]["proxies"]["relationship"]["of"]) == {
        "sex", "marital_status"}
    table = pd.read_parquet(out)
    spouses = table["relationship"].isin(["Husband", "Wife"]).mean()
    assert spouses > 0.4
    assert manifest["k_achieved"] == int(
        table.groupby([*manifest["quasi_identifiers"], "relationship"], dropna=False).size().min()
    )


def test_the_example_policies_run_and_every_kept_column_is_within_the_threshold(
    tmp_path: Path, signer: tuple[Path, Path]
) -> None:
    for raw, example in ((fetch_adult(), "adult"), (fetch_compas(), "compas")):
        text = (ROOT / "examples" / example / "policy.toml").read_text(encoding="utf-8")
        out, _ = _run(tmp_path, signer, raw, text, example)
        manifest = json.loads(Path(f"{out}.manifest.json").read_text())["manifest"]
        block = manifest["released_risk"]
        assert "proxy_quasi_identifiers" not in manifest and block["accepted_columns"] == {}
        table = pd.read_parquet(out)
        for col in block["attacker_known_columns"]:
            share = _unique_share(table, [*manifest["quasi_identifiers"], col])
            assert share == pytest.approx(block["kept_column_uniqueness"][col], abs=1e-12)
            assert share <= 0.05, (example, col)


# -- COMPAS with the policy inspect proposes --------------------------------------------
@pytest.fixture(scope="module")
def compas_proposed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, dict, dict, Path]:
    from .conftest import make_signer

    folder = tmp_path_factory.mktemp("compas_proposed")
    signer = make_signer(folder)
    policy = folder / "compas.policy.toml"
    inspect_table(fetch_compas(), policy, presidio=False)
    key = folder / "owner.hmac.key"
    generate_key(key)
    out = folder / "compas.anon.parquet"
    report = anonymize_file(fetch_compas(), policy, key, out, signing_key_path=signer[0],
                            signing_cert_path=signer[1])  # fmt: skip
    figures = write_run_report(fetch_compas(), out, report.manifest_path, policy,
                               folder / "report.html")  # fmt: skip
    manifest = json.loads(report.manifest_path.read_text())["manifest"]
    return pd.read_parquet(out), manifest, figures, policy


def test_compas_report_kept_column_uniqueness_agrees_with_pandas(
    compas_proposed: tuple[pd.DataFrame, dict, dict, Path],
) -> None:
    table, manifest, report, _ = compas_proposed
    qis = manifest["quasi_identifiers"]
    uniqueness = report["kept_column_uniqueness"]
    # Every released column that is not a declared QI, tokens included.
    assert set(uniqueness) == set(table.columns) - set(qis)
    for col, share in uniqueness.items():
        assert 0.0 <= share <= 1.0
        assert share == pytest.approx(_unique_share(table, [*qis, col]), abs=1e-12), col
    # Over the attacker-known set the release is far from the declared QIs' 0 unique.
    risk = report["released_risk"]
    known = risk["attacker_known_columns"]
    wide = risk["risk_attacker_known"]
    assert wide["share_unique"] == pytest.approx(_unique_share(table, [*qis, *known]), abs=1e-12)
    sizes = table.groupby([*qis, *known], dropna=False).size()
    assert wide["marketer"] == pytest.approx(len(sizes) / len(table))
    assert wide["journalist_max"] == pytest.approx(1 / sizes.min())
    assert wide["records_at_risk"] == int(sizes[sizes < 5].sum())
    declared = risk["risk_declared"]
    assert declared["share_unique"] == report["after"]["share_unique"] == 0.0
    assert declared["journalist_max"] == pytest.approx(report["risk"]["after"]["prosecutor_max"])
    assert wide["share_unique"] > 0.05 > declared["share_unique"]


def test_compas_proposal_leaves_no_kept_column_over_five_percent(
    compas_proposed: tuple[pd.DataFrame, dict, dict, Path],
) -> None:
    table, manifest, report, policy_path = compas_proposed
    policy = load_policy(policy_path)
    assert policy.risk.accept == {} and policy.risk.acknowledge_proxy == {}
    qis = manifest["quasi_identifiers"]
    for col in report["released_risk"]["attacker_known_columns"]:
        assert _unique_share(table, [*qis, col]) <= 0.05, col
    # The columns issue 10 found unique beside the QIs are not released as they were.
    for col in ("c_charge_desc", "c_jail_in"):
        assert col not in table.columns or col in qis
    assert {"sex", "race", "age", "priors_count"} <= set(table.columns)


# -- the rules, on small tables ------------------------------------------------------------
SMALL = """
    k = 2
    max_suppression = 0.0
    [columns.zip]
    operator = "generalize"
    role = "quasi_identifier"
    type = "categorical"
    hierarchy = { "02134" = ["021*", "*"], "02139" = ["021*", "*"] }
    [columns.visits]
    operator = "keep"
    role = "other"
    type = "numeric"
    lower = 0
    upper = 100
    [columns.token]
    operator = "hmac"
    role = "direct_identifier"
    type = "text"
"""


@pytest.fixture
def small(write: Callable[[str, str], Path]) -> Path:
    rows = ["zip,visits,token"] + [f"0213{4 if i % 2 else 9},{i % 3},t{i}" for i in range(40)]
    return write("small.csv", "\n".join(rows) + "\n")


def test_a_kept_column_over_the_threshold_is_refused_unless_accepted(
    tmp_path: Path, write: Callable[[str, str], Path], small: Path, key_path: Path,
    signer: tuple[Path, Path],
) -> None:  # fmt: skip
    def run(text: str) -> dict:
        policy = write("p.toml", text)
        out = tmp_path / "o.parquet"
        anonymize_file(small, policy, key_path, out, signing_key_path=signer[0],
                       signing_cert_path=signer[1])  # fmt: skip
        return json.loads(Path(f"{out}.manifest.json").read_text())["manifest"]

    # 40 rows, zip x visits: 6 classes of 6-7 rows; no row unique: signed.
    manifest = run(SMALL)
    # Measured while writing: the columns an attacker could know (not the keyed token).
    assert manifest["released_risk"]["kept_column_uniqueness"] == {"visits": 0.0}
    # A tighter spread: visits = row number, every row unique beside the zip.
    lines = ["zip,visits,token"] + [f"0213{4 if i % 2 else 9},{i},t{i}" for i in range(40)]
    small.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = [(tmp_path / n).read_bytes() for n in ("o.parquet", "o.parquet.manifest.json")]
    with pytest.raises(AnonymizationError, match=r"column 'visits' leaves 100\.0% of the output"):
        run(SMALL)
    # Nothing written: the earlier release and its manifest are as they were.
    after = [(tmp_path / n).read_bytes() for n in ("o.parquet", "o.parquet.manifest.json")]
    assert after == before and [p for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    accepted = run(SMALL + '[risk.accept]\nvisits = "visit counts are not public"\n')
    block = accepted["released_risk"]
    assert block["accepted_columns"] == {"visits": "visit counts are not public"}
    assert block["kept_column_uniqueness"]["visits"] == 1.0
    # The threshold is the policy's; 1 turns the refusal off and is recorded.
    relaxed = run(SMALL + "[risk]\nuniqueness_threshold = 1\n")
    assert relaxed["released_risk"]["uniqueness_threshold"] == 1.0


def test_the_cli_refusal_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path,
    signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from privtrain.platform.cli import main

    rows = ["zip,visits,token"] + [f"0213{4 if i % 2 else 9},{i},t{i}" for i in range(40)]
    raw = write("unique.csv", "\n".join(rows) + "\n")
    out = tmp_path / "o.parquet"
    argv = ["anonymize", "run", str(raw), "--policy", str(write("p.toml", SMALL)),
            "--key", str(key_path), "--out", str(out), "--signing-key", str(signer[0]),
            "--signing-cert", str(signer[1]), "--report", str(tmp_path / "r.html")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused, nothing was written or signed" in err[0]
    assert "[risk.accept] (visits" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owner.hmac.key", "owner.key",
                                                          "owner.pem", "p.toml", "unique.csv"]


@pytest.mark.parametrize(
    ("risk", "problem"),
    [
        ("[risk]\nwhatever = 1\n", "risk.whatever: unknown key"),
        ("[risk]\nuniqueness_threshold = 0\n", "must be a number in (0, 1]"),
        ('[risk.accept]\nnope = "x"\n', "'nope' is not a declared column"),
        ('[risk.accept]\ntoken = "x"\n', "operator 'hmac'"),
        ('[risk.accept]\nvisits = ""\n', "needs the reason"),
        ('[risk.acknowledge_proxy]\nzip = "x"\n', "operator 'generalize'"),
    ],
)
def test_risk_table_is_validated(
    write: Callable[[str, str], Path], risk: str, problem: str
) -> None:
    with pytest.raises(PolicyError, match=re.escape(problem)):
        load_policy(write("p.toml", SMALL + risk))


def test_figures_are_the_same_whatever_the_chunk_size(
    tmp_path: Path, write: Callable[[str, str], Path], key_path: Path, signer: tuple[Path, Path]
) -> None:
    rng = np.random.default_rng(7)
    n = 3_000
    zips = rng.choice(["02134", "02139"], n)
    code = rng.integers(0, 4, n)
    frame = pd.DataFrame({"zip": zips, "visits": rng.integers(0, 40, n),
                          "plan": np.where(code < 2, "a", "b"), "token": np.arange(n)})  # fmt: skip
    frame["shadow"] = frame["zip"].map({"02134": "x", "02139": "y"})  # a copy of zip
    raw = tmp_path / "t.csv"
    frame.to_csv(raw, index=False)
    text = SMALL + (
        '    [columns.plan]\n    operator = "keep"\n    role = "other"\n'
        '    type = "categorical"\n    domain = ["a", "b"]\n'
        '    [columns.shadow]\n    operator = "keep"\n    role = "other"\n'
        '    type = "categorical"\n    domain = ["x", "y"]\n'
        "    [risk]\n    uniqueness_threshold = 1\n"
    )
    policy = write("p.toml", text)
    manifests = []
    for rows in (128, 1_000_000):
        out = tmp_path / f"o{rows}.parquet"
        anonymize_file(raw, policy, key_path, out, signing_key_path=signer[0],
                       signing_cert_path=signer[1], chunk_rows=rows)  # fmt: skip
        manifests.append(json.loads(Path(f"{out}.manifest.json").read_text())["manifest"])
        table = pd.read_parquet(out)
        for col, share in manifests[-1]["released_risk"]["kept_column_uniqueness"].items():
            assert share == pytest.approx(_unique_share(table, ["zip", col]), abs=1e-12)
    assert manifests[0]["released_risk"] == manifests[1]["released_risk"]
    # shadow repeats zip: a proxy, which does not break k = 2 (zip is kept raw).
    assert manifests[0]["proxy_quasi_identifiers"] == ["shadow"]
    assert manifests[0]["k_achieved"] == manifests[0]["k_declared"]


def test_proxy_sample_stays_bounded_and_still_finds_the_proxy() -> None:
    rng = np.random.default_rng(3)
    sample = ProxySample(["code", "noise"], ["qi"], budget=5_000)
    import pyarrow as pa

    for offset in range(0, 200_000, 20_000):
        qi = rng.integers(1, 30, 20_000)
        code = qi.copy()  # id per row into the dictionary below: the same as the QI's
        dictionary = pa.array([f"v{i}" for i in range(30)])
        noise = rng.integers(0, 30, 20_000)
        sample.add(offset, [qi], {"code": code, "noise": noise},
                   {"code": dictionary, "noise": dictionary})  # fmt: skip
        assert sum(len(p["_h"]) for p in sample._parts) <= 5_000
    found = sample.findings()
    assert set(found) == {"code"} and found["code"]["qi"].determines == 1.0


@pytest.mark.parametrize("in_memory", [1 << 20, 5_000])
def test_hash_counts_merge_like_a_group_by(in_memory: int) -> None:
    """In memory, and spilled to the temporary file in partitions (a small budget), the
    counts and their summary are pandas' value counts of the same hashes."""
    rng = np.random.default_rng(5)
    # Well-spread hashes, as the counter makes them: a few repeated, most near-unique.
    pool = rng.integers(0, 2**63, 60_000, dtype=np.int64).astype(np.uint64)
    keys = np.concatenate([pool[rng.integers(0, 50_000, 300_000)], pool[50_000:]])
    counts = HashCounts(in_memory=in_memory)
    for i, part in enumerate(np.array_split(keys, 37)):
        if i % 2:
            counts.add(part)
        else:
            uniq, n = np.unique(part, return_counts=True)
            counts.add_counted(uniq, n)
    expected = pd.Series(keys).value_counts().to_numpy()
    assert (counts._spill is not None) == (in_memory < len(pool))
    assert (np.sort(counts.counts()) == np.sort(expected)).all()
    assert counts.summary() == SizeSummary.of(expected)
    assert figures(counts.summary()) == figures(expected)
    counts.close()


def test_verify_recomputes_the_released_figures(
    compas_proposed: tuple[pd.DataFrame, dict, dict, Path],
) -> None:
    table, manifest, _, _ = compas_proposed
    assert verify_problems(table, manifest) == []
    forged = json.loads(json.dumps(manifest))
    col = next(iter(forged["released_risk"]["kept_column_uniqueness"]))
    forged["released_risk"]["kept_column_uniqueness"][col] += 0.01
    assert any(col in p for p in verify_problems(table, forged))
