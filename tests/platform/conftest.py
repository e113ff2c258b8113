"""Fixtures: the anonymized Adult file (once per session) and a fresh server per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import AnonymizedAdult, RunningServer, make_adult, start_server

from privtrain.monitoring.detectors.stall import StallConfig


@pytest.fixture(scope="session")
def adult(tmp_path_factory: pytest.TempPathFactory) -> AnonymizedAdult:
    """UCI Adult anonymized with the demo policy, signed by a fresh PKI's data owner."""
    return make_adult(tmp_path_factory.mktemp("adult"))


@pytest.fixture
def running(tmp_path: Path, adult: AnonymizedAdult) -> Iterator[RunningServer]:
    """A server for one test, with stall thresholds short enough to drill."""
    rs = start_server(tmp_path / "home", adult.pki, adult.bundles,
                      stall=StallConfig(factor=10.0, floor_s=1.5, first_step_s=60.0),
                      cancel_grace_s=5.0)
    yield rs
    rs.server.stop(1.0)
