"""Datasets, and the privacy ledger each one draws on."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from privtrain.errors import FailedPrecondition, NotFound, PermissionDenied, shown
from privtrain.platform.db._convert import check_json_text, dataset_record
from privtrain.platform.db.errors import AlreadyExists
from privtrain.platform.db.models import Dataset, Job, LedgerEntry, PrivacyLedger, utcnow
from privtrain.platform.db.records import DatasetRecord, NewDataset
from privtrain.platform.db.transaction import Transactions


class DatasetRepository:
    """Create and look up datasets; bind each to the ledger of its source."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def create(self, new: NewDataset, *, epsilon_budget: float, delta_budget: float,
               accountant: str = "prv") -> tuple[DatasetRecord, bool]:
        """Register a stored dataset on its source's ledger, or on a new one.

        A dataset joins the ledger of an earlier dataset of the same owner when its
        manifest names that one's manifest as the previous release
        (``previous_manifest_sha256``) or when both were anonymized from the same input
        file (``input_sha256``): the same people draw on one budget. The joined ledger
        keeps its budget, which must be the one asked for.

        Parameters
        ----------
        new : NewDataset
            What the upload verified and stored.
        epsilon_budget, delta_budget : float
            The budget of a new ledger (or the joined ledger's, restated).
        accountant : str
            A new ledger's accountant.

        Returns
        -------
        (DatasetRecord, bool)
            The dataset, and True when it opened a new ledger.

        Raises
        ------
        AlreadyExists
            The name is taken, or the same file is already a dataset.
        PermissionDenied
            The source belongs to another owner's ledger.
        FailedPrecondition
            The joined ledger has another budget.
        """
        check_json_text(new.manifest_json, "dataset manifest")
        with self._tx.transaction() as session:
            if session.scalar(select(Dataset.id).where(Dataset.name == new.name)) is not None:
                raise AlreadyExists(f"dataset {new.name!r} already exists; choose another name")
            same = session.scalar(select(Dataset).where(Dataset.sha256 == new.sha256))
            if same is not None:
                raise AlreadyExists(
                    f"this file is already uploaded as dataset {same.name!r}: train on that one "
                    "(a copy would not get a budget of its own)"
                )
            related = self._related(session, new)
            others = sorted({d.owner_common_name for d in related} - {new.owner_common_name})
            if others:
                raise PermissionDenied(
                    "this release comes from a source whose budget belongs to another data owner; "
                    "it cannot be uploaded under your name"
                )
            ledger_id, opened = None, False
            if related:
                ledger = session.get(PrivacyLedger, related[0].ledger_id)
                assert ledger is not None
                if (abs(ledger.epsilon_budget - epsilon_budget) > 1e-12
                        or abs(ledger.delta_budget - delta_budget) > 1e-18):
                    raise FailedPrecondition(
                        f"this release shares the privacy budget of dataset {related[0].name!r} (same "
                        f"source): epsilon={ledger.epsilon_budget:g}, delta={ledger.delta_budget:g}; "
                        "upload with that budget, or change it with `privtrain dataset budget`"
                    )
                ledger_id = ledger.id
            else:
                from privtrain.platform.db.budget import BudgetLedger

                ledger_id = BudgetLedger(self._tx).create(
                    session, owner_common_name=new.owner_common_name, epsilon_budget=epsilon_budget,
                    delta_budget=delta_budget, accountant=accountant)
                opened = True
            row = Dataset(
                id=new.dataset_id or str(uuid.uuid4()), name=new.name,
                owner_common_name=new.owner_common_name, ledger_id=ledger_id,
                storage_path=new.storage_path, sha256=new.sha256,
                manifest_sha256=new.manifest_sha256, input_sha256=new.input_sha256,
                size_bytes=new.size_bytes, rows=new.rows, manifest_json=new.manifest_json,
                split_json=new.split_json, published_train_rows=new.published_train_rows,
                published_test_rows=new.published_test_rows, created_at=utcnow(),
            )
            try:
                # A savepoint, so a concurrent insert of the same name (possible
                # on PostgreSQL) leaves the surrounding transaction usable.
                with session.begin_nested():
                    session.add(row)
            except IntegrityError as exc:
                raise AlreadyExists(f"dataset {new.name!r} already exists; choose another name") from exc
            return dataset_record(row), opened

    @staticmethod
    def _related(session: object, new: NewDataset) -> list[Dataset]:
        conditions = []
        if new.input_sha256:
            conditions.append(Dataset.input_sha256 == new.input_sha256)
        if new.previous_manifest_sha256:
            conditions.append(Dataset.manifest_sha256 == new.previous_manifest_sha256)
        if not conditions:
            return []
        query = select(Dataset).where(or_(*conditions)).order_by(Dataset.created_at, Dataset.id)
        return list(session.scalars(query))  # type: ignore[attr-defined]

    def remove_unused(self, dataset_id: str) -> None:
        """Delete a dataset no job ever used, with its entries (and its ledger if it has no other
        dataset): the undo of :meth:`create` when the upload fails afterwards."""
        with self._tx.transaction() as session:
            row = session.get(Dataset, dataset_id)
            if row is None:
                return
            if session.scalar(select(Job.id).where(Job.dataset_id == dataset_id).limit(1)) is not None:
                raise FailedPrecondition(f"dataset {dataset_id} has jobs and cannot be removed")
            session.execute(delete(LedgerEntry).where(LedgerEntry.dataset_id == dataset_id))
            ledger_id = row.ledger_id
            session.delete(row)
            session.flush()
            if session.scalar(select(Dataset.id).where(Dataset.ledger_id == ledger_id).limit(1)) is None:
                session.execute(delete(LedgerEntry).where(LedgerEntry.ledger_id == ledger_id))
                session.execute(delete(PrivacyLedger).where(PrivacyLedger.id == ledger_id))

    def withdraw(self, dataset_id: str) -> DatasetRecord:
        """Mark a dataset withdrawn (compare-and-set: once); its ledger and entries stay.

        Raises
        ------
        NotFound
            No such dataset.
        FailedPrecondition
            It was already withdrawn.
        """
        with self._tx.transaction() as session:
            changed = session.execute(
                update(Dataset).where(Dataset.id == dataset_id, Dataset.withdrawn_at.is_(None))
                .values(withdrawn_at=utcnow()).execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            row = session.get(Dataset, dataset_id)
            if row is None:
                raise NotFound(f"dataset {shown(dataset_id)} not found")
            if not changed:
                raise FailedPrecondition(f"dataset {dataset_id} is already withdrawn")
            return dataset_record(row)

    def get(self, dataset_id: str) -> DatasetRecord:
        """Return the dataset with ``dataset_id``; raise NotFound if there is none."""
        with self._tx.read() as session:
            row = session.get(Dataset, dataset_id)
            if row is None:
                raise NotFound(f"dataset {shown(dataset_id)} not found")
            return dataset_record(row)

    def get_by_name(self, name: str) -> DatasetRecord:
        """Return the dataset called ``name``; raise NotFound if there is none."""
        with self._tx.read() as session:
            row = session.scalar(select(Dataset).where(Dataset.name == name))
            if row is None:
                raise NotFound(f"dataset named {shown(name)} not found")
            return dataset_record(row)

    def list(self) -> list[DatasetRecord]:
        """Return every dataset, oldest first."""
        with self._tx.read() as session:
            rows = session.scalars(select(Dataset).order_by(Dataset.created_at, Dataset.id))
            return [dataset_record(row) for row in rows]

    def on_ledger(self, ledger_id: str) -> list[DatasetRecord]:
        """Every dataset drawing on a ledger, oldest first."""
        with self._tx.read() as session:
            rows = session.scalars(select(Dataset).where(Dataset.ledger_id == ledger_id)
                                   .order_by(Dataset.created_at, Dataset.id))
            return [dataset_record(row) for row in rows]
