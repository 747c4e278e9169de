"""Optional bearer-token auth for the gRPC services.

One shared secret, sent by clients as ``authorization: Bearer <token>`` metadata and checked in
constant time on every call. The health service is exempt: Kubernetes liveness and readiness
probes (and load balancers) cannot carry a token, and health reveals nothing but up or down.
Reflection is not exempt: it describes the whole API.

Over a plain (non-TLS) port the token crosses the network in clear text; serve TLS wherever the
network is not trusted.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from mlipilot.errors import MlipilotError

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
"""Methods under this prefix are served without a token (probes carry none)."""

AUTH_METADATA_KEY = "authorization"
BEARER_SCHEME = "bearer"


def _abort_behaviour(message: str, streaming_request: bool) -> Callable[..., Any]:
    """A method behaviour that rejects the call without reading it."""

    def unary(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def streaming(_request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return streaming if streaming_request else unary


def _rejecting_handler(
    handler: grpc.RpcMethodHandler | None, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts with UNAUTHENTICATED.

    Requests are not deserialized (no deserializer): an unauthenticated caller's bytes are never
    parsed. An unknown method is rejected as a unary one, so it does not reveal what exists.
    """
    request_streaming = bool(handler is not None and handler.request_streaming)
    response_streaming = bool(handler is not None and handler.response_streaming)
    behaviour = _abort_behaviour(message, request_streaming)
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(behaviour)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(behaviour)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(behaviour)
    return grpc.unary_unary_rpc_method_handler(behaviour)


def _presented_token(metadata: Any) -> str | None:
    """The token of the ``authorization: Bearer <token>`` entry, or None when there is none."""
    for key, value in metadata or ():
        if key.lower() != AUTH_METADATA_KEY:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == BEARER_SCHEME and token.strip():
            return token.strip()
    return None


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects every call but health checks unless it carries the right bearer token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise MlipilotError("the bearer token is empty: give a non-empty token or none")
        self._token = token.encode("utf-8")

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if method.startswith(HEALTH_METHOD_PREFIX):
            return continuation(handler_call_details)
        presented = _presented_token(handler_call_details.invocation_metadata)
        if presented is None:
            message = "missing bearer token: send metadata 'authorization: Bearer <token>'"
        elif hmac.compare_digest(presented.encode("utf-8"), self._token):
            return continuation(handler_call_details)
        else:
            message = "wrong bearer token"
        return _rejecting_handler(continuation(handler_call_details), message)


def load_token(token_file: Path | None, env_var: str = "MLIPILOT_TOKEN") -> str | None:
    """The bearer token: the file's content (stripped), else ``$env_var``, else None (no auth).

    A file that is given but unreadable or empty is an error rather than silently serving
    without auth.
    """
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MlipilotError(f"cannot read the token file {path}: {exc}") from exc
        token = text.strip()
        if not token:
            raise MlipilotError(f"the token file {path} is empty: put the bearer token in it")
        return token
    value = os.environ.get(env_var, "").strip()
    return value or None
