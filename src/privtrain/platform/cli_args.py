"""What the ``privtrain`` commands share: argument types, the client options and
connection, the operator's options for the server's home, and printing a result as
text or JSON."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from privtrain.errors import InvalidInput

DEFAULT_PKI = Path(os.environ.get("PRIVTRAIN_PKI", "pki"))
DEFAULT_BUNDLE = Path(os.environ.get("PRIVTRAIN_BUNDLE", "bundle"))
DEFAULT_HOME = Path("privtrain-home")
DEFAULT_SERVER = os.environ.get("PRIVTRAIN_SERVER", "127.0.0.1:50051")


def int_at_least(low: int, high: int = 2**31 - 1) -> Any:
    """An argparse type: a whole number in [low, high], else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0, else a one-line usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def iso_time(text: str) -> dt.datetime:
    """An argparse type: an ISO 8601 date or time (UTC unless it names a zone)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time, e.g. 2026-12-06 or 2026-12-06T09:30") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


POSITIVE = int_at_least(1)
PORT = int_at_least(0, 65535)


def parse_target(target: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:PORT``) and check the port is 1..65535.

    Raises
    ------
    InvalidInput
        Naming the value and the expected form.
    """
    host, sep, port = target.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    usage = f"--server {target!r} must be HOST:PORT, e.g. 127.0.0.1:50051 or [::1]:50051"
    if not sep or not host or not port.isdigit() or not (1 <= int(port) <= 65535):
        raise InvalidInput(usage)
    if ":" in host:
        # An IPv6 address needs brackets, or its last group would read as the port.
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidInput(usage) from None
        if not bracketed:
            raise InvalidInput(usage)
    return host, int(port)


def add_connection_args(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """``--server``, ``--bundle`` and ``--json``, the options of every client command."""
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help="HOST:PORT of the server (env PRIVTRAIN_SERVER)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                        help="your client bundle from `privtrain certs issue` (env PRIVTRAIN_BUNDLE)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def connect(args: argparse.Namespace) -> Any:
    """A :class:`~privtrain.platform.client.PrivtrainClient` to ``--server`` with ``--bundle``."""
    from privtrain.platform.client import PrivtrainClient

    parse_target(args.server)
    return PrivtrainClient(args.server, args.bundle)


def add_home_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--home`` and ``--db-url``: the server's own database, for an operator's command on the
    server's machine. Not ``required``: without them the command asks the server (admin)."""
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME if required else None,
                        help="the server's home (its SQLite database)"
                             + ("" if required else "; without it (and --db-url) the running "
                                "server is asked, with --server and an admin --bundle"))
    parser.add_argument("--db-url", default=None, help="SQLAlchemy URL (default: SQLite in --home)")


def is_local(args: argparse.Namespace) -> bool:
    """Whether an operator's command works on the server's home rather than through the API."""
    return args.home is not None or args.db_url is not None


def open_home_database(args: argparse.Namespace) -> Any:
    """The server's migrated :class:`~privtrain.platform.db.Database` named by ``--home`` /
    ``--db-url``.

    Raises
    ------
    FailedPrecondition
        The database is unreadable or not at the latest migration.
    """
    from privtrain.platform.config import default_database_url
    from privtrain.platform.db.migrate import check_migrated
    from privtrain.platform.db.repositories import Database

    url = args.db_url or default_database_url(args.home or DEFAULT_HOME)
    check_migrated(url)
    return Database(url)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as one JSON object with ``--json``, else ``text``."""
    print(json.dumps(data, sort_keys=True) if args.json else text)


_INT64_TYPES = frozenset({3, 4, 6, 16, 18})  # INT64, UINT64, FIXED64, SFIXED64, SINT64


def message_dict(message: Any) -> dict[str, Any]:
    """A message as a JSON-able dict; 64-bit integers stay numbers (proto3 JSON makes them strings)."""
    from google.protobuf.json_format import MessageToDict

    data: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return _int64_as_numbers(message, data)


def _int64_as_numbers(message: Any, data: dict[str, Any]) -> dict[str, Any]:
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        if field.type in _INT64_TYPES:
            value = data[field.name]
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            value = getattr(message, field.name)
            if isinstance(data[field.name], list):
                data[field.name] = [_int64_as_numbers(m, d) for m, d in zip(value, data[field.name], strict=True)]
            elif isinstance(data[field.name], dict):
                data[field.name] = _int64_as_numbers(value, data[field.name])
    return data
