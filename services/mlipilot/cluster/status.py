"""What a Helm release of charts/mlipilot runs, and whether each part is ready.

Readiness comes from what the chart's probes established: the orchestrator and scorecard pods
are ready when their grpc.health.v1 service reports SERVING, a vLLM pod when ``/v1/models``
lists the served model; a RayCluster from KubeRay's status and its pods' readiness. The
objects are found by the chart's labels (``app.kubernetes.io/instance=<release>``,
``app.kubernetes.io/part-of=mlipilot``) and the labels KubeRay puts on its pods.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from mlipilot.errors import MlipilotError

GPU = "nvidia.com/gpu"
SERVICES = ("orchestrator", "scorecard", "vllm")  # the chart's Deployments, by component label


class Reader(Protocol):
    def deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def endpoint_slices(self, namespace: str, service: str) -> list[dict[str, Any]]: ...
    def rayclusters(self, namespace: str, selector: str) -> list[dict[str, Any]] | None: ...


@dataclass(frozen=True)
class Check:
    """One line of the view: a component, the object it was read from, ready or not, why."""

    component: str
    object: str
    ready: bool
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterStatus:
    namespace: str
    release: str
    checks: list[Check]

    @property
    def healthy(self) -> bool:
        return bool(self.checks) and all(c.ready for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "release": self.release,
            "healthy": self.healthy,
            "checks": [asdict(c) for c in self.checks],
        }


def release_selector(release: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": release, "app.kubernetes.io/part-of": "mlipilot"}


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _matches(obj: dict[str, Any], labels: dict[str, str]) -> bool:
    # Servers filter by label selector; filtering again costs nothing and keeps this correct
    # against servers (and test doubles) that ignore it.
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _label(obj: dict[str, Any], key: str) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(key)


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "?")


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _gpus(resources: dict[str, Any] | None) -> int:
    limits = (resources or {}).get("limits") or {}
    try:
        return int(str(limits.get(GPU, 0)))
    except ValueError:
        return 0


def _containers(template_or_pod: dict[str, Any]) -> list[dict[str, Any]]:
    return (template_or_pod.get("spec") or {}).get("containers") or []


def _flag(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def collect_status(reader: Reader, namespace: str, release: str) -> ClusterStatus:
    """Read the release's objects in ``namespace`` and judge each part."""
    labels = release_selector(release)
    listed = reader.deployments(namespace, _selector(labels))
    deployments = [d for d in listed if _matches(d, labels)]
    if not deployments:
        raise MlipilotError(
            f"no mlipilot release {release!r} in namespace {namespace!r}: no Deployment there has "
            f"the labels {_selector(labels)} (pass --release and --namespace of the helm install)"
        )
    by_component = {_label(d, "app.kubernetes.io/component"): d for d in deployments}
    checks: list[Check] = []
    for component in SERVICES:
        deployment = by_component.get(component)
        if deployment is None:
            continue
        if component == "vllm":
            checks.append(_vllm_check(deployment))
        else:
            checks.append(_service_check(reader, namespace, component, deployment))
    if "orchestrator" not in by_component:
        checks.insert(0, Check("orchestrator", "Deployment", False, "missing from the release"))
    checks.extend(_ray_checks(reader, namespace, labels, by_component.get("orchestrator")))
    return ClusterStatus(namespace=namespace, release=release, checks=checks)


def _replicas(deployment: dict[str, Any]) -> tuple[int, int]:
    desired = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
    return ready, desired


def _service_check(
    reader: Reader, namespace: str, component: str, deployment: dict[str, Any]
) -> Check:
    """A gRPC service: pods ready (grpc.health.v1 SERVING), ready endpoints behind its Service."""
    name = _name(deployment)
    ready, desired = _replicas(deployment)
    endpoints = 0
    for eps in reader.endpoint_slices(namespace, name):
        if _label(eps, "kubernetes.io/service-name") != name:
            continue
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready"):
                endpoints += 1
    ok = desired > 0 and ready >= desired and endpoints > 0
    summary = f"{ready}/{desired} pods SERVING (gRPC health), {endpoints} ready endpoints"
    return Check(
        component,
        f"Deployment/{name}",
        ok,
        summary,
        {"ready": ready, "desired": desired, "endpoints": endpoints},
    )


