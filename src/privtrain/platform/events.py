"""Job event log with wake-ups: the database is the record, a condition the doorbell.

Every event is appended to the database first, so a watcher that connects late
(or after a server restart) replays the whole history; live watchers are woken
as soon as something new is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from privtrain.platform.db.records import EventRecord
from privtrain.platform.db.repositories import Database


class EventHub:
    """Append job events and wait for new ones."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cond = threading.Condition()

    def publish(self, job_id: str, kind: str, payload: dict[str, Any]) -> None:
        """Store one event and wake the watchers."""
        self.publish_many([(job_id, kind, payload)])

    def publish_many(self, events: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Store events in one transaction, then wake the watchers."""
        if not events:
            return
        self._db.events.append_many(events)
        with self._cond:
            self._cond.notify_all()

    def notify(self) -> None:
        """Wake the watchers after events were appended in a caller's own transaction."""
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, job_id: str, after_id: int, timeout_s: float) -> list[EventRecord]:
        """Events of ``job_id`` with id > ``after_id``; blocks up to ``timeout_s`` seconds for one."""
        with self._cond:
            events = self._db.events.since(job_id, after_id)
            if events:
                return events
            # Appends happen before notify, and we read under the lock, so no wake-up is lost.
            self._cond.wait(timeout_s)
        return self._db.events.since(job_id, after_id)
