"""The storage interface the rest of privtrain uses: :class:`Database`.

Callers get plain methods and frozen records; SQLAlchemy never leaves this
package, so switching SQLite for PostgreSQL is a URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from sqlalchemy.orm import Session

from privtrain.platform.db.alerts import AlertRepository
from privtrain.platform.db.audit_log import AuditLog
from privtrain.platform.db.budget import BudgetLedger
from privtrain.platform.db.certificates import CertificateRegistry
from privtrain.platform.db.datasets import DatasetRepository
from privtrain.platform.db.engine import make_engine
from privtrain.platform.db.events import EventRepository
from privtrain.platform.db.grants import GrantRepository
from privtrain.platform.db.jobs import JobRepository
from privtrain.platform.db.leases import JobLeases
from privtrain.platform.db.metrics import MetricRepository
from privtrain.platform.db.transaction import Transactions


class Database:
    """All repositories over one database.

    Parameters
    ----------
    url : str
        SQLAlchemy URL of an already migrated database (see
        :func:`privtrain.platform.db.migrate.upgrade`).

    Attributes
    ----------
    datasets : DatasetRepository
    jobs : JobRepository
    leases : JobLeases
        The job queue of the worker hosts.
    budget : BudgetLedger
    events : EventRepository
    metrics : MetricRepository
    alerts : AlertRepository
    grants : GrantRepository
    certificates : CertificateRegistry
    audit_log : AuditLog
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        self._tx = Transactions(self._engine)
        self.datasets = DatasetRepository(self._tx)
        self.jobs = JobRepository(self._tx)
        self.leases = JobLeases(self._tx)
        self.budget = BudgetLedger(self._tx)
        self.events = EventRepository(self._tx)
        self.metrics = MetricRepository(self._tx)
        self.alerts = AlertRepository(self._tx)
        self.grants = GrantRepository(self._tx)
        self.certificates = CertificateRegistry(self._tx)
        self.audit_log = AuditLog(self._tx)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Group repository calls made in this thread into one write transaction.

        Example: ``with db.transaction(): db.jobs.transition(...);
        db.budget.settle(...)`` commits both or neither. Keep it short: on
        SQLite it holds the database's only write lock.

        Yields
        ------
        Session
            The underlying session, for code inside ``privtrain.platform.db``
            and tests; other code should only call repositories.
        """
        with self._tx.transaction() as session:
            yield session

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
