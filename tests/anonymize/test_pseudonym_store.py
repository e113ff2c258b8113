"""One person, one pseudonym, in every release under a key; two people never share one
(issue 10). Real COMPAS people in two overlapping releases, the in-file clashes that made
the old retry change a pseudonym, and the pseudonym store itself (mode, key, locking,
rollback, generations)."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from privtrain.anonymize.keys import SecretKey, generate_key, key_id_of, load_key
from privtrain.anonymize.operators.hmac_token import hmac_tokens
from privtrain.anonymize.operators.pseudonym import SCHEME, draws, pseudonyms
from privtrain.anonymize.pipeline import AnonymizationReport, anonymize_file, verify_output
from privtrain.anonymize.pseudonym_store import (
    PseudonymStoreError,
    Session,
    Store,
    default_store_path,
)
from privtrain.datasets import fetch_compas
from privtrain.platform.cli import main

from .conftest import make_signer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compas" / "policy.toml"
EMAIL_COLUMN = """
[columns.email]
operator = "pseudonym"
role = "direct_identifier"
type = "text"
faker = "email"
"""
# A fixed key, so the clashes below are found once, the same on every run.
FIXED = SecretKey(key_id_of(bytes(range(32))), bytes(range(32)))


def _local(part: pd.Series) -> pd.Series:
    return part.str.lower().str.replace(r"[^a-z0-9-]", "", regex=True)


def _pairs(*frames: pd.DataFrame) -> pd.DataFrame:
    """(person, pseudonym) pairs over all releases, once each."""
    return pd.concat(frames, ignore_index=True)[["email", "pseudonym"]].drop_duplicates()


def _split_and_shared(pairs: pd.DataFrame) -> tuple[int, int]:
    """People with more than one pseudonym; pseudonyms held by more than one person."""
    split = int((pairs.groupby("email")["pseudonym"].nunique() > 1).sum())
    shared = int((pairs.groupby("pseudonym")["email"].nunique() > 1).sum())
    return split, shared


# -- two releases of real COMPAS people ----------------------------------------------------
class Compas:
    def __init__(self, folder: Path) -> None:
        raw = pd.read_csv(fetch_compas(), dtype=str, keep_default_na=False)
        raw["email"] = _local(raw["first"]) + "." + _local(raw["last"]) + "@example.org"
        self.raw = raw
        self.folder = folder
        self.key = folder / "owner.hmac.key"
        generate_key(self.key)
        self.secret = load_key(self.key).secret
        self.signer = make_signer(folder)
        self.policy = folder / "policy.toml"
        self.policy.write_text(EXAMPLE.read_text(encoding="utf-8") + EMAIL_COLUMN)
        # 7,214 rows: release 1 has rows 0..4499, release 2 rows 2700..7213 (1,800 shared).
        self.inputs = [folder / "r1.csv", folder / "r2.csv"]
        raw.iloc[:4500].to_csv(self.inputs[0], index=False)
        raw.iloc[2700:].to_csv(self.inputs[1], index=False)

    def release(
        self, i: int, name: str, store: Path | None = None
    ) -> tuple[AnonymizationReport, pd.DataFrame]:
        out = self.folder / f"{name}.parquet"
        report = anonymize_file(
            self.inputs[i], self.policy, self.key, out, signing_key_path=self.signer[0],
            signing_cert_path=self.signer[1], pseudonym_store=store,
        )  # fmt: skip
        table = pd.read_parquet(out)
        # Whose row is it: the id's keyed token, computed here from the raw ids.
        token = hmac_tokens(self.raw["id"], "id", self.secret)
        email = dict(zip(token, self.raw["email"], strict=True))
        people = pd.DataFrame({"email": table["id"].map(email), "pseudonym": table["email"]})
        assert people["email"].notna().all()
        return report, people


@pytest.fixture(scope="module")
def compas(tmp_path_factory: pytest.TempPathFactory) -> Compas:
    return Compas(tmp_path_factory.mktemp("compas-releases"))


def _manifest(report: AnonymizationReport) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(report.manifest_path.read_text())["manifest"]
    return data


def test_two_compas_releases_one_pseudonym_per_person_none_shared(compas: Compas) -> None:
    """Same key, overlapping releases of real people: everyone in both keeps their
    pseudonym, and across both files no pseudonym belongs to two people (0 of 0).

    A person is an e-mail address (first.last@example.org): 55 addresses belong to more
    than one COMPAS row of the same name, and the pseudonym is a function of the value.
    """
    report1, one = compas.release(0, "r1")
    report2, two = compas.release(1, "r2")
    in_both = set(one["email"]) & set(two["email"])
    assert len(in_both) > 1500
    first = one.drop_duplicates().set_index("email")["pseudonym"]
    second = two.drop_duplicates().set_index("email")["pseudonym"]
    changed = [e for e in in_both if first[e] != second[e]]
    assert changed == []
    assert _split_and_shared(_pairs(one, two)) == (0, 0)
    assert not set(one["pseudonym"]) & set(compas.raw["email"].iloc[:4500])

    m1, m2 = _manifest(report1), _manifest(report2)
    assert m1["pseudonym_scheme"] == m2["pseudonym_scheme"] == SCHEME
    assert m1["pseudonym_store"]["id"] == m2["pseudonym_store"]["id"]
    assert (m1["pseudonym_store"]["generation"], m2["pseudonym_store"]["generation"]) == (1, 2)
    assert default_store_path(compas.key).stat().st_mode & 0o777 == 0o600
    assert verify_output(report1.output_path, report1.manifest_path, compas.inputs[0]) == []
    problems = verify_output(report2.output_path, report2.manifest_path, compas.inputs[1])
    if report2.pseudonym_clashes:  # a kept pseudonym that is a new person's real address
        assert report2.pseudonym_clashes.keys() == {"email"} and "'email'" in problems[0]
    else:
        assert problems == []


def test_without_the_store_the_same_releases_split_and_share_pseudonyms(compas: Compas) -> None:
    """The defect on the same two files: a fresh store per release (what a keyed draw
    alone gives) splits people and hands one pseudonym to two."""
    _, one = compas.release(0, "fresh1", compas.folder / "fresh1.sqlite")
    _, two = compas.release(1, "fresh2", compas.folder / "fresh2.sqlite")
    split, shared = _split_and_shared(_pairs(one, two))
    assert split > 0 and shared > 0


# -- clashes inside one file ---------------------------------------------------------------
def _clashing_pair() -> tuple[str, str, str]:
    """Two addresses whose first draw under FIXED is one pseudonym, and that pseudonym."""
    values = [f"person{i}@corp.test" for i in range(6000)]
    seen: dict[str, str] = {}
    for value, candidate in zip(values, draws(values, "email", FIXED.secret, "email", "en_US"),
                                strict=True):  # fmt: skip
        if candidate in seen:
            return seen[candidate], value, candidate
        seen[candidate] = value
    raise AssertionError("no clash among 6,000 draws")


def _release(store: Store, values: list[str]) -> dict[str, str]:
    with store.session() as session:
        out = pseudonyms(pd.Series(values), "email", FIXED.secret, "email", "en_US",
                         store=session)  # fmt: skip
    return dict(zip(values, out, strict=True))


def test_a_clash_inside_a_file_no_longer_changes_the_loser_elsewhere(tmp_path: Path) -> None:
    """A and B draw the same pseudonym c first. A file with both gave one of them a
    second draw; a file with B alone gave B c, A's pseudonym in the other file. Now B
    keeps what it got first, in whichever order the files come."""
    a, b, c = _clashing_pair()
    # The old behaviour, one file at a time: B alone draws A's pseudonym.
    assert pseudonyms(pd.Series([b]), "email", FIXED.secret, "email", "en_US")[0] == c

    store = Store(tmp_path / "ab-then-b.sqlite", FIXED)
    both = _release(store, [a, "x@corp.test", b])
    alone = _release(store, [b])
    assert both[a] == c and both[b] != c  # claimed in file order
    assert alone[b] == both[b]

    store = Store(tmp_path / "b-then-ab.sqlite", FIXED)
    alone = _release(store, [b])
    both = _release(store, [b, a])
    assert alone[b] == both[b] == c and both[a] != c


def test_a_real_value_in_the_file_no_longer_changes_a_pseudonym(tmp_path: Path) -> None:
    """A's first draw is some real address R. A file holding R retried A (a pseudonym is
    never a real person of the file); a file without R gave A the address R. Now A keeps
    one pseudonym; and R, met in a later file, stays A's pseudonym and is counted."""
    a = "ann.lee@corp.test"
    (real,) = draws([a], "email", FIXED.secret, "email", "en_US")
    store = Store(tmp_path / "with-r-first.sqlite", FIXED)
    with_r = _release(store, [real, a])
    without_r = _release(store, [a])
    assert with_r[a] != real and without_r[a] == with_r[a]
    assert with_r[real] != real

    store = Store(tmp_path / "without-r-first.sqlite", FIXED)
    without_r = _release(store, [a])
    with store.session() as session:
        out = pseudonyms(pd.Series([real, a]), "email", FIXED.secret, "email", "en_US",
                         store=session)  # fmt: skip
    assert without_r[a] == out[1] == real and out[0] != real
    assert session.clashes == {"email": 1}


