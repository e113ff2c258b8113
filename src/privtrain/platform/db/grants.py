"""Which trainers a dataset's owner allowed to train on it."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from privtrain.errors import NotFound, shown
from privtrain.platform.db.models import Dataset, DatasetGrant, utcnow
from privtrain.platform.db.transaction import Transactions


class GrantRepository:
    """Grant, revoke and look up trainers per dataset."""

    def __init__(self, tx: Transactions) -> None:
        self._tx = tx

    def grant(self, dataset_id: str, trainer: str, *, by: str) -> bool:
        """Allow ``trainer`` on the dataset; returns False when they already were.

        Raises
        ------
        NotFound
            No such dataset.
        """
        with self._tx.transaction() as session:
            if session.get(Dataset, dataset_id) is None:
                raise NotFound(f"dataset {shown(dataset_id)} not found")
            if session.get(DatasetGrant, (dataset_id, trainer)) is not None:
                return False
            try:
                with session.begin_nested():
                    session.add(DatasetGrant(dataset_id=dataset_id, trainer_common_name=trainer,
                                             granted_by=by, granted_at=utcnow()))
            except IntegrityError:  # a concurrent grant of the same trainer won
                return False
            return True

    def revoke(self, dataset_id: str, trainer: str) -> bool:
        """Withdraw ``trainer``'s grant; returns False when they held none."""
        with self._tx.transaction() as session:
            result = session.execute(delete(DatasetGrant).where(
                DatasetGrant.dataset_id == dataset_id, DatasetGrant.trainer_common_name == trainer))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def trainers(self, dataset_id: str) -> list[str]:
        """The trainers granted on a dataset, by name."""
        with self._tx.read() as session:
            return list(session.scalars(select(DatasetGrant.trainer_common_name)
                                        .where(DatasetGrant.dataset_id == dataset_id)
                                        .order_by(DatasetGrant.trainer_common_name)))

    def is_granted(self, dataset_id: str, trainer: str) -> bool:
        """Whether ``trainer`` may train on the dataset."""
        with self._tx.read() as session:
            return session.get(DatasetGrant, (dataset_id, trainer)) is not None

    def datasets_of(self, trainer: str) -> set[str]:
        """Ids of the datasets ``trainer`` is granted on."""
        with self._tx.read() as session:
            return set(session.scalars(select(DatasetGrant.dataset_id)
                                       .where(DatasetGrant.trainer_common_name == trainer)))
