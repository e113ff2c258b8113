"""Turns detector transitions into stored alerts and job events."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from privtrain.monitoring.alerts import AlertKind, AlertState, AlertTransition
from privtrain.platform.db.records import AlertRecord
from privtrain.platform.db.repositories import Database
from privtrain.platform.events import EventHub

log = logging.getLogger(__name__)


def alert_payload(alert: AlertRecord) -> dict[str, Any]:
    """JSON-able form of a stored alert, as streamed in job events."""
    return {
        "id": str(alert.id),
        "job_id": alert.job_id or "",
        "kind": alert.kind.value,
        "state": alert.state.value,
        "message": alert.message,
        "fired_at": alert.fired_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


class AlertSink:
    """Stores alert transitions, streams them as job events and logs them."""

    def __init__(self, db: Database, hub: EventHub) -> None:
        self._db = db
        self._hub = hub

    def apply(self, transitions: Iterable[AlertTransition]) -> None:
        """Persist each FIRING/RESOLVED transition; repeated ones are idempotent."""
        for t in transitions:
            now = datetime.now(timezone.utc)
            if t.state is AlertState.FIRING:
                stored: AlertRecord | None = self._db.alerts.fire(
                    t.job_id, t.kind, t.message, t.details, now
                )
                # Kind and job only: the message may carry exact figures (a loss, a batch's
                # size, a throughput), which are for admins through the API, not for the log.
                log.warning("alert FIRING %s job=%s", t.kind.value, t.job_id)
            else:
                stored = self._db.alerts.resolve(t.job_id, t.kind, now)
                if stored is not None:
                    log.info("alert RESOLVED %s job=%s", t.kind.value, t.job_id)
            if stored is not None:
                self._hub.publish(t.job_id, "alert", alert_payload(stored))

    def fire(self, job_id: str, kind: AlertKind, message: str, **details: Any) -> None:
        """Raise one alert about a job (idempotent while it is FIRING)."""
        self.apply([AlertTransition(job_id=job_id, kind=kind, state=AlertState.FIRING,
                                    message=message, at=0.0, details=details)])

    def resolve(self, job_id: str, kinds: Iterable[AlertKind], message: str) -> None:
        """Resolve the job's alerts of these kinds that are FIRING (the others: nothing)."""
        self.apply([AlertTransition(job_id=job_id, kind=kind, state=AlertState.RESOLVED,
                                    message=message, at=0.0) for kind in kinds])
