"""Exception hierarchy shared by every area.

Each area raises its own subclasses; the gRPC interceptor and the CLI map
them to a status code or to one line on stderr, so a user mistake never
surfaces as a traceback. ``grpc_code`` names the ``grpc.StatusCode`` member
the server answers with.
"""

from __future__ import annotations


class PrivtrainError(Exception):
    """Base class of every error privtrain raises on purpose."""

    grpc_code = "INTERNAL"


class InvalidInput(PrivtrainError):
    """The caller sent something malformed (bad field, bad file, bad policy)."""

    grpc_code = "INVALID_ARGUMENT"


class NotFound(PrivtrainError):
    """A named dataset, job or file does not exist."""

    grpc_code = "NOT_FOUND"


class FailedPrecondition(PrivtrainError):
    """The request is well-formed but the system is not in a state to accept it."""

    grpc_code = "FAILED_PRECONDITION"


class PermissionDenied(PrivtrainError):
    """The authenticated caller's role may not do this."""

    grpc_code = "PERMISSION_DENIED"


class Unauthenticated(PrivtrainError):
    """The caller could not be identified from a verified certificate."""

    grpc_code = "UNAUTHENTICATED"


class ResourceExhausted(PrivtrainError):
    """A configured limit (message size, queue length) was exceeded."""

    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(PrivtrainError):
    """The server cannot do it now (its storage failed: disk full, I/O error); retry later."""

    grpc_code = "UNAVAILABLE"


SHOWN_CHARS = 80
"""Most characters of a caller's value an error message quotes (see :func:`shown`)."""


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    A message quotes what it refuses so its reader can find it, but never more than a
    short prefix: a cell can be megabytes long, and a 20 kB id echoed back would overflow
    a gRPC call's trailer (and fill the log).

    >>> print(shown("x" * 1000, 30))
    'xxxxxxxxxxxxxx... (1,000 chars)
    """
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(str(value)):,} chars)"
