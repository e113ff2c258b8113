"""Persistence: SQLAlchemy models, migrations and repositories.

Import :class:`Database` and the records from here; nothing outside this
package should import SQLAlchemy.
"""

from privtrain.platform.db.errors import AlreadyExists, InvalidTransition, PrivacyBudgetExceeded
from privtrain.platform.db.migrate import downgrade, upgrade
from privtrain.platform.db.records import (
    AlertRecord,
    DatasetRecord,
    EventRecord,
    JobRecord,
    NewDataset,
    StepMetric,
)
from privtrain.platform.db.repositories import Database

__all__ = [
    "AlertRecord",
    "AlreadyExists",
    "Database",
    "DatasetRecord",
    "EventRecord",
    "InvalidTransition",
    "JobRecord",
    "NewDataset",
    "PrivacyBudgetExceeded",
    "StepMetric",
    "downgrade",
    "upgrade",
]
