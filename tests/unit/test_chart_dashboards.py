"""The chart's dashboards. Grafana's: rendered only when asked, picked up by the sidecar's label,
and every query names a metric that something really exports — ours from the services'
Prometheus registry, Ray's from its documented system metrics."""

from __future__ import annotations

import json
import re

from chart_render import find, one, render
from prometheus_client import REGISTRY

import mlipilot.rpc.metrics  # noqa: F401 - registers the services' metrics

# Ray's system metrics the dashboard reads (docs.ray.io, ray-observability/reference/system-
# metrics): logical resources by name and state, tasks and actors by state.
RAY_METRICS = {"ray_resources", "ray_tasks", "ray_actors"}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "clamp_min", "histogram_quantile", "le"}


def _exported() -> set[str]:
    """Every series name the registry's metrics expose, labelled or not yet sampled."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        names.update(metric.name + s for s in suffixes.get(metric.type, ()))
    return names


def _dashboard(*sets: str) -> dict:
    objects = render("cpu-values.yaml", sets=("metrics.grafanaDashboard.enabled=true", *sets))
    config = one(objects, "ConfigMap", "mlipilot-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(config["data"]["mlipilot-dashboard.json"])


def test_the_dashboard_is_off_unless_asked() -> None:
    assert not find(render("cpu-values.yaml"), "ConfigMap", "mlipilot-grafana-dashboard")


def test_every_query_names_a_metric_that_is_exported() -> None:
    dashboard = _dashboard()
    exported = _exported()
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Candidates decided per hour", "Accept rate", "Candidates in flight"} <= titles
    assert "LLM tokens per accepted improvement" in titles and "GPUs in use (Ray)" in titles
    assert "Queue depth: work waiting for a worker (Ray)" in titles
    seen = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            # Metric names: identifiers outside label matchers, ranges and strings.
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", target["expr"])
            expr = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "", expr)  # numbers, 1e-9 too
            for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
                if name in PROMQL_WORDS or name in {"stage", "status"}:
                    continue
                seen.add(name)
                if name.startswith("mlipilot_"):
                    assert name in exported, f"{panel['title']}: {name} is not exported"
                else:
                    assert name in RAY_METRICS, f"{panel['title']}: unknown metric {name}"
    assert {"mlipilot_candidates_in_flight", "mlipilot_llm_tokens_total"} <= seen


def test_the_sidecar_label_and_namespace_are_settable() -> None:
    objects = render(
        "cpu-values.yaml",
        sets=(
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.namespace=monitoring",
            "metrics.grafanaDashboard.sidecarLabel=dashboards",
            "metrics.grafanaDashboard.sidecarLabelValue=mlipilot",
        ),
    )
    config = one(objects, "ConfigMap", "mlipilot-grafana-dashboard")
    assert config["metadata"]["namespace"] == "monitoring"
    assert config["metadata"]["labels"]["dashboards"] == "mlipilot"


def test_the_orchestrator_serves_the_dashboard_on_its_own_port_or_not_at_all() -> None:
    objects = render("cpu-values.yaml")
    pod = one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"]
    [server] = [c for c in pod["containers"] if c["name"] == "orchestrator"]
    args = server["args"]
    port = int(args[args.index("--dashboard-port") + 1])
    assert {"name": "dashboard", "containerPort": port, "protocol": "TCP"} in server["ports"]
    service = one(objects, "Service", "mlipilot-orchestrator")
    assert "dashboard" in {p["name"] for p in service["spec"]["ports"]}
    off = render("cpu-values.yaml", sets=("orchestrator.dashboardPort=0",))
    pod = one(off, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"]
    [server] = [c for c in pod["containers"] if c["name"] == "orchestrator"]
    assert "--dashboard-port" not in server["args"]
