"""The chart's RayCluster against KubeRay's own CRD schema (vendored, v1.7.0) and the promises
the GPU scenario makes: a head, a GPU worker group with nvidia.com/gpu requested and limited,
tolerations, a node selector and in-tree autoscaling between min and max replicas.

The API server prunes unknown fields of a custom resource silently (a misspelled key would be
lost, not refused), so the schema is made strict here: every object that lists its properties
and does not preserve unknown fields gets additionalProperties: false, which is what
`kubectl apply --validate=strict` reports.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chart_render import CI_VALUES, find, render, render_error

CRD = Path(__file__).parent / "kuberay" / "ray.io_rayclusters.yaml"
CRD_SHA256 = "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1"  # v1.7.0
SCENARIOS_WITH_RAY = [None, *(p.name for p in CI_VALUES if p.name != "tls-values.yaml")]


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    assert version["served"] and version["storage"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is the API server's
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def raycluster(*values: str | None, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    clusters = find(render(*[v for v in values if v], sets=sets), "RayCluster")
    assert len(clusters) == 1
    return clusters[0]


def errors(obj: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(obj)
    ]


def test_vendored_crd_is_kuberay_v1_7_0() -> None:
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() == CRD_SHA256
    crd = yaml.safe_load(CRD.read_text())
    assert crd["metadata"]["name"] == "rayclusters.ray.io"


@pytest.mark.parametrize("values", SCENARIOS_WITH_RAY)
def test_raycluster_matches_kuberays_schema(values: str | None) -> None:
    obj = raycluster(values)
    assert obj["apiVersion"] == "ray.io/v1"
    assert errors(obj) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda rc: rc["spec"].update(enableInTreeAutoScaling=True),  # misspelled
        lambda rc: rc["spec"]["workerGroupSpecs"][0].update(minReplicas="0"),  # wrong type
        lambda rc: rc["spec"]["workerGroupSpecs"][0].pop("maxReplicas"),  # required
        lambda rc: rc["spec"]["autoscalerOptions"].update(upscalingMode="Fast"),  # not in enum
        lambda rc: rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
            imagePullPolicy=3
        ),
        lambda rc: rc["spec"]["authOptions"].update(mode="Token"),  # enum: disabled, token
        lambda rc: rc["spec"]["authOptions"].update(secretKey="token"),  # no such field in 1.7
    ],
    ids=["misspelled", "type", "required", "enum", "pod-template", "auth-mode", "auth-field"],
)
def test_schema_check_rejects_a_broken_raycluster(mutate: Any) -> None:
    obj = copy.deepcopy(raycluster("gpu-values.yaml"))
    mutate(obj)
    assert errors(obj)


def test_gpu_scenario_worker_group() -> None:
    spec = raycluster("gpu-values.yaml")["spec"]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 600
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"] == "gpu"
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (0, 0, 8)
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert worker["image"].endswith(":0.1.0-cuda")  # CUDA torch on GPU workers
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    head_image = head["template"]["spec"]["containers"][0]["image"]
    assert head_image == worker["image"].removesuffix("-cuda")  # one build, same Ray and Python
    assert "nvidia.com/gpu" not in str(head)


def test_cpu_scenario_workers_get_the_cpu_image_and_no_gpus() -> None:
    (group,) = raycluster("cpu-values.yaml")["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu"
    worker = group["template"]["spec"]["containers"][0]
    assert not worker["image"].endswith("-cuda")
    assert "nvidia.com/gpu" not in str(group)


def test_autoscaling_off_drops_the_autoscaler_options() -> None:
    spec = raycluster(None, sets=("ray.enableInTreeAutoscaling=false",))["spec"]
    assert spec["enableInTreeAutoscaling"] is False
    assert "autoscalerOptions" not in spec
    assert errors({"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": spec}) == []


def test_worker_group_bounds_are_checked_at_render_time() -> None:
    message = render_error(
        sets=("ray.workerGroups.gpu.minReplicas=5", "ray.workerGroups.gpu.maxReplicas=2")
    )
    assert "ray.workerGroups.gpu: minReplicas (5) is above maxReplicas (2)" in message
    message = render_error(sets=("ray.workerGroups.gpu.replicas=9",))
    assert "replicas (9) must lie between minReplicas (0) and maxReplicas (4)" in message


def test_gpus_per_worker_cannot_also_be_given_as_a_resource() -> None:
    message = render_error(sets=("ray.workerGroups.gpu.resources.limits.nvidia\\.com/gpu=2",))
    assert "nvidia.com/gpu" in message or "ray.workerGroups.gpu.resources" in message


def test_a_second_worker_group_renders_beside_the_first() -> None:
    spec = raycluster(
        None,
        sets=(
            "ray.workerGroups.cpu.enabled=true",
            "ray.workerGroups.cpu.replicas=1",
            "ray.workerGroups.cpu.minReplicas=1",
            "ray.workerGroups.cpu.maxReplicas=3",
            "ray.workerGroups.cpu.gpusPerWorker=0",
            "ray.workerGroups.cpu.resources.requests.cpu=2",
        ),
    )["spec"]
    assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu", "gpu"]
    assert errors({"apiVersion": "ray.io/v1", "kind": "RayCluster", "spec": spec}) == []


@pytest.mark.parametrize(
    "sets",
    [
        ("ray.auth.enabled=false",),
        ("ray.auth.existingSecret=ray-token",),
        ("ray.head.dashboardHost=0.0.0.0",),
    ],
)
def test_ray_auth_and_dashboard_variants_match_kuberays_schema(sets: tuple[str, ...]) -> None:
    assert errors(raycluster(None, sets=sets)) == []


@pytest.mark.parametrize("values", SCENARIOS_WITH_RAY)
def test_ray_containers_leave_the_token_env_to_kuberay(values: str | None) -> None:
    """KubeRay (v1.7, authOptions) adds RAY_AUTH_MODE and RAY_AUTH_TOKEN (secretKeyRef to the
    Secret's auth_token) only to containers that lack them: the chart must set neither, or a
    stale value would win. The workers' wait-gcs-ready copies the Ray container's env."""
    spec = raycluster(values)["spec"]
    assert spec["authOptions"]["mode"] == "token"
    templates = [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec["workerGroupSpecs"]
    ]
    for template in templates:
        for c in template["spec"]["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & names
    autoscaler = {e["name"] for e in spec["autoscalerOptions"].get("env", [])}
    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & autoscaler
