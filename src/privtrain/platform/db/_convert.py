"""ORM row -> frozen record conversions, and input checks shared by repositories."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from privtrain.errors import InvalidInput
from privtrain.platform.db.models import Alert, Dataset, Job, JobEvent
from privtrain.platform.db.records import AlertRecord, DatasetRecord, EventRecord, JobRecord
from privtrain.platform.job_states import AlertKind, AlertState, JobState


def dataset_record(row: Dataset) -> DatasetRecord:
    return DatasetRecord(
        id=row.id,
        name=row.name,
        owner_common_name=row.owner_common_name,
        ledger_id=row.ledger_id,
        storage_path=row.storage_path,
        sha256=row.sha256,
        manifest_sha256=row.manifest_sha256,
        input_sha256=row.input_sha256,
        size_bytes=row.size_bytes,
        rows=row.rows,
        manifest_json=row.manifest_json,
        split_json=row.split_json,
        published_train_rows=row.published_train_rows,
        published_test_rows=row.published_test_rows,
        created_at=row.created_at,
        withdrawn_at=row.withdrawn_at,
    )


def job_record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        request_id=row.request_id,
        dataset_id=row.dataset_id,
        submitter_common_name=row.submitter_common_name,
        kind=row.kind,
        spec_json=row.spec_json,
        audit_json=row.audit_json,
        plan_json=row.plan_json,
        state=JobState(row.state),
        error=row.error,
        error_detail=row.error_detail,
        result_json=row.result_json,
        worker_pid=row.worker_pid,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        attempts=row.attempts,
        failed_attempts=row.failed_attempts,
        cancel_requested_at=row.cancel_requested_at,
        steps_done=row.steps_done,
        releases_done=row.releases_done,
    )


def event_record(row: JobEvent) -> EventRecord:
    return EventRecord(
        id=row.id,
        job_id=row.job_id,
        kind=row.kind,
        payload=json.loads(row.payload_json),
        created_at=row.created_at,
    )


def alert_record(row: Alert) -> AlertRecord:
    return AlertRecord(
        id=row.id,
        job_id=row.job_id,
        kind=AlertKind(row.kind),
        state=AlertState(row.state),
        message=row.message,
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        details=json.loads(row.details_json),
    )


def dumps(value: Any, what: str) -> str:
    """Serialize ``value`` as strict JSON (no NaN), or raise InvalidInput naming ``what``."""
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serializable: {exc}") from exc


def check_json_text(text: str, what: str) -> None:
    """Raise InvalidInput unless ``text`` parses as a JSON object."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(parsed).__name__}")


def check_privacy_amount(value: float, what: str) -> float:
    """Return ``value`` as float, or raise InvalidInput unless finite and >= 0."""
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise InvalidInput(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def check_aware(value: datetime, what: str) -> datetime:
    """Return ``value``, or raise InvalidInput if it has no time zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value
