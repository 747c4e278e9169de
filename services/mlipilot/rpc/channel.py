"""Client channels to the mlipilot gRPC services, with the bearer token on every call.

gRPC refuses to attach call credentials (``access_token_call_credentials``) to an insecure
channel, so the token travels through a client interceptor instead, on plain and TLS channels
alike: one code path, and the same metadata the server's interceptor checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc

from mlipilot.errors import MlipilotError
from mlipilot.rpc.auth import AUTH_METADATA_KEY

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # Ping every 30 s while calls are open, so a dead server or a silently dropped connection
    # (NAT, load balancer idle timeout) shows up during long streams instead of hanging them.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Keep pinging on a stream that sends no data for minutes (a campaign's event stream).
    ("grpc.http2.max_pings_without_data", 0),
]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _ClientCallDetails(_CallDetails, grpc.ClientCallDetails):
    """``grpc.ClientCallDetails`` with fields (the grpc class is only an interface)."""


class _BearerTokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to the metadata of every call."""

    def __init__(self, token: str) -> None:
        self._entry = (AUTH_METADATA_KEY, f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [(k, v) for k, v in (details.metadata or ()) if k.lower() != AUTH_METADATA_KEY]
        metadata.append(self._entry)
        return _ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._with_token(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: Any,
        request_iterator: Iterator[Any],
    ) -> Any:
        return continuation(self._with_token(client_call_details), request_iterator)


def open_channel(
    target: str, *, token: str | None = None, tls_ca: Path | None = None
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``): plain, or TLS verified against ``tls_ca``.

    ``tls_ca`` is the PEM certificate (or CA bundle) that signed the server's certificate; the
    server's name in ``target`` must match the certificate's subject alternative names. With
    ``token`` every call carries ``authorization: Bearer <token>``.
    """
    if tls_ca is None:
        channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    else:
        ca_path = Path(tls_ca)
        try:
            root = ca_path.read_bytes()
        except OSError as exc:
            raise MlipilotError(f"cannot read the TLS CA certificate {ca_path}: {exc}") from exc
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
    if token:
        channel = grpc.intercept_channel(channel, _BearerTokenClientInterceptor(token))
    return channel