def test_a_new_pseudonym_is_never_a_real_value_of_an_earlier_release(tmp_path: Path) -> None:
    """R was a real person of release 1; A, new in release 2, first draws R: not given."""
    a = "bo.kim@corp.test"
    (real,) = draws([a], "email", FIXED.secret, "email", "en_US")
    store = Store(tmp_path / "s.sqlite", FIXED)
    _release(store, [real])
    assert _release(store, [a])[a] != real


def _fixed_key_and_policy(folder: Path) -> tuple[Path, Path]:
    key = folder / "fixed.hmac.key"
    body = {"format": "privtrain-hmac-key", "version": 1, "key_id": FIXED.key_id,
            "secret": base64.b64encode(FIXED.secret).decode()}  # fmt: skip
    key.write_text(json.dumps(body))
    key.chmod(0o600)
    assert load_key(key) == FIXED
    policy = folder / "tiny.toml"
    policy.write_text(
        "k = 1\n" + EMAIL_COLUMN + '[columns.zip]\noperator = "keep"\nrole = "other"\n'
        'type = "categorical"\ndomain = ["02134"]\n'
    )
    return key, policy


def test_the_pipeline_claims_in_file_order_and_continues(
    tmp_path: Path, write: Callable[[str, str], Path], signer: tuple[Path, Path]
) -> None:
    """The clash through `anonymize_file`: A, B in one file, B alone in the next."""
    a, b, c = _clashing_pair()
    key, policy = _fixed_key_and_policy(tmp_path)
    both = write("both.csv", f"email,zip\n{a},02134\n{b},02134\n")
    alone = write("alone.csv", f"email,zip\n{b},02134\n")
    got = []
    for src in (both, alone):
        out = tmp_path / f"{src.stem}.parquet"
        anonymize_file(
            src, policy, key, out, signing_key_path=signer[0], signing_cert_path=signer[1]
        )
        got.append(pd.read_parquet(out)["email"].tolist())
    assert got[0][0] == c and got[0][1] != c and got[1] == [got[0][1]]


