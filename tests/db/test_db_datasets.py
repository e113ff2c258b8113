"""Datasets: unique names, lookups, and the ledger each one draws on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from privtrain.platform.db import AlreadyExists, Database, DatasetRecord, NewDataset


def test_created_dataset_reads_back(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    created = make_dataset(db, name="census", epsilon=3.0, delta=1e-5)
    assert db.datasets.get(created.id) == created
    assert db.datasets.get_by_name("census") == created
    assert db.datasets.list() == [created]
    assert created.size_bytes == 5 * 2**30  # past 32 bits
    assert created.manifest == {"k_target": 5}
    assert created.split == {"column": "split", "train": "train", "test": "test"}
    ledger = db.budget.ledger(created.ledger_id)
    assert (ledger.epsilon_budget, ledger.delta_budget, ledger.epsilon_committed) == (3.0, 1e-5, 0.0)


def test_duplicate_name_raises_already_exists_naming_it(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    make_dataset(db, name="census")
    with pytest.raises(AlreadyExists, match="'census'") as raised:
        make_dataset(db, name="census")
    assert isinstance(raised.value, FailedPrecondition)
    assert len(db.datasets.list()) == 1


def test_same_file_under_another_name_is_refused(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    """A copy of an uploaded file would get a fresh budget for the same people."""
    make_dataset(db, name="census", sha256="ab" * 32)
    with pytest.raises(AlreadyExists, match="already uploaded as dataset 'census'"):
        make_dataset(db, name="census-copy", sha256="ab" * 32)


def test_releases_of_one_source_share_one_ledger(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    """Same input file, or a manifest naming an uploaded one as its previous release."""
    first = make_dataset(db, name="v1", input_sha256="11" * 32)
    same_input = make_dataset(db, name="v1-reanonymized", input_sha256="11" * 32)
    later = make_dataset(db, name="v2", previous_manifest_sha256=first.manifest_sha256)
    other = make_dataset(db, name="other", input_sha256="22" * 32)
    assert first.ledger_id == same_input.ledger_id == later.ledger_id != other.ledger_id
    assert [d.name for d in db.datasets.on_ledger(first.ledger_id)] == ["v1", "v1-reanonymized", "v2"]


def test_a_release_joins_only_with_the_ledger_budget_and_owner(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    make_dataset(db, name="v1", input_sha256="11" * 32, epsilon=3.0)
    with pytest.raises(FailedPrecondition, match="shares the privacy budget of dataset 'v1'"):
        make_dataset(db, name="v2", input_sha256="11" * 32, epsilon=30.0)
    with pytest.raises(PermissionDenied, match="another data owner"):
        make_dataset(db, name="stolen", input_sha256="11" * 32, owner="someone-else")
    assert [d.name for d in db.datasets.list()] == ["v1"]


def test_unknown_dataset_is_not_found(db: Database) -> None:
    with pytest.raises(NotFound):
        db.datasets.get("missing")
    with pytest.raises(NotFound):
        db.datasets.get_by_name("missing")
    with pytest.raises(NotFound):
        db.budget.remaining("missing")


def test_malformed_manifest_or_budget_is_invalid_input(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    with pytest.raises(InvalidInput):
        make_dataset(db, epsilon=float("nan"))
    with pytest.raises(InvalidInput):
        make_dataset(db, delta=-1.0)
    good = NewDataset(name="x", owner_common_name="o", storage_path="/x", sha256="0" * 64,
                      size_bytes=1, rows=1, manifest_json="{}", manifest_sha256="1" * 64,
                      input_sha256=None, previous_manifest_sha256=None, split_json="{}",
                      published_train_rows=1, published_test_rows=0)
    with pytest.raises(InvalidInput, match="manifest"):
        db.datasets.create(dataclasses.replace(good, manifest_json="not json"), epsilon_budget=1.0,
                           delta_budget=0.0)


def test_unused_dataset_can_be_removed_with_its_new_ledger(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    """The undo of a failed upload: nothing of the dataset or its ledger is left."""
    dataset = make_dataset(db, name="tmp")
    db.budget.charge_release(dataset.ledger_id, dataset.id, [(20.0, 1.0, 1)])
    db.datasets.remove_unused(dataset.id)
    assert db.datasets.list() == []
    with pytest.raises(NotFound):
        db.budget.ledger(dataset.ledger_id)
    used = make_dataset(db, name="used")
    submit(db, used.id)
    with pytest.raises(FailedPrecondition, match="has jobs"):
        db.datasets.remove_unused(used.id)
