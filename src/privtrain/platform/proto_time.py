"""Aware datetimes as protobuf Timestamps: one helper every conversion module shares, without
the trainer's imports that :mod:`privtrain.platform.convert` needs."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from privtrain.errors import InvalidInput


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for an aware datetime (None stays None)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def from_timestamp(value: Timestamp, field: str) -> datetime:
    """A caller's Timestamp as an aware UTC datetime.

    Raises
    ------
    InvalidInput
        Seconds outside years 1..9999 or nanos outside [0, 1e9) (RFC 3339's range).
    """
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidInput(f"{field} is not a valid time: {exc}") from None