def test_a_kept_pseudonym_that_is_a_real_value_now_is_told(
    tmp_path: Path,
    write: Callable[[str, str], Path],
    signer: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A got R in release 1; release 2 holds A and a real person R: A keeps R, the run
    warns, and `verify --raw` names the column."""
    a = "ann.lee@corp.test"
    (real,) = draws([a], "email", FIXED.secret, "email", "en_US")
    key, policy = _fixed_key_and_policy(tmp_path)
    common = ["--policy", str(policy), "--key", str(key), "--signing-key", str(signer[0]),
              "--signing-cert", str(signer[1])]  # fmt: skip
    first = write("first.csv", f"email,zip\n{a},02134\n")
    second = write("second.csv", f"email,zip\n{real},02134\n{a},02134\n")
    outs = [tmp_path / "first.parquet", tmp_path / "second.parquet"]
    assert main(["anonymize", "run", str(first), "--out", str(outs[0]), *common]) == 0
    capsys.readouterr()
    assert main(["anonymize", "run", str(second), "--out", str(outs[1]), *common]) == 0
    err = capsys.readouterr().err
    assert "warning: column 'email': 1 value(s) of this file are, as real text, the " in err
    assert pd.read_parquet(outs[1])["email"].tolist()[1] == real
    problems = verify_output(outs[1], outs[1].with_name("second.parquet.manifest.json"), second)
    assert len(problems) == 1 and "'email'" in problems[0]


# -- the store -----------------------------------------------------------------------------
def test_store_is_private_and_belongs_to_one_key(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _release(Store(path, FIXED), ["a@b.test"])
    assert path.stat().st_mode & 0o777 == 0o600
    other = SecretKey(key_id_of(b"\x07" * 32), b"\x07" * 32)
    with pytest.raises(PseudonymStoreError, match=f"of key {FIXED.key_id}.*{other.key_id}"):
        Store(path, other).state()
    path.chmod(0o640)
    with pytest.raises(PseudonymStoreError, match="chmod 600"):
        Store(path, FIXED).state()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    junk.chmod(0o600)
    with pytest.raises(PseudonymStoreError, match="not a pseudonym store"):
        Store(junk, FIXED).state()


def test_store_keeps_digests_never_raw_values(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _release(Store(path, FIXED), ["secret.person@corp.test", "Other Person@corp.test"])
    blob = path.read_bytes()
    assert b"secret.person" not in blob and b"Other Person" not in blob


def test_generation_moves_only_when_pseudonyms_are_added(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite", FIXED)
    assert store.state() is None
    _release(store, ["a@b.test"])
    assert store.recorded is not None and store.recorded.generation == 1
    first = store.recorded
    _release(store, ["a@b.test"])
    assert store.recorded == first
    _release(store, ["a@b.test", "c@d.test"])
    assert store.recorded.generation == 2
    assert store.holds(first.as_manifest()) and store.holds(store.recorded.as_manifest())


def test_a_failed_run_keeps_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite", FIXED)
    before = _release(store, ["a@b.test"])
    with pytest.raises(RuntimeError), store.session() as session:
        pseudonyms(pd.Series(["c@d.test"]), "email", FIXED.secret, "email", "en_US",
                   store=session)  # fmt: skip
        raise RuntimeError("the run stopped before its commit")
    state = store.state()
    assert state is not None and state.generation == 1
    with store.session() as session:
        assert session.size(session.space("email", "email", "en_US")) == 1
    assert _release(store, ["a@b.test"]) == before


def test_a_background_commit_that_fails_is_told_and_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline commits its claims on a thread while pass 2 runs; a commit that fails
    (here: the disk) is raised where the manifest asks for the store's state, and the
    store is as it was."""
    store = Store(tmp_path / "s.sqlite", FIXED)
    before = _release(store, ["a@b.test"])

    def disk_fails(self: Session) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Session, "flush", disk_fails)
    with store.session(commit_in_background=True) as session:
        pseudonyms(pd.Series(["c@d.test"]), "email", FIXED.secret, "email", "en_US",
                   store=session)  # fmt: skip
    with pytest.raises(PseudonymStoreError, match="cannot record this run's pseudonyms"):
        _ = store.recorded
    monkeypatch.undo()
    state = store.state()
    assert state is not None and state.generation == 1
    with store.session() as session:
        assert session.size(session.space("email", "email", "en_US")) == 1
    assert _release(store, ["a@b.test"]) == before


