"""The server's own log: shown at INFO although Opacus configured the root logger first."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from privtrain.platform.log_setup import LOGGER_NAME, configure_logging


@pytest.fixture
def restore_logger() -> Iterator[None]:
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_info_lines_show_once_after_opacus_configured_the_root_logger(restore_logger: None) -> None:
    import opacus  # noqa: F401 - its import calls logging.basicConfig

    root_handlers = list(logging.getLogger().handlers)
    buffer = io.StringIO()
    configure_logging("INFO", "text", stream=buffer)
    configure_logging("INFO", "text", stream=buffer)  # again: replaced, not doubled
    logging.getLogger("privtrain.platform.runner").info("job j1 RUNNING in worker pid 7")
    logging.getLogger("privtrain.platform.runner").debug("not shown at INFO")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO privtrain.platform.runner: job j1 RUNNING "
                                                 "in worker pid 7")
    assert logging.getLogger().handlers == root_handlers


def test_json_lines_and_level(restore_logger: None) -> None:
    buffer = io.StringIO()
    configure_logging("WARNING", "json", stream=buffer)
    log = logging.getLogger("privtrain.platform.alerting")
    log.info("alert RESOLVED NO_PROGRESS job=j1")
    log.warning("alert FIRING NO_PROGRESS job=j1")
    (line,) = buffer.getvalue().splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"], record["message"]) == (
        "WARNING", "privtrain.platform.alerting", "alert FIRING NO_PROGRESS job=j1")
    assert record["time"].endswith("+00:00")
    with pytest.raises(ValueError):
        configure_logging("LOUD")