def _vllm_check(deployment: dict[str, Any]) -> Check:
    """vLLM: the served model (from its arguments) and how many pods list it on /v1/models."""
    name = _name(deployment)
    ready, desired = _replicas(deployment)
    containers = _containers((deployment.get("spec") or {}).get("template") or {})
    first = containers[0] if containers else {}
    vllm = next((c for c in containers if c.get("name") == "vllm"), first)
    args = [str(a) for a in vllm.get("args") or []]
    model = _flag(args, "--served-model-name") or (args[0] if args else "?")
    parser = _flag(args, "--tool-call-parser") or "none"
    gpus = _gpus(vllm.get("resources"))
    ok = desired > 0 and ready >= 1
    summary = (
        f"model {model} served by {ready}/{desired} pods (/v1/models), tool parser {parser}, "
        f"{gpus} GPU{'s' if gpus != 1 else ''} per pod"
    )
    detail = {"model": model, "tool_parser": parser, "gpus_per_pod": gpus}
    detail.update(ready=ready, desired=desired)
    return Check("vllm", f"Deployment/{name}", ok, summary, detail)


def _uses_ray(orchestrator: dict[str, Any] | None) -> bool:
    if orchestrator is None:
        return False
    containers = _containers((orchestrator.get("spec") or {}).get("template") or {})
    return any(e.get("name") == "RAY_ADDRESS" for c in containers for e in c.get("env") or [])


def _ray_checks(
    reader: Reader,
    namespace: str,
    labels: dict[str, str],
    orchestrator: dict[str, Any] | None,
) -> list[Check]:
    clusters = reader.rayclusters(namespace, _selector(labels))
    if clusters is None:
        if not _uses_ray(orchestrator):
            return []
        return [
            Check(
                "ray",
                "RayCluster",
                False,
                "the API has no RayCluster kind (ray.io/v1): install the kuberay-operator",
            )
        ]
    clusters = [c for c in clusters if _matches(c, labels)]
    if not clusters and _uses_ray(orchestrator):
        return [Check("ray", "RayCluster", False, "the orchestrator expects one; none found")]
    checks: list[Check] = []
    for cluster in clusters:
        checks.extend(_raycluster_checks(reader, namespace, cluster))
    return checks


def _raycluster_checks(reader: Reader, namespace: str, cluster: dict[str, Any]) -> list[Check]:
    name = _name(cluster)
    status = cluster.get("status") or {}
    pods = reader.pods(namespace, f"ray.io/cluster={name}")
    pods = [p for p in pods if _label(p, "ray.io/cluster") == name]
    head_pods = [p for p in pods if _label(p, "ray.io/node-type") == "head"]
    head_ready = any(_pod_ready(p) for p in head_pods)
    state = status.get("state") or "unknown"
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = head_ready and (state == "ready" or conditions.get("HeadPodReady") == "True")
    spec = cluster.get("spec") or {}
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    summary = (
        f"state {state}, head {'ready' if head_ready else 'not ready'}, "
        f"{status.get('readyWorkerReplicas', 0)} of {status.get('desiredWorkerReplicas', 0)} "
        f"workers ready, {status.get('desiredGPU', 0)} GPUs desired, "
        f"autoscaling {'on' if autoscaling else 'off'}"
    )
    checks = [
        Check(
            "ray",
            f"RayCluster/{name}",
            ready,
            summary,
            {"state": state, "head_ready": head_ready, "autoscaling": autoscaling},
        )
    ]
    for group in spec.get("workerGroupSpecs") or []:
        checks.append(_worker_group_check(name, group, pods))
    return checks


def _worker_group_check(cluster: str, group: dict[str, Any], pods: list[dict[str, Any]]) -> Check:
    """A worker group: ready workers against the replicas KubeRay (or its autoscaler) wants."""
    group_name = group.get("groupName", "?")
    members = [
        p
        for p in pods
        if _label(p, "ray.io/node-type") == "worker" and _label(p, "ray.io/group") == group_name
    ]
    ready_pods = [p for p in members if _pod_ready(p)]
    desired = int(group.get("replicas") or 0)
    lo, hi = int(group.get("minReplicas") or 0), int(group.get("maxReplicas") or 0)
    containers = _containers(group.get("template") or {})
    per_worker = _gpus(containers[0].get("resources")) if containers else 0
    gpus_ready = sum(_gpus(c.get("resources")) for p in ready_pods for c in _containers(p))
    ok = len(ready_pods) >= desired
    summary = (
        f"{len(ready_pods)}/{desired} workers ready (min {lo}, max {hi}), "
        f"{per_worker} GPU{'s' if per_worker != 1 else ''} each, {gpus_ready} GPUs ready"
    )
    detail = {
        "ready": len(ready_pods),
        "desired": desired,
        "min": lo,
        "max": hi,
        "gpus_per_worker": per_worker,
        "gpus_ready": gpus_ready,
    }
    return Check(f"ray/{group_name}", f"RayCluster/{cluster}", ok, summary, detail)
