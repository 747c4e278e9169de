"""Prometheus metrics of the orchestrator and the scorecard service.

Defined once, at import, in prometheus_client's default registry: a metric name may be
registered only once per process, so every module that counts something imports these objects.
They are served over plain HTTP on their own port (``/metrics``), apart from gRPC, so that a
Prometheus scrape needs no gRPC client; when the server has a bearer token, the scrape must
send it too (``Authorization: Bearer <token>``, a ServiceMonitor's ``authorization``).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from mlipilot.errors import MlipilotError

CAMPAIGNS = Counter(
    "mlipilot_campaigns_total",
    "Campaigns by how they ended or started",
    ["status"],  # created, finished, failed, cancelled, interrupted
)
ACTIVE_CAMPAIGNS = Gauge("mlipilot_active_campaigns", "Campaigns running now")
ITERATIONS = Counter("mlipilot_iterations_total", "Candidate iterations decided")
DECISIONS = Counter("mlipilot_decisions_total", "Decisions on candidates by verdict", ["verdict"])
CANDIDATES_IN_FLIGHT = Gauge(
    "mlipilot_candidates_in_flight",
    "Candidates being trained or scored now, by stage",
    ["stage"],  # training, scoring
)
LLM_TOKENS = Counter(
    "mlipilot_llm_tokens_total",
    "LLM tokens spent on decided candidates' proposals",
    ["kind"],  # prompt, completion
)
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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds: not worth a log line each."""


def _with_token(app: Callable, token: str | None) -> Callable:
    """``app`` behind ``Authorization: Bearer <token>`` (compared in constant time)."""
    if not token:
        return app
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        presented = environ.get("HTTP_AUTHORIZATION", "").strip().encode()
        if hmac.compare_digest(presented, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong bearer token\n"]

    return guarded


def serve_metrics(port: int, host: str = "127.0.0.1", token: str | None = None) -> WSGIServer:
    """Start the ``/metrics`` HTTP server (a daemon thread), behind ``token`` when given; the
    caller may ``shutdown()`` it."""
    try:
        httpd = make_server(
            host, port, _with_token(make_wsgi_app(), token), ThreadingWSGIServer, _QuietHandler
        )
    except OSError as exc:
        raise MlipilotError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return httpd


def start_metrics_server(port: int, host: str = "127.0.0.1", token: str | None = None) -> int:
    """Serve ``/metrics`` on ``host:port`` in a daemon thread; the bound port (0: any free one)."""
    return int(serve_metrics(port, host, token).server_port)
