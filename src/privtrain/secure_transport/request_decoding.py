"""Request bytes that are not the method's message: INVALID_ARGUMENT and one log line.

gRPC parses each request with the method's deserializer before any handler runs. When
the bytes are not that message (truncated, a wrong wire type, invalid UTF-8 in a string
field, nesting past protobuf's recursion limit), gRPC logs a traceback and answers
INTERNAL ("Exception deserializing request!"), as if the server had failed; a client
sending garbage fills the log with tracebacks.

:class:`RequestDecoding` (the innermost interceptor, so the revocation check and the
call limits come first) wraps each method's deserializer so that it never raises: it
returns an :class:`UndecodableRequest` in place of the message, and the call is then
refused INVALID_ARGUMENT naming the message type, with one log line. In a client
stream, the bad message ends the stream the same way when the handler reaches it
(the handler sees :class:`UndecodableRequestError`, an ``InvalidInput``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from privtrain.errors import InvalidInput
from privtrain.secure_transport.method_handlers import behavior_of, with_behavior
from privtrain.secure_transport.roles import peer_name

log = logging.getLogger(__name__)

class UndecodableRequestError(InvalidInput):
    """A message of a client stream could not be parsed as the method's request type."""


class UndecodableRequest:
    """Stands in for a request message whose bytes did not parse.

    Attributes
    ----------
    message : str
        One line for the caller: the expected type and the parser's reason.
    """

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "the method's request message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the bytes are bad
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            return UndecodableRequest(f"the request is not a valid {type_name} message "
                                      f"({len(data)} bytes; {reason})")

    return deserialize


def _refuse(context: grpc.ServicerContext, method: str, bad: UndecodableRequest) -> None:
    log.info("refused %s for %s: INVALID_ARGUMENT %s", method.rsplit("/", 1)[-1],
             peer_name(context) or "a caller without a certificate", bad.message)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.message)


class RequestDecoding(grpc.ServerInterceptor):
    """Turns undecodable request bytes into INVALID_ARGUMENT with one log line (see module)."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method, behavior = handler_call_details.method, behavior_of(handler)
        wrapped = (_streamed(behavior, method, handler.response_streaming)
                   if handler.request_streaming else _single(behavior, method))
        return with_behavior(handler, wrapped,
                             request_deserializer=_safe(handler.request_deserializer))


def _single(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, UndecodableRequest):
            _refuse(context, method, request)
        return behavior(request, context)

    return checked


def _streamed(behavior: Callable[..., Any], method: str,
              response_streaming: bool) -> Callable[..., Any]:
    def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        try:
            result = behavior(_decoded(requests), context)
        except UndecodableRequestError as exc:  # a handler that does not map our errors
            _refuse(context, method, UndecodableRequest(str(exc)))
        if response_streaming and result is not None:
            return _responses(result, context, method)
        return result

    return checked


def _decoded(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, UndecodableRequest):
            raise UndecodableRequestError(request.message)
        yield request


def _responses(responses: Iterator[Any], context: grpc.ServicerContext,
               method: str) -> Iterator[Any]:
    try:
        yield from responses
    except UndecodableRequestError as exc:
        _refuse(context, method, UndecodableRequest(str(exc)))
