"""Rewrapping a gRPC method handler, for the server interceptors.

A ``grpc.RpcMethodHandler`` carries one behaviour (``unary_unary``, ``unary_stream``,
``stream_unary`` or ``stream_stream``) with its request deserializer and response
serializer; an interceptor that acts around the behaviour builds a new handler of the
same kind around its own function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The handler's behaviour, ``(request or request iterator, context) -> reply or iterator``."""
    for kind in _FACTORIES:
        behavior = getattr(handler, kind)
        if behavior is not None:
            return behavior  # type: ignore[no-any-return]
    raise ValueError("the method handler has no behaviour")


def with_behavior(
    handler: grpc.RpcMethodHandler, behavior: Callable[..., Any], *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind serving ``behavior``, with ``handler``'s serializers
    (its request deserializer replaced when ``request_deserializer`` is given)."""
    for kind, factory in _FACTORIES.items():
        if getattr(handler, kind) is not None:
            deserializer = request_deserializer or handler.request_deserializer
            return factory(behavior, request_deserializer=deserializer,
                           response_serializer=handler.response_serializer)
    raise ValueError("the method handler has no behaviour")
