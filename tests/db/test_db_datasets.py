"""Datasets: unique names, lookups, budget changes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from privtrain.errors import FailedPrecondition, InvalidInput, NotFound
from privtrain.platform.db import AlreadyExists, Database, DatasetRecord


def test_created_dataset_reads_back(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    created = make_dataset(db, name="census", epsilon=3.0, delta=1e-5)
    assert db.datasets.get(created.id) == created
    assert db.datasets.get_by_name("census") == created
    assert db.datasets.list() == [created]
    assert created.size_bytes == 5 * 2**30  # past 32 bits
    assert created.manifest == {"k_anonymity": 5}


def test_duplicate_name_raises_already_exists_naming_it(
    db: Database, make_dataset: Callable[..., DatasetRecord]
) -> None:
    make_dataset(db, name="census")
    with pytest.raises(AlreadyExists, match="'census'") as raised:
        make_dataset(db, name="census")
    assert isinstance(raised.value, FailedPrecondition)
    assert len(db.datasets.list()) == 1


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
    with pytest.raises(InvalidInput, match="manifest"):
        db.datasets.create(
            name="x",
            owner_common_name="o",
            storage_path="/x",
            sha256="0" * 64,
            size_bytes=1,
            rows=1,
            manifest_json="not json",
            epsilon_budget=1.0,
            delta_budget=0.0,
        )


def test_set_budget_cannot_go_below_what_jobs_hold(
    db: Database, make_dataset: Callable[..., DatasetRecord], submit: Callable[..., str]
) -> None:
    dataset = make_dataset(db, epsilon=3.0, delta=1e-5)
    submit(db, dataset.id, epsilon=2.0, delta=1e-6)
    with pytest.raises(FailedPrecondition, match="epsilon=2"):
        db.datasets.set_budget(dataset.id, 1.5, 1e-5)
    assert db.datasets.set_budget(dataset.id, 2.0, 1e-6).epsilon_budget == 2.0
    assert db.budget.remaining(dataset.id) == pytest.approx((0.0, 0.0))
    assert db.datasets.set_budget(dataset.id, 10.0, 1e-5).epsilon_budget == 10.0
    assert db.budget.remaining(dataset.id)[0] == pytest.approx(8.0)
