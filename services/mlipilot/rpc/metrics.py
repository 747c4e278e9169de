"""Prometheus metrics of the orchestrator and the scorecard service.

Defined once, at import, in prometheus_client's default registry: a metric name may be
registered only once per process, so every module that counts something imports these objects.
They are served over plain HTTP on their own port (``/metrics``), apart from gRPC, so that a
Prometheus scrape needs neither a gRPC client nor the bearer token.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from mlipilot.errors import MlipilotError

CAMPAIGNS = Counter(
    "mlipilot_campaigns_total",
    "Campaigns by how they ended or started",
    ["status"],  # created, finished, failed, cancelled, interrupted
)
ACTIVE_CAMPAIGNS = Gauge("mlipilot_active_campaigns", "Campaigns running now")
ITERATIONS = Counter("mlipilot_iterations_total", "Candidate iterations decided")
DECISIONS = Counter("mlipilot_decisions_total", "Decisions on candidates by verdict", ["verdict"])
EVALUATIONS = Counter(
    "mlipilot_evaluations_total",
    "Scorecard evaluations by scorecard and outcome",
    ["scorecard", "status"],
)
EVALUATION_SECONDS = Histogram(
    "mlipilot_evaluation_seconds",
    "Wall time of one scorecard evaluation",
    ["scorecard"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Start the ``/metrics`` HTTP server (a daemon thread); the caller may ``shutdown()`` it."""
    try:
        httpd, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        raise MlipilotError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return httpd


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; the bound port (0: any free one)."""
    return int(serve_metrics(port, host).server_port)
