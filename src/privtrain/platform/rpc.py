"""Role checks and error mapping for every RPC handler.

Each handler declares the roles allowed to call it; the caller's identity is
read from its verified client certificate (never from metadata) and passed in.
A :class:`~privtrain.errors.PrivtrainError` becomes its status code with its
message; anything else becomes INTERNAL without leaking internals, and is logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from privtrain.errors import PermissionDenied, PrivtrainError
from privtrain.secure_transport.roles import PeerIdentity, Role, peer_identity

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, PrivtrainError):
        code = getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
        context.abort(code, str(exc))
    log.exception("unexpected error in %s", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _authorize(context: grpc.ServicerContext, roles: frozenset[Role], method: str) -> PeerIdentity:
    identity = peer_identity(context)
    if identity.role not in roles:
        allowed = ", ".join(sorted(r.value for r in roles))
        raise PermissionDenied(
            f"{method} is for role(s) {allowed}; your certificate ({identity.common_name}) "
            f"has role {identity.role.value}"
        )
    return identity


def allow(*roles: Role) -> Callable[[F], F]:
    """Decorate a servicer method ``(self, request, context, identity)``.

    Works for unary and server-streaming handlers (generator functions); the
    wrapped method has gRPC's ``(self, request, context)`` signature.
    """
    allowed = frozenset(roles)

    def decorate(handler: F) -> F:
        method = handler.__name__
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    identity = _authorize(context, allowed, method)
                    yield from handler(self, request, context, identity)
                except grpc.RpcError:
                    raise
                except Exception as exc:  # mapped to a status, never a traceback to the client
                    if context.is_active() or isinstance(exc, PrivtrainError):
                        _abort(context, exc, method)

            return stream  # type: ignore[return-value]

        @functools.wraps(handler)
        def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                identity = _authorize(context, allowed, method)
                return handler(self, request, context, identity)
            except grpc.RpcError:
                raise
            except Exception as exc:  # mapped to a status, never a traceback to the client
                _abort(context, exc, method)

        return unary  # type: ignore[return-value]

    return decorate