def test_a_fork_of_the_store_is_told_apart(tmp_path: Path) -> None:
    """A copy that claimed on its own has the same generation number, another token."""
    path = tmp_path / "s.sqlite"
    store = Store(path, FIXED)
    _release(store, ["a@b.test"])
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)
    _release(store, ["c@d.test"])
    forked = Store(copy, FIXED)
    _release(forked, ["e@f.test"])
    assert store.recorded is not None and forked.recorded is not None
    assert store.recorded.generation == forked.recorded.generation == 2
    assert not store.holds(forked.recorded.as_manifest())
    assert not forked.holds(store.recorded.as_manifest())


def test_concurrent_runs_on_one_store_stay_consistent(tmp_path: Path) -> None:
    """Two runs claiming overlapping people at once: serialized, one pseudonym each."""
    path = tmp_path / "s.sqlite"
    people = [f"p{i}@corp.test" for i in range(3000)]
    files = [people[:2000], people[1000:][::-1]]
    results: list[dict[str, str]] = [{}, {}]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = _release(Store(path, FIXED), files[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    pairs = pd.DataFrame(
        [(e, p) for r in results for e, p in r.items()], columns=["email", "pseudonym"]
    ).drop_duplicates()
    assert len(pairs) == 3000 and _split_and_shared(pairs) == (0, 0)
    state = Store(path, FIXED).state()
    assert state is not None and state.generation == 2


def test_a_run_that_cannot_get_the_store_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    _release(Store(path, FIXED), ["a@b.test"])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(PseudonymStoreError, match="in use by another run"):
            _release(Store(path, FIXED, lock_timeout=0.2), ["c@d.test"])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert _release(Store(path, FIXED), ["c@d.test"])


def test_an_interrupted_pass_2_claims_nothing_and_leaves_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or any error) in pass 2 while the pseudonym maps are still being drawn on
    their thread: the run ends with that error, the maps' thread is stopped and waited
    for, and the store keeps none of the interrupted run's claims. (The thread used to go
    on behind the error and commit the claims of a run that had been stopped.)"""
    from privtrain.anonymize import stream
    from privtrain.anonymize.operators.pseudonym import Pseudonym

    key = tmp_path / "owner.hmac.key"
    generate_key(key)
    signer = make_signer(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'k = 1\n[risk.accept]\nvisits = "a test"\n'
        '[columns.visits]\noperator = "keep"\nrole = "other"\ntype = "numeric"\n'
        "lower = 0\nupper = 1000\n" + EMAIL_COLUMN,
        encoding="utf-8",
    )
    src = tmp_path / "in.csv"
    path = tmp_path / "s.sqlite"

    def run(emails: list[str]) -> None:
        pd.DataFrame({"visits": range(len(emails)), "email": emails}).to_csv(src, index=False)
        anonymize_file(src, policy, key, tmp_path / "out.parquet", signing_key_path=signer[0],
                       signing_cert_path=signer[1], pseudonym_store=path)  # fmt: skip

    run([f"p{i}@corp.test" for i in range(50)])
    generation = Store(path, load_key(key)).state()
    assert generation is not None and generation.generation == 1

    drawing = threading.Event()
    real_transform, real_write = Pseudonym.transform, stream.Streamer.write

    def slow_transform(self: Pseudonym, values: pd.Series, ctx: Any) -> pd.Series:
        drawing.set()
        time.sleep(0.3)  # still drawing when the first chunk is stopped
        return real_transform(self, values, ctx)

    def interrupted(self: stream.Streamer, chunk: Any, name: str) -> Any:
        assert drawing.wait(5)
        raise KeyboardInterrupt

    def write(self: stream.Streamer, writer: Any) -> Any:
        monkeypatch.setattr(stream.Streamer, "_released", interrupted)
        return real_write(self, writer)

    monkeypatch.setattr(Pseudonym, "transform", slow_transform)
    monkeypatch.setattr(stream.Streamer, "write", write)
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(KeyboardInterrupt):
        run([f"q{i}@corp.test" for i in range(50)])
    assert {t.name for t in threading.enumerate()} <= before
    state = Store(path, load_key(key)).state()
    assert state is not None and state.generation == 1
