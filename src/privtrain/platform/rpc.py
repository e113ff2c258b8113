"""Role checks, error mapping, refusal logging and the audit trail for every RPC handler.

Each handler declares the roles allowed to call it; the caller's identity is
read from its verified client certificate (never from metadata) and passed in.
A :class:`~privtrain.errors.PrivtrainError` becomes its status code with its
message; anything else becomes INTERNAL without leaking internals, and is logged.
Every refusal is logged at INFO with its status code.

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

from privtrain.errors import PermissionDenied, PrivtrainError
from privtrain.platform.audit_trail import OK, UNIDENTIFIED, Actor
from privtrain.secure_transport.roles import PeerIdentity, Role, peer_identity

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
Target = Callable[[Any, Any], str]
"""``(request, reply or None) -> target`` of an audited call; for a client stream the
request is its first message (None when the stream was empty)."""

AUDITED_ACTIONS: dict[str, str] = {}
"""Method name (e.g. ``SubmitJob``) to audit action (``job.submit``), filled by :func:`allow`."""


def _code(exc: BaseException) -> str:
    return exc.grpc_code if isinstance(exc, PrivtrainError) else "INTERNAL"


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, PrivtrainError):
        code = getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
        context.abort(code, str(exc))
    log.exception("unexpected error in %s", method)
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
        detail = (str(error) if isinstance(error, PrivtrainError)
                  else "" if error is None else "internal error (see the server log)")
        if outcome != OK:
            log.info("refused %s for %s (serial %s): %s %s", self.method, self.actor.subject,
                     self.actor.serial or "-", outcome, detail[:200])
        if self.audit is None:
            return
        request = self.request.first if isinstance(self.request, _FirstRemembered) else self.request
        try:
            target = self.target(request, reply) if self.target is not None else ""
        except Exception:  # a target read from a malformed request: record the call without it
            target = ""
        try:
            self.servicer.audit_trail.record(self.actor, self.audit, target, outcome, detail)
        except Exception:  # the call's outcome stands; the operator must hear of the gap
            log.exception("could not append %s by %s to the audit log", self.audit,
                          self.actor.subject)


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
                    call.finished(error=exc)
                    if context.is_active() or isinstance(exc, PrivtrainError):
                        _abort(context, exc, method)

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
                call.finished(error=exc)
                _abort(context, exc, method)
            call.finished(reply)
            return reply

        return unary  # type: ignore[return-value]

    return decorate
