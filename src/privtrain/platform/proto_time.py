"""Aware datetimes as protobuf Timestamps: one helper every conversion module shares, without
the trainer's imports that :mod:`privtrain.platform.convert` needs."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for an aware datetime (None stays None)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts
