"""Building, running and stopping a gRPC server the same way for every mlipilot service.

Every server gets the standard health service (what Kubernetes probes and load balancers ask;
it answers without a token), reflection (so grpcurl works without the protos; behind the token
like any other method), optional bearer-token auth, optional TLS, an optional Prometheus
``/metrics`` port (behind the same token), and a cap on the calls it works on at once that
keeps threads free for health checks (rpc/admission.py). A server refuses to listen beyond
loopback without a token unless told ``insecure`` in so many words.

On SIGTERM (Kubernetes' way of asking a pod to stop) or SIGINT the server
reports NOT_SERVING first, so traffic drains away, lets the service clean up (the orchestrator
cancels in-flight campaigns and records them in its ledger), then stops with a grace period.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mlipilot.errors import MlipilotError
from mlipilot.rpc.admission import AdmissionInterceptor
from mlipilot.rpc.auth import BearerTokenInterceptor
from mlipilot.rpc.metrics import serve_metrics

SERVER_OPTIONS: list[tuple[str, int]] = [
    # gRPC sets SO_REUSEPORT by default, so a second server on a taken port "binds" and silently
    # shares the traffic; refuse instead.
    ("grpc.so_reuseport", 0),
    # Ping idle clients now and then so dead connections are noticed and closed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Accept the clients' keepalive pings (every 30 s, see channel.py) even on streams that
    # send no data for a long time; the default (5 min) would answer them with GOAWAY.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    # Requests are campaign files and URIs: a few KiB. Refuse megabytes before parsing them.
    ("grpc.max_receive_message_length", 1 << 20),
]
HEALTH_RESERVE = 8  # pool threads kept free of other calls, for health checks


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerOptions:
    """How and where to serve."""

    host: str = "127.0.0.1"  # laptop default; the Helm chart passes 0.0.0.0
    port: int = 0  # 0: any free port (tests)
    token: str | None = None  # bearer token required on every call but health
    tls_cert: Path | None = None  # PEM cert + key: serve TLS; both or neither
    tls_key: Path | None = None
    metrics_port: int | None = None  # Prometheus /metrics over HTTP; None: off
    # Each WatchCampaign or Evaluate stream holds a worker for its whole length; calls other
    # than health checks are capped below it (max_calls, rpc/admission.py).
    max_workers: int = 64
    insecure: bool = False  # listen beyond loopback without a token: said in so many words

    def __post_init__(self) -> None:
        if self.tls_cert is not None and self.tls_key is None:
            raise MlipilotError(
                f"tls_cert is set ({self.tls_cert}) but tls_key is missing: "
                "TLS needs both the certificate and its private key"
            )
        if self.tls_key is not None and self.tls_cert is None:
            raise MlipilotError(
                f"tls_key is set ({self.tls_key}) but tls_cert is missing: "
                "TLS needs both the certificate and its private key"
            )
        if not 0 <= self.port <= 65535:
            raise MlipilotError(f"port must be between 0 and 65535 (got {self.port})")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise MlipilotError(
                f"metrics_port must be between 0 and 65535 (got {self.metrics_port})"
            )
        if self.max_workers < 2:
            raise MlipilotError(
                f"max_workers must be at least 2 (got {self.max_workers}): some threads are "
                "kept for health checks"
            )
        if not self.token and not self.insecure and not is_loopback(self.host):
            raise MlipilotError(
                f"refusing to listen on {self.host} without a token: anyone who reaches the "
                "port could run campaigns. Give --token-file (or $MLIPILOT_TOKEN), listen on "
                "127.0.0.1, or pass --insecure to serve without auth on a trusted network"
            )

    @property
    def max_calls(self) -> int:
        """Calls other than health checks worked on at once."""
        return self.max_workers - min(HEALTH_RESERVE, self.max_workers // 2)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


@dataclass
class RunningServer:
    """A started server, its bound port and its health status."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    metrics_port: int | None
    service_names: list[str]
    _metrics_httpd: WSGIServer | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for the whole server ("") and every service name."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, then stop; calls still running get ``grace_s`` seconds to finish."""
        if not self._stopped:
            self._stopped = True
            self.set_serving(False)
            # From here on health stays NOT_SERVING whatever else calls set().
            self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
            self._metrics_httpd = None


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"  # IPv6 literal
    return f"{host}:{port}"


def _read_pem(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MlipilotError(f"cannot read the TLS {what} {path}: {exc}") from exc
    if b"-----BEGIN" not in data:
        raise MlipilotError(f"the TLS {what} {path} is not PEM (no '-----BEGIN' line)")
    return data


def start_server(
    options: ServerOptions,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
) -> RunningServer:
    """Build the server, let ``register`` add the services, add health and reflection, start.

    ``service_names`` are the full names of the services ``register`` adds (for example
    ``mlipilot.v1.Orchestrator``): each gets a health status and shows in reflection.
    """
    names = list(service_names)
    interceptors: list[grpc.ServerInterceptor] = []
    if options.token:  # first: a call without the token is refused before it takes a slot
        interceptors.append(BearerTokenInterceptor(options.token))
    interceptors.append(AdmissionInterceptor(options.max_calls))
    server = grpc.server(
        ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=SERVER_OPTIONS,
    )
    register(server)

    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )

    address = _address(options.host, options.port)
    try:
        if options.tls_cert is not None and options.tls_key is not None:
            cert = _read_pem(options.tls_cert, "certificate")
            key = _read_pem(options.tls_key, "private key")
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise MlipilotError(
            f"cannot listen on {address}: the port is taken or the address is not this host's"
        ) from exc
    if port == 0:
        raise MlipilotError(f"cannot listen on {address}")

    server.start()
    running = RunningServer(
        server=server,
        port=port,
        health=health_servicer,
        metrics_port=None,
        service_names=names,
    )
    running.set_serving(True)
    if options.metrics_port is not None:
        try:
            httpd = serve_metrics(options.metrics_port, options.host, options.token)
        except MlipilotError:
            server.stop(0).wait()
            raise
        running._metrics_httpd = httpd
        running.metrics_port = int(httpd.server_port)
    return running


def serve_until_signal(
    running: RunningServer,
    on_shutdown: Callable[[], None] | None = None,
    grace_s: float = 10.0,
) -> None:
    """Serve until SIGTERM or SIGINT (or until the server stops by itself), then shut down.

    Shutdown: NOT_SERVING, ``on_shutdown()``, then stop with ``grace_s`` for running calls.
    The previous signal handlers come back as soon as the first signal arrives (so a second
    Ctrl-C interrupts a slow shutdown) and in any case before this returns. Call it from the
    main thread: Python delivers signals only there.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_until_signal must run in the main thread (signals go there)")
    signals = (signal.SIGTERM, signal.SIGINT)
    stop_requested = threading.Event()
    previous: dict[int, Any] = {}

    def restore() -> None:
        while previous:
            signum, handler = previous.popitem()
            signal.signal(signum, handler)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.set()
        restore()

    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, on_signal)
        # wait_for_termination waits in short slices, so the handler runs promptly; it returns
        # False once the server has stopped (someone called stop()).
        while not stop_requested.is_set():
            if not running.server.wait_for_termination(timeout=0.2):
                break
        running.set_serving(False)
        try:
            if on_shutdown is not None:
                on_shutdown()
        finally:
            running.stop(grace_s)
    finally:
        restore()
