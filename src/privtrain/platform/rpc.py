"""Role checks, error mapping, refusal logging and the audit trail for every RPC handler.

Each handler declares the roles allowed to call it; the caller's identity is
read from its verified client certificate (never from metadata) and passed in.
A :class:`~privtrain.errors.PrivtrainError` becomes its status code with its
message (cut to :data:`MAX_DETAILS` characters); a storage failure (disk full, I/O
error, the database refusing work) becomes UNAVAILABLE with words that quote nothing
stored; anything else is a bug: INTERNAL without leaking internals, logged with its
traceback. Every refusal is one log line with its status code (INFO; ERROR for a
storage failure, with the error itself for the operator).

A handler declared with ``audit="<action>"`` changes state or releases something:
each call, whatever its outcome, is appended to the audit log (who, action, target,
``ok`` or the status code) through the servicer's ``audit_trail`` attribute
(:class:`~privtrain.platform.audit_trail.AuditTrail`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from privtrain.errors import PermissionDenied, PrivtrainError, Unavailable
from privtrain.platform.audit_trail import OK, UNIDENTIFIED, Actor
from privtrain.platform.db.errors import storage_failure
from privtrain.secure_transport.roles import PeerIdentity, Role, peer_identity

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
Target = Callable[[Any, Any], str]
"""``(request, reply or None) -> target`` of an audited call; for a client stream the
request is its first message (None when the stream was empty)."""

AUDITED_ACTIONS: dict[str, str] = {}
"""Method name (e.g. ``SubmitJob``) to audit action (``job.submit``), filled by :func:`allow`."""
ALLOWED_ROLES: dict[str, frozenset[Role]] = {}
"""Method name to the roles that may call it, filled by :func:`allow`."""
MAX_TARGET = 200
"""Longest audit target (characters) recorded for a call."""
MAX_DETAILS = 1000
"""Longest status message (characters): gRPC refuses a trailer past 16 KiB, and a message
quotes at most short prefixes of what the caller sent (:func:`privtrain.errors.shown`)."""


class StorageUnavailable(Unavailable):
    """A storage failure as the caller sees it; ``cause`` is the error, for the log only."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = f"{type(cause).__name__}: {_first_line(cause)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def public_error(exc: BaseException) -> PrivtrainError | None:
    """The error as its caller may see it: ours as it is, a storage failure as UNAVAILABLE
    (:class:`StorageUnavailable`), or None for anything else (a bug)."""
    if isinstance(exc, PrivtrainError):
        return exc
    failure = storage_failure(exc)
    if failure is None:
        return None
    return StorageUnavailable(f"{failure}; retry later", exc)


def _code(exc: BaseException) -> str:
    return exc.grpc_code if isinstance(exc, PrivtrainError) else "INTERNAL"


def details(exc: PrivtrainError) -> str:
    """The status message of one of our errors: its text, cut to :data:`MAX_DETAILS`."""
    text = str(exc)
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS - 3] + "..."


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, PrivtrainError):
        code = getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
        context.abort(code, details(exc))
    log.error("unexpected error in %s", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


class _FirstRemembered:
    """A client stream that keeps its first message for the audit target."""

    def __init__(self, stream: Iterator[Any]) -> None:
        self._stream = stream
        self.first: Any = None
        self._started = False

    def __iter__(self) -> _FirstRemembered:
        return self

    def __next__(self) -> Any:
        item = next(self._stream)
        if not self._started:
            self.first, self._started = item, True
        return item


class _Call:
    """One call being served: who, and what goes to the log and the audit trail."""

    def __init__(self, servicer: Any, method: str, roles: frozenset[Role], audit: str | None,
                 target: Target | None, request: Any) -> None:
        self.servicer, self.method, self.roles = servicer, method, roles
        self.audit, self.target = audit, target
        self.request = request if isinstance(request, Message) else _FirstRemembered(request)
        self.actor = UNIDENTIFIED

    def authorize(self, context: grpc.ServicerContext) -> PeerIdentity:
        identity = peer_identity(context)
        self.actor = Actor.of(identity)
        if identity.role not in self.roles:
            allowed = ", ".join(sorted(r.value for r in self.roles))
            raise PermissionDenied(
                f"{self.method} is for role(s) {allowed}; your certificate ({identity.common_name}) "
                f"has role {identity.role.value}"
            )
        return identity

    def finished(self, reply: Any = None, error: BaseException | None = None,
                 code: str | None = None) -> None:
        outcome = OK if error is None and code is None else (code or _code(error))  # type: ignore[arg-type]
        # Our errors never quote private figures; anything else stays in the server log.
        detail = (details(error) if isinstance(error, PrivtrainError)
                  else "" if error is None else "internal error (see the server log)")
        if isinstance(error, StorageUnavailable):
            log.error("failed %s for %s (serial %s): %s %s (%s)", self.method, self.actor.subject,
                      self.actor.serial or "-", outcome, detail, error.cause)
        elif outcome != OK:
            log.info("refused %s for %s (serial %s): %s %s", self.method, self.actor.subject,
                     self.actor.serial or "-", outcome, detail[:200])
        if self.audit is None:
            return
        request = self.request.first if isinstance(self.request, _FirstRemembered) else self.request
        try:
            target = self.target(request, reply) if self.target is not None else ""
        except Exception:  # a target read from a malformed request: record the call without it
            target = ""
        if len(target) > MAX_TARGET:  # the ids in it are the caller's, of any length
            target = target[:MAX_TARGET - 3] + "..."
        try:
            self.servicer.audit_trail.record(self.actor, self.audit, target, outcome, detail)
        except Exception as exc:  # the call's outcome stands; the operator must hear of the gap
            failure = storage_failure(exc)
            if failure is None:
                log.exception("could not append %s by %s to the audit log", self.audit,
                              self.actor.subject)
            else:
                log.error("could not append %s by %s to the audit log: %s (%s: %s)", self.audit,
                          self.actor.subject, failure, type(exc).__name__, _first_line(exc))


def allow(*roles: Role, audit: str | None = None, target: Target | None = None) -> Callable[[F], F]:
    """Decorate a servicer method ``(self, request, context, identity)``.

    Works for unary, client-streaming and server-streaming handlers (generator
    functions); the wrapped method has gRPC's ``(self, request, context)`` signature.

    Parameters
    ----------
    *roles : Role
        Roles allowed to call it; another role gets PERMISSION_DENIED.
    audit : str, optional
        The audit action (e.g. ``job.submit``): every call is appended to the audit log.
    target : Callable[[request, reply or None], str], optional
        What the call acted on, for the audit entry.
    """
    allowed = frozenset(roles)

    def decorate(handler: F) -> F:
        method = handler.__name__
        ALLOWED_ROLES[method] = allowed
        if audit is not None:
            AUDITED_ACTIONS[method] = audit
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call = _Call(self, method, allowed, audit, target, request)
                try:
                    identity = call.authorize(context)
                    yield from handler(self, call.request, context, identity)
                    call.finished(code=None if context.is_active() else "CANCELLED")
                except GeneratorExit:  # the client went away mid-stream
                    call.finished(code="CANCELLED")
                    raise
                except grpc.RpcError:
                    call.finished(code="CANCELLED")
                    raise
                except Exception as exc:  # mapped to a status, never a traceback to the client
                    error = public_error(exc) or exc
                    call.finished(error=error)
                    if context.is_active() or isinstance(error, PrivtrainError):
                        _abort(context, error, method)

            return stream  # type: ignore[return-value]

        @functools.wraps(handler)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(self, method, allowed, audit, target, request)
            try:
                identity = call.authorize(context)
                reply = handler(self, call.request, context, identity)
            except grpc.RpcError:
                call.finished(code="CANCELLED")
                raise
            except Exception as exc:  # mapped to a status, never a traceback to the client
                error = public_error(exc) or exc
                call.finished(error=error)
                _abort(context, error, method)
            call.finished(reply)
            return reply

        return unary  # type: ignore[return-value]

    return decorate
