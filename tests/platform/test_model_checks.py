"""A submission's model checks on threads of their own (issue 12): busy or too slow is
RESOURCE_EXHAUSTED at once, and a slow check keeps its place until it ends."""

from __future__ import annotations

import threading
import time

import pytest

from privtrain.errors import InvalidInput, ResourceExhausted
from privtrain.platform.model_checks import ModelChecks


def test_results_and_errors_pass_through() -> None:
    checks = ModelChecks(workers=1, timeout_s=5)
    assert checks.run(lambda: 42) == 42

    def refuse() -> None:
        raise InvalidInput("model is not DP-compatible")

    with pytest.raises(InvalidInput, match="not DP-compatible"):
        checks.run(refuse)


def test_a_slow_check_is_refused_after_the_limit_and_keeps_its_place() -> None:
    checks = ModelChecks(workers=1, timeout_s=0.2)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(ResourceExhausted, match="took longer than 0.2 s"):
        checks.run(lambda: release.wait(10))
    assert time.monotonic() - started < 2
    with pytest.raises(ResourceExhausted, match="checking 1 other submissions' models"):
        checks.run(lambda: 1)  # the slow one still runs: refused at once, not queued
    release.set()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert checks.run(lambda: 2) == 2
            break
        except ResourceExhausted:
            assert time.monotonic() < deadline
            time.sleep(0.05)
