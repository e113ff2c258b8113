"""Bounded resources per caller, and unary calls that never wait behind streams.

gRPC's synchronous server serves a call on one thread of its pool for the call's whole
life: a server stream (``WatchJob``) holds its thread while it waits for events, a client
stream (``Upload``) while it waits for chunks. With one shared pool, a caller who opens as
many streams as there are threads stops the server: health checks and admin calls queue
behind the streams until they time out. ``maximum_concurrent_rpcs`` does not help: it
refuses calls past a total, whoever makes them, and lets streams take every thread first.

So :func:`~privtrain.secure_transport.channels.create_server` serves calls on three pools,
chosen per method before the call is queued (gRPC's ``experimental_thread_pool`` on the
method's behaviour, which :class:`CallLimiter` sets):

- **streams** (client, server or both): the stream pool, one thread per open stream; at
  most :attr:`CallLimits.max_streams` are open at once, and the pool has a few threads
  more for refusing the ones past that;
- **unary calls**: the handler pool (``TransportLimits.max_workers`` threads), which no
  stream ever occupies;
- **health checks** (``grpc.health.v1.Health/Check``): a pool of their own
  (:attr:`CallLimits.health_workers`), so a load balancer's probe answers while every
  handler thread is busy.

And each caller, named by their verified certificate (its CN: one person, whatever
certificate of theirs they use), may have at most :attr:`CallLimits.streams_per_identity`
streams open and :attr:`CallLimits.calls_per_identity` unary calls in progress. A call past
a limit is refused ``RESOURCE_EXHAUSTED`` at once, with a message that names the limit and
one log line. A caller therefore holds at most ``calls_per_identity`` handler threads and
never more than ``streams_per_identity`` stream threads.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from privtrain.errors import InvalidInput
from privtrain.secure_transport.method_handlers import behavior_of, with_behavior
from privtrain.secure_transport.roles import peer_name

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
STREAM_POOL_SPARE = 8
"""Threads of the stream pool beyond ``max_streams``: they refuse the streams past it."""

@dataclass(frozen=True)
class CallLimits:
    """How much of the server one caller, and all callers together, may hold at once.

    Attributes
    ----------
    calls_per_identity : int
        Unary calls one person (certificate CN) may have in progress at once.
    streams_per_identity : int
        Streams (``WatchJob``, ``Upload``, ``DownloadParameters``, health watches,
        reflection) one person may have open at once.
    max_streams : int
        Streams open at once, all callers together: the threads of the stream pool.
    health_workers : int
        Threads that answer health checks, apart from every other call.

    Raises
    ------
    InvalidInput
        From ``__post_init__``: a limit below 1, or ``streams_per_identity`` above
        ``max_streams`` (the message says which to change).
    """

    calls_per_identity: int = 8
    streams_per_identity: int = 64
    max_streams: int = 256
    health_workers: int = 2

    def __post_init__(self) -> None:
        for name in ("calls_per_identity", "streams_per_identity", "max_streams", "health_workers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise InvalidInput(f"{name} must be an integer >= 1, got {value!r}")
        if self.streams_per_identity > self.max_streams:
            raise InvalidInput(
                f"streams_per_identity ({self.streams_per_identity}) exceeds max_streams "
                f"({self.max_streams}), the streams of all callers together: lower "
                f"streams_per_identity or raise max_streams"
            )


@dataclass(frozen=True)
class CallPools:
    """The three thread pools of a server (see the module's description)."""

    handlers: ThreadPoolExecutor
    streams: ThreadPoolExecutor
    health: ThreadPoolExecutor

    @classmethod
    def create(cls, handler_threads: int, limits: CallLimits) -> CallPools:
        """Pools for ``handler_threads`` unary calls and ``limits``' streams and health checks."""
        return cls(
            handlers=ThreadPoolExecutor(handler_threads, thread_name_prefix="privtrain-grpc"),
            streams=ThreadPoolExecutor(limits.max_streams + STREAM_POOL_SPARE,
                                       thread_name_prefix="privtrain-stream"),
            health=ThreadPoolExecutor(limits.health_workers, thread_name_prefix="privtrain-health"),
        )


class _Slot:
    """One admitted call; gives its place back exactly once."""

    __slots__ = ("_counts", "_who", "_lock", "_held")

    def __init__(self, counts: _Counts, who: str) -> None:
        self._counts, self._who = counts, who
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._counts.release(self._who)


class _Counts:
    """Calls in progress, per caller and in all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_caller: Counter[str] = Counter()
        self._total = 0

    def acquire(self, who: str, per_caller: int, total: int | None) -> _Slot | str:
        """A slot, or why there is none (``"caller"`` or ``"total"``)."""
        with self._lock:
            if self._by_caller[who] >= per_caller:
                return "caller"
            if total is not None and self._total >= total:
                return "total"
            self._by_caller[who] += 1
            self._total += 1
        return _Slot(self, who)

    def release(self, who: str) -> None:
        with self._lock:
            self._by_caller[who] -= 1
            if self._by_caller[who] <= 0:
                del self._by_caller[who]
            self._total -= 1


class CallLimiter(grpc.ServerInterceptor):
    """Routes each call to its pool and holds each caller to :class:`CallLimits`.

    Must be the outermost interceptor: gRPC reads the pool from the behaviour it is
    handed, which is this interceptor's.

    Parameters
    ----------
    limits : CallLimits
    pools : CallPools
        ``pools.handlers`` must be the server's own pool (the one ``grpc.server`` got).
    """

    def __init__(self, limits: CallLimits, pools: CallPools) -> None:
        self._limits = limits
        self._pools = pools
        self._calls = _Counts()
        self._streams = _Counts()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        streaming = handler.request_streaming or handler.response_streaming
        behavior = behavior_of(handler)
        wrapped = (self._limited_stream(behavior, method) if handler.response_streaming
                   else self._limited_unary(behavior, method, streaming))
        wrapped.experimental_thread_pool = (  # type: ignore[attr-defined]
            self._pools.streams if streaming
            else self._pools.health if method == HEALTH_CHECK else self._pools.handlers)
        return with_behavior(handler, wrapped)

    def _admit(self, context: grpc.ServicerContext, method: str, stream: bool) -> _Slot:
        """A slot for this call, or the call is aborted RESOURCE_EXHAUSTED (one log line)."""
        who = peer_name(context)
        limits = self._limits
        if stream:
            got = self._streams.acquire(who, limits.streams_per_identity, limits.max_streams)
        else:
            got = self._calls.acquire(who, limits.calls_per_identity, None)
        if isinstance(got, _Slot):
            return got
        name = who or "a caller without a certificate"
        if got == "total":
            message = (f"the server already has {limits.max_streams} streams open, its limit for "
                       "all callers together; retry in a moment")
        elif stream:
            message = (f"{name} already has {limits.streams_per_identity} streams open, the "
                       "limit per person; close one (or let it end) before opening another")
        else:
            message = (f"{name} already has {limits.calls_per_identity} calls in progress, the "
                       "limit per person; wait for one to return before making another")
        log.info("refused %s for %s: RESOURCE_EXHAUSTED %s", method.rsplit("/", 1)[-1], name,
                 message)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    def _limited_unary(self, behavior: Callable[..., Any], method: str,
                       stream: bool) -> Callable[..., Any]:
        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            slot = self._admit(context, method, stream)
            try:
                return behavior(request, context)
            finally:
                slot.release()

        return limited

    def _limited_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def limited(request: Any, context: grpc.ServicerContext) -> Any:
            slot = self._admit(context, method, True)
            # gRPC runs the callbacks when the call ends, however it ends: the slot is given
            # back even if the response iterator is never closed.
            if not context.add_callback(slot.release):
                slot.release()
            try:
                responses = behavior(request, context)
            except BaseException:
                slot.release()
                raise
            return _released_at_end(responses, slot)

        return limited


def _released_at_end(responses: Iterator[Any] | None, slot: _Slot) -> Iterator[Any]:
    try:
        if responses is not None:
            yield from responses
    finally:
        slot.release()
