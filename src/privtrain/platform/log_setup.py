"""The server's own log: privtrain's logger, its level and its format (text or JSON lines).

Opacus calls ``logging.basicConfig`` when it is imported, which makes any later
``basicConfig`` of ours a no-op (and would leave privtrain's INFO lines unshown). So
the ``privtrain`` logger gets a handler of its own here and does not propagate to the
root logger: whatever a library does to the root, our lines come out once, as configured.

What is logged never carries private values: job state changes (with the trainer's
message, not the worker's), admissions (public plan figures), alerts firing and
resolving (kind and job), refusals (status code and message) and revocations. Losses,
exact counts, row values and worker errors stay in the operator's places (the API's
monitoring figures, ``jobs/<id>/worker.log``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import IO

LOGGER_NAME = "privtrain"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601 UTC, ms), ``level``, ``logger``,
    ``message``, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text",
                      stream: IO[str] | None = None) -> logging.Handler:
    """Send privtrain's log records at ``level`` and above to ``stream`` (stderr) as ``fmt``.

    Replaces a handler an earlier call installed, so calling it again changes the setup
    rather than doubling every line.

    Parameters
    ----------
    level : {"DEBUG", "INFO", "WARNING", "ERROR"}
    fmt : {"text", "json"}
        ``text``: ``time LEVEL logger: message``; ``json``: one JSON object per line.
    stream : IO[str], optional
        Where lines go (stderr by default).

    Returns
    -------
    logging.Handler
        The installed handler.

    Raises
    ------
    ValueError
        An unknown level or format.
    """
    if level.upper() not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if getattr(h, "_privtrain", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._privtrain = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler
