"""Clocks: the monitor reads time only through one, so tests drive a fake one."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """``time.monotonic()`` (seconds)."""

    def now(self) -> float:
        """Seconds since an arbitrary origin; never goes back."""
        return time.monotonic()


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        """Current fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
