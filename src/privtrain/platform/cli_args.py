"""What the ``privtrain`` commands share: argument types, the client options and
connection, and printing a result as text or JSON."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from privtrain.errors import InvalidInput

DEFAULT_PKI = Path(os.environ.get("PRIVTRAIN_PKI", "pki"))
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


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """``--server``, ``--pki`` and ``--json``, the options of every client command."""
    parser.add_argument("--server", default=DEFAULT_SERVER,
                        help="HOST:PORT of the server (env PRIVTRAIN_SERVER)")
    parser.add_argument("--pki", type=Path, default=DEFAULT_PKI,
                        help="folder made by `privtrain certs init` (env PRIVTRAIN_PKI)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def connect(args: argparse.Namespace, role: str) -> Any:
    """A :class:`~privtrain.platform.client.PrivtrainClient` for ``--server`` as ``role``."""
    from privtrain.platform.client import PrivtrainClient

    parse_target(args.server)
    return PrivtrainClient(args.server, args.pki, role)


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
