"""Datasets and their (ε, δ) budgets."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from privtrain.errors import FailedPrecondition, NotFound
from privtrain.platform.db._convert import check_json_text, check_privacy_amount, dataset_record
from privtrain.platform.db.budget import BUDGET_TOLERANCE, committed
from privtrain.platform.db.errors import AlreadyExists
from privtrain.platform.db.models import Dataset, utcnow
from privtrain.platform.db.records import DatasetRecord
from privtrain.platform.db.transaction import Transactions


class DatasetRepository:
    """Create, look up and re-budget datasets."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def create(
        self,
        *,
        name: str,
        owner_common_name: str,
        storage_path: str,
        sha256: str,
        size_bytes: int,
        rows: int,
        manifest_json: str,
        epsilon_budget: float,
        delta_budget: float,
        dataset_id: str | None = None,
    ) -> DatasetRecord:
        """Register a stored dataset.

        Parameters
        ----------
        dataset_id : str, optional
            Id to use (the caller may have named the stored file after it);
            a new UUID by default.
        name : str
            Unique dataset name.
        owner_common_name : str
            Common name of the data owner's client certificate.
        storage_path, sha256, size_bytes, rows
            Where the anonymized file lies, its SHA-256 (hex), size in bytes
            and row count.
        manifest_json : str
            The verified anonymization manifest, a JSON object.
        epsilon_budget, delta_budget : float
            Total privacy budget (ε, δ) for every job on this dataset.

        Returns
        -------
        DatasetRecord

        Raises
        ------
        AlreadyExists
            A dataset with ``name`` exists.
        InvalidInput
            Malformed manifest or budget.
        """
        check_json_text(manifest_json, "dataset manifest")
        epsilon = check_privacy_amount(epsilon_budget, "epsilon budget")
        delta = check_privacy_amount(delta_budget, "delta budget")
        row = Dataset(
            id=dataset_id or str(uuid.uuid4()),
            name=name,
            owner_common_name=owner_common_name,
            storage_path=storage_path,
            sha256=sha256,
            size_bytes=size_bytes,
            rows=rows,
            manifest_json=manifest_json,
            epsilon_budget=epsilon,
            delta_budget=delta,
            created_at=utcnow(),
        )
        with self._tx.transaction() as session:
            if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
                raise AlreadyExists(f"dataset {name!r} already exists; choose another name")
            try:
                # A savepoint, so a concurrent insert of the same name (possible
                # on PostgreSQL) leaves the surrounding transaction usable.
                with session.begin_nested():
                    session.add(row)
            except IntegrityError as exc:
                raise AlreadyExists(
                    f"dataset {name!r} already exists; choose another name"
                ) from exc
            return dataset_record(row)

    def get(self, dataset_id: str) -> DatasetRecord:
        """Return the dataset with ``dataset_id``; raise NotFound if there is none."""
        with self._tx.read() as session:
            row = session.get(Dataset, dataset_id)
            if row is None:
                raise NotFound(f"dataset {dataset_id!r} not found")
            return dataset_record(row)

    def get_by_name(self, name: str) -> DatasetRecord:
        """Return the dataset called ``name``; raise NotFound if there is none."""
        with self._tx.read() as session:
            row = session.scalar(select(Dataset).where(Dataset.name == name))
            if row is None:
                raise NotFound(f"dataset named {name!r} not found")
            return dataset_record(row)

    def list(self) -> list[DatasetRecord]:
        """Return every dataset, oldest first."""
        with self._tx.read() as session:
            rows = session.scalars(select(Dataset).order_by(Dataset.created_at, Dataset.id))
            return [dataset_record(row) for row in rows]

    def set_budget(self, dataset_id: str, epsilon: float, delta: float) -> DatasetRecord:
        """Change a dataset's total budget (ε, δ).

        Raises
        ------
        NotFound
            No such dataset.
        FailedPrecondition
            The new budget is below what jobs already reserved or spent.
        """
        epsilon = check_privacy_amount(epsilon, "epsilon budget")
        delta = check_privacy_amount(delta, "delta budget")
        with self._tx.transaction() as session:
            # Row lock on PostgreSQL, so a concurrent submit cannot reserve
            # against the old budget while we shrink it.
            row = session.scalar(select(Dataset).where(Dataset.id == dataset_id).with_for_update())
            if row is None:
                raise NotFound(f"dataset {dataset_id!r} not found")
            used_epsilon, used_delta = committed(session, dataset_id)
            if epsilon + BUDGET_TOLERANCE < used_epsilon or delta + BUDGET_TOLERANCE < used_delta:
                raise FailedPrecondition(
                    f"dataset {row.name!r}: new budget (epsilon={epsilon:g}, delta={delta:g}) is "
                    f"below what jobs already reserved or spent "
                    f"(epsilon={used_epsilon:g}, delta={used_delta:g})"
                )
            row.epsilon_budget = epsilon
            row.delta_budget = delta
            return dataset_record(row)
