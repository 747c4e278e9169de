"""A cap on the calls a gRPC server works on at once, with room kept for health checks.

The sync gRPC server gives every call a thread of its pool for its whole length, and a
WatchCampaign or Evaluate stream lasts minutes to hours. Once streams hold every thread, a new
call (a kubelet's health probe included) waits in line, the probe times out and the pod is
restarted: 64 watchers were enough. So at most ``max_calls`` calls other than health checks
run at once, ``max_calls`` a few below the pool's size; one more is answered
RESOURCE_EXHAUSTED at once, and health checks always find a free thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from mlipilot.rpc.auth import HEALTH_METHOD_PREFIX


class AdmissionInterceptor(grpc.ServerInterceptor):
    def __init__(self, max_calls: int) -> None:
        self.max_calls = max_calls
        self._slots = threading.BoundedSemaphore(max_calls)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._unary(handler.stream_unary))
        return handler._replace(stream_stream=self._streaming(handler.stream_stream))

    def _admit(self, context: grpc.ServicerContext) -> Callable[[], None]:
        """Take a slot or refuse the call; the returned function gives the slot back once."""
        if not self._slots.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is working on {self.max_calls} calls, its most at once; "
                "try again shortly",
            )
        released = threading.Event()
        lock = threading.Lock()

        def release() -> None:
            with lock:
                if not released.is_set():
                    released.set()
                    self._slots.release()

        # Also when the call ends without the handler finishing: a caller gone mid-stream
        # may leave its generator suspended until it is collected.
        context.add_callback(release)
        return release

    def _unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            release = self._admit(context)
            try:
                return behaviour(request, context)
            finally:
                release()

        return admitted

    def _streaming(self, behaviour: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def admitted(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            release = self._admit(context)
            try:
                yield from behaviour(request, context)
            finally:
                release()

        return admitted
