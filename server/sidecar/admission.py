"""Who may call the sidecar, and how many at once: one gRPC server interceptor.

Why admission control lives in front of the servicer: the sync gRPC server runs every RPC on a
thread of one pool, and a Monitor stream (like Health.Watch or reflection) holds its thread for
as long as it is open. Without a cap, 64 idle streams took every thread and `Health.Check` timed
out, so the kubelet would restart a healthy pod. Here:

- long-lived RPCs (any streaming method) take a slot: at most `max_streams` in total and
  `max_streams_per_peer` per client address; beyond that the call ends at once with
  RESOURCE_EXHAUSTED, before any message is read;
- Health.Watch needs no token (the kubelet cannot send one), so a Watch without a valid token takes
  a slot of its own small pool (`max_watch_streams`, `max_watch_streams_per_peer`) and never a
  Monitor slot: anonymous watchers cannot lock authenticated clients out (issue 20, item 3);
- while the sidecar drains for shutdown, every new call but health is answered UNAVAILABLE (health
  keeps answering, NOT_SERVING, as the gRPC health protocol asks);
- unary `Score` calls (which wait for the scoring worker) are capped at `max_concurrent_unary`;
- the thread pool is sized above the sum of the caps (server/sidecar/process.py), so short calls
  (Health.Check, ListProbes) always find a free thread;
- with a token file, every method but the health service needs `authorization: Bearer <token>`
  (UNAUTHENTICATED otherwise); an unauthenticated call's request bytes are never parsed.

Every refusal is counted through `on_reject(code)` (probewatch_rejected_messages_total{code}).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from probewatch.server.sidecar.auth import TokenFile, bearer_from_metadata

log = logging.getLogger(__name__)
HEALTH_PREFIX = "/grpc.health.v1.Health/"
_IGNORED = object()


def peer_host(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7` (streams are counted per client address, not per port)."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class StreamSlots:
    """Counts open long-lived RPCs, in total and per client address.

    `what`, `flag` and `advice` word the RESOURCE_EXHAUSTED message (the per-peer flag is `flag`-per-peer).
    """

    def __init__(
        self,
        total: int,
        per_peer: int,
        what: str = "streams",
        flag: str = "--max-streams",
        advice: str = "multiplex generations on one stream",
    ) -> None:
        self.total, self.per_peer = total, per_peer
        self.what, self.flag, self.advice = what, flag, advice
        self._lock = threading.Lock()
        self.active = 0
        self._by_peer: dict[str, int] = {}

    def acquire(self, peer: str) -> str | None:
        """None when admitted; else why not (the RESOURCE_EXHAUSTED message)."""
        host = peer_host(peer)
        with self._lock:
            if self.active >= self.total:
                return f"the sidecar already serves {self.active} {self.what} ({self.flag} {self.total}); retry later"
            held = self._by_peer.get(host, 0)
            if held >= self.per_peer:
                return f"{host} already holds {held} {self.what} ({self.flag}-per-peer {self.per_peer}); {self.advice}"
            self.active += 1
            self._by_peer[host] = held + 1
        return None

    def release(self, peer: str) -> None:
        host = peer_host(peer)
        with self._lock:
            self.active -= 1
            left = self._by_peer.get(host, 1) - 1
            if left > 0:
                self._by_peer[host] = left
            else:
                self._by_peer.pop(host, None)


class _Once:
    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn, self._done, self._lock = fn, False, threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()


class Guard(grpc.ServerInterceptor):
    """Authentication and admission for every RPC of the sidecar's gRPC server."""

    def __init__(
        self,
        slots: StreamSlots,
        max_concurrent_unary: int,
        limited_unary: set[str],
        tokens: TokenFile | None = None,
        on_reject: Callable[[grpc.StatusCode], None] = lambda code: None,
        watch_slots: StreamSlots | None = None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.slots = slots
        self.watch_slots = watch_slots or slots
        self.draining = draining
        self.tokens = tokens
        self.limited_unary = limited_unary
        self.max_concurrent_unary = max_concurrent_unary
        self._unary = threading.BoundedSemaphore(max_concurrent_unary)
        self.on_reject = on_reject

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.on_reject(code)
        context.abort(code, message)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        health = method.startswith(HEALTH_PREFIX)
        streaming = handler.request_streaming or handler.response_streaming
        authenticated = (not health or streaming) and self._authenticated(handler_call_details)
        if self.tokens is not None and not health and not authenticated:
            return self._refusing(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token: send `authorization: Bearer <token>` metadata",
            )
        if not health and self.draining():
            return self._refusing(
                handler, grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down; reconnect once it is back"
            )
        if streaming:
            return self._slotted(handler, self.watch_slots if health and not authenticated else self.slots)
        if method in self.limited_unary:
            return self._limited(handler)
        return handler

    def _authenticated(self, handler_call_details) -> bool:
        """True when a token file is set and the call carries one of its tokens."""
        if self.tokens is None:
            return False
        return self.tokens.valid(bearer_from_metadata(handler_call_details.invocation_metadata))

    # -- wrappers, one per handler shape --------------------------------------------------------
    def _refusing(self, handler, code: grpc.StatusCode, message: str):
        """A handler of the same shape that refuses without parsing the request."""

        def deny(context) -> None:
            self._refuse(context, code, message)

        def unary(request, context):
            deny(context)

        def streaming(request, context):
            deny(context)
            yield  # pragma: no cover - never reached: deny() raises

        ignore = lambda data: _IGNORED  # the request of a refused call is never parsed (None would mean "failed")
        if handler.response_streaming:
            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(streaming, ignore, handler.response_serializer)
            return grpc.unary_stream_rpc_method_handler(streaming, ignore, handler.response_serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary, ignore, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(unary, ignore, handler.response_serializer)

    def _admit_stream(self, context, slots: StreamSlots) -> Callable[[], None]:
        peer = context.peer()
        why = slots.acquire(peer)
        if why is not None:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        release = _Once(lambda: slots.release(peer))
        if not context.add_callback(release):  # already over: give the slot back now
            release()
        return release

    def _slotted(self, handler, slots: StreamSlots):
        if handler.response_streaming:
            inner = handler.stream_stream or handler.unary_stream

            def generator(request, context):
                release = self._admit_stream(context, slots)
                try:
                    yield from inner(request, context)
                finally:
                    release()

            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(
                    generator, handler.request_deserializer, handler.response_serializer
                )
            return grpc.unary_stream_rpc_method_handler(
                generator, handler.request_deserializer, handler.response_serializer
            )
        inner_unary = handler.stream_unary

        def call(request_iterator, context):
            release = self._admit_stream(context, slots)
            try:
                return inner_unary(request_iterator, context)
            finally:
                release()

        return grpc.stream_unary_rpc_method_handler(call, handler.request_deserializer, handler.response_serializer)

    def _limited(self, handler):
        inner = handler.unary_unary

        def call(request, context):
            if not self._unary.acquire(blocking=False):
                self._refuse(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.max_concurrent_unary} Score calls already in progress (--max-concurrent-score); retry later",
                )
            try:
                return inner(request, context)
            finally:
                self._unary.release()

        return grpc.unary_unary_rpc_method_handler(call, handler.request_deserializer, handler.response_serializer)
