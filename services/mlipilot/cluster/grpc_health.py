"""One grpc.health.v1 Check against a service, plain or TLS (the helm test and TLS probes)."""

from __future__ import annotations

from pathlib import Path

from mlipilot.errors import MlipilotError


def check_health(
    target: str,
    service: str = "",
    *,
    tls_ca: Path | None = None,
    server_name: str | None = None,
    timeout_s: float = 5.0,
) -> str:
    """The status name (SERVING, NOT_SERVING, SERVICE_UNKNOWN, ...) ``target`` reports for
    ``service`` ("" is the whole server). With ``tls_ca`` the channel is TLS, verified against
    that CA; ``server_name`` is the name to expect in the certificate when ``target`` differs
    (a probe dials 127.0.0.1). Health answers without the bearer token."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options: list[tuple[str, str]] = []
    if tls_ca is None:
        channel = grpc.insecure_channel(target)
    else:
        try:
            root = Path(tls_ca).read_bytes()
        except OSError as exc:
            raise MlipilotError(f"cannot read the TLS CA certificate {tls_ca}: {exc}") from exc
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        channel = grpc.secure_channel(target, credentials, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"  # the server does not know this service name
            detail = exc.details()  # type: ignore[attr-defined]
            raise MlipilotError(
                f"gRPC health of {target} ({service or 'whole server'}): {code.name}: {detail}"
            ) from exc
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
