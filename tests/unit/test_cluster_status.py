"""`mlipilot cluster status` and `grpc-health`.

Status runs against an in-memory Kubernetes API server: kmock's
KubernetesEmulator, a real HTTP server on loopback that stores objects and answers list and get
requests the way the API server does (404 for an unknown resource such as a missing CRD). The
official `kubernetes` client talks to it over HTTP, so requests, paths and the client's own
deserialisation are all real. The objects are the chart's own rendered Deployments and
RayCluster (ci/gpu-values.yaml) with the status a running cluster would give them, and KubeRay's
pod labels. kmock ignores label selectors, which checks that the command filters by label
itself as well.

grpc-health (the helm test, and the probes under TLS) runs against a real mlipilot gRPC server on
loopback, plain and TLS, as the chart's probes call it.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import kmock as kmock_lib
import pytest
import yaml
from chart_render import find, render
from tls_certs import write_self_signed
from typer.testing import CliRunner

from mlipilot.cli import app
from mlipilot.cluster.grpc_health import check_health
from mlipilot.cluster.kube import ClusterReader, Connection, connect
from mlipilot.cluster.status import collect_status
from mlipilot.errors import MlipilotError
from mlipilot.rpc.serving import RunningServer, ServerOptions, start_server

NS = "team"
DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
SLICES = "discovery.k8s.io/v1/endpointslices"
RAYCLUSTERS = "ray.io/v1/rayclusters"


def _deployments(values: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(d) for d in find(render(values), "Deployment")]


def _raycluster(values: str) -> dict[str, Any]:
    return copy.deepcopy(find(render(values), "RayCluster")[0])


def _ready(ready: bool) -> dict[str, Any]:
    return {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]}


def _put(mock: Any, resource: str, obj: dict[str, Any]) -> None:
    obj["metadata"]["namespace"] = NS
    mock.objects[resource, NS, obj["metadata"]["name"]] = obj


def _release(
    mock: Any, values: str = "gpu-values.yaml", *, ready: bool = True, kuberay: bool = True
) -> None:
    """The chart's objects as a healthy (or, ready=False, a half-started) cluster shows them."""
    for deployment in _deployments(values):
        replicas = deployment["spec"]["replicas"]
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        up = replicas if ready or component != "vllm" else 0
        deployment["status"] = {"replicas": replicas, "readyReplicas": up}
        _put(mock, DEPLOYMENTS, deployment)
        if component != "vllm":
            name = deployment["metadata"]["name"]
            _put(
                mock,
                SLICES,
                {
                    "metadata": {
                        "name": f"{name}-abc",
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": "IPv4",
                    "endpoints": [
                        {"addresses": [f"10.0.0.{i}"], "conditions": {"ready": True}}
                        for i in range(replicas)
                    ],
                },
            )
    if not kuberay or not find(render(values), "RayCluster"):
        return
    cluster = _raycluster(values)
    name = cluster["metadata"]["name"]
    group = cluster["spec"]["workerGroupSpecs"][0]
    group["replicas"] = 2  # what the autoscaler asked for
    cluster["status"] = {
        "state": "ready",
        "readyWorkerReplicas": 2 if ready else 1,
        "desiredWorkerReplicas": 2,
        "desiredGPU": "2",
        "conditions": [{"type": "HeadPodReady", "status": "True"}],
    }
    _put(mock, RAYCLUSTERS, cluster)
    head = cluster["spec"]["headGroupSpec"]["template"]
    pods = [("head", "headgroup", head, True)]
    pods += [("worker", group["groupName"], group["template"], i == 0 or ready) for i in range(2)]
    for i, (node_type, group_name, template, pod_ready) in enumerate(pods):
        labels = {
            **template["metadata"]["labels"],
            "ray.io/cluster": name,
            "ray.io/node-type": node_type,
            "ray.io/group": group_name,
        }
        pod = {
            "metadata": {"name": f"{name}-{group_name}-{i}", "labels": labels},
            "spec": copy.deepcopy(template["spec"]),
            "status": _ready(pod_ready),
        }
        _put(mock, PODS, pod)


def _reader(mock: Any) -> ClusterReader:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = str(mock.url).rstrip("/")
    return ClusterReader(Connection(client.ApiClient(configuration), NS, "test"))


async def _status(mock: Any, release: str = "mlipilot") -> Any:
    return await asyncio.to_thread(collect_status, _reader(mock), NS, release)


def _by_component(status: Any) -> dict[str, Any]:
    return {c.component: c for c in status.checks}


@pytest.mark.asyncio
async def test_healthy_gpu_release(kmock: Any) -> None:
    _release(kmock)
    status = await _status(kmock)
    checks = _by_component(status)
    assert status.healthy
    assert set(checks) == {"orchestrator", "scorecard", "vllm", "ray", "ray/gpu"}
    assert checks["scorecard"].detail == {"ready": 2, "desired": 2, "endpoints": 2}
    vllm = checks["vllm"].detail
    assert (vllm["model"], vllm["tool_parser"], vllm["gpus_per_pod"]) == ("qwen3-32b", "hermes", 2)
    gpu = checks["ray/gpu"].detail
    assert (gpu["ready"], gpu["desired"], gpu["min"], gpu["max"]) == (2, 2, 0, 8)
    assert (gpu["gpus_per_worker"], gpu["gpus_ready"]) == (1, 2)
    assert checks["ray"].detail == {"state": "ready", "head_ready": True, "autoscaling": True}
    assert "model qwen3-32b served by 1/1 pods" in checks["vllm"].summary


@pytest.mark.asyncio
async def test_not_ready_parts_are_named(kmock: Any) -> None:
    _release(kmock, ready=False)
    status = await _status(kmock)
    checks = _by_component(status)
    assert not status.healthy
    assert not checks["vllm"].ready and "served by 0/1 pods" in checks["vllm"].summary
    assert not checks["ray/gpu"].ready and checks["ray/gpu"].detail["gpus_ready"] == 1
    assert checks["orchestrator"].ready and checks["scorecard"].ready and checks["ray"].ready


@pytest.mark.asyncio
async def test_other_releases_in_the_namespace_are_ignored(kmock: Any) -> None:
    _release(kmock)
    stranger = _deployments("gpu-values.yaml")[0]
    stranger["metadata"]["name"] = "other-orchestrator"
    stranger["metadata"]["labels"]["app.kubernetes.io/instance"] = "other"
    stranger["status"] = {"replicas": 1, "readyReplicas": 0}
    _put(kmock, DEPLOYMENTS, stranger)
    status = await _status(kmock)
    assert status.healthy
    assert "other-orchestrator" not in json.dumps(status.to_dict())


@pytest.mark.asyncio
async def test_missing_kuberay_is_reported_when_the_orchestrator_expects_ray(kmock: Any) -> None:
    _release(kmock, kuberay=False)
    status = await _status(kmock)  # no RayCluster resource at all: the API answers 404
    ray = _by_component(status)["ray"]
    assert not ray.ready and "install the kuberay-operator" in ray.summary


@pytest.mark.asyncio
async def test_release_without_ray_needs_no_kuberay(kmock: Any) -> None:
    _release(kmock, "tls-values.yaml")
    status = await _status(kmock)
    assert status.healthy
    assert set(_by_component(status)) == {"orchestrator", "scorecard"}


@pytest.mark.asyncio
async def test_unknown_release_is_an_error_that_says_what_to_pass(kmock: Any) -> None:
    _release(kmock)
    with pytest.raises(MlipilotError, match=r"no mlipilot release 'prod'.*--release"):
        await _status(kmock, release="prod")


@pytest.mark.asyncio
async def test_forbidden_says_which_role_to_bind(kmock: Any) -> None:
    kmock[kmock_lib.resource(DEPLOYMENTS)] << kmock_lib.KubernetesError(
        status=403, reason="Forbidden", message="deployments.apps is forbidden"
    )
    with pytest.raises(MlipilotError, match=r"403 Forbidden.*cluster-view Role"):
        await _status(kmock)


def _kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mock", "cluster": {"server": url}}],
                "users": [{"name": "me", "user": {"token": "t0ken"}}],
                "contexts": [
                    {"name": "lab", "context": {"cluster": "mock", "user": "me", "namespace": NS}}
                ],
                "current-context": "lab",
            }
        )
    )
    return path


@pytest.mark.asyncio
async def test_cli_reads_the_kubeconfig_and_its_namespace(kmock: Any, tmp_path: Path) -> None:
    _release(kmock)
    config = _kubeconfig(tmp_path, str(kmock.url).rstrip("/"))
    runner = CliRunner()
    table = await asyncio.to_thread(
        runner.invoke, app, ["cluster", "status", "--kubeconfig", str(config)]
    )
    assert table.exit_code == 0, table.output
    assert "qwen3-32b" in table.output and "mlipilot-ray" in table.output
    as_json = await asyncio.to_thread(
        runner.invoke, app, ["cluster", "status", "--kubeconfig", str(config), "--json"]
    )
    data = json.loads(as_json.output)
    assert data["namespace"] == NS and data["healthy"] is True
    # The token went to the API server.
    requests = list(kmock)
    assert requests and all(r.headers.get("Authorization") == "Bearer t0ken" for r in requests)


@pytest.mark.asyncio
async def test_cli_exit_codes(kmock: Any, tmp_path: Path) -> None:
    _release(kmock, ready=False)
    config = _kubeconfig(tmp_path, str(kmock.url).rstrip("/"))
    runner = CliRunner()
    degraded = await asyncio.to_thread(
        runner.invoke, app, ["cluster", "status", "--kubeconfig", str(config)]
    )
    assert degraded.exit_code == 1
    missing = await asyncio.to_thread(
        runner.invoke, app, ["cluster", "status", "--kubeconfig", str(config), "--context", "x"]
    )
    assert missing.exit_code == 2 and "no context 'x'" in missing.output


@pytest.mark.asyncio
async def test_unreachable_api_server_is_a_clear_error(tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path, "http://127.0.0.1:9")  # discard port: nothing listens
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["cluster", "status", "--kubeconfig", str(config)]
    )
    assert result.exit_code == 2
    assert "cannot reach the Kubernetes API at http://127.0.0.1:9" in result.output


@pytest.mark.asyncio
async def test_in_cluster_configuration(tmp_path: Path) -> None:
    """In a pod: the service account's token, CA and namespace, the API at the service IP."""
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("research\n")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    connection = connect(environ=env, service_account_dir=tmp_path)
    configuration = connection.api_client.configuration
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.get_api_key_with_prefix("BearerToken").lower() == "bearer sa-token"
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert connection.namespace == "research"
    # A kubeconfig asked for explicitly wins over the pod's account.
    with pytest.raises(MlipilotError, match="no usable Kubernetes configuration"):
        connect(tmp_path / "absent", environ=env, service_account_dir=tmp_path)


SERVICE = "mlipilot.v1.ScorecardService"


def _server(tmp_path: Path | None = None, name: str = "") -> RunningServer:
    cert = key = None
    if tmp_path is not None:
        cert, key = _certificate(tmp_path, name)
    options = ServerOptions(port=0, tls_cert=cert, tls_key=key, max_workers=4)
    return start_server(options, lambda _server: None, [SERVICE])


def _certificate(tmp_path: Path, dns_name: str) -> tuple[Path, Path]:
    """A self-signed certificate naming only ``dns_name`` (as the chart's Secret names the
    Services, not 127.0.0.1), and its key; the certificate doubles as the CA."""
    return write_self_signed(tmp_path, (dns_name,))


def test_grpc_health_follows_the_servers_status() -> None:
    server = _server()
    target = f"127.0.0.1:{server.port}"
    runner = CliRunner()
    try:
        assert check_health(target, SERVICE) == "SERVING"
        assert check_health(target) == "SERVING"
        assert check_health(target, "mlipilot.v1.Nothing") == "SERVICE_UNKNOWN"
        ok = runner.invoke(app, ["cluster", "grpc-health", target, "--service", SERVICE])
        assert ok.exit_code == 0 and "SERVING" in ok.output
        server.set_serving(False)  # draining: what readiness must see
        assert check_health(target, SERVICE) == "NOT_SERVING"
        draining = runner.invoke(app, ["cluster", "grpc-health", target, "--service", SERVICE])
        assert draining.exit_code == 1 and "NOT_SERVING" in draining.output
    finally:
        server.stop(0)
    gone = runner.invoke(app, ["cluster", "grpc-health", target, "--timeout", "1"])
    assert gone.exit_code == 2 and "UNAVAILABLE" in gone.output


def test_grpc_health_over_tls_as_the_probes_call_it(tmp_path: Path) -> None:
    server = _server(tmp_path, "mlipilot-orchestrator")
    target = f"127.0.0.1:{server.port}"
    ca = tmp_path / "tls.crt"
    try:
        args = ["cluster", "grpc-health", target, "--service", SERVICE, "--tls-ca", str(ca)]
        probe = CliRunner().invoke(app, [*args, "--tls-server-name", "mlipilot-orchestrator"])
        assert probe.exit_code == 0, probe.output
        # Without the name, 127.0.0.1 is not in the certificate: the check must not pass.
        with pytest.raises(MlipilotError, match="UNAVAILABLE"):
            check_health(target, SERVICE, tls_ca=ca, timeout_s=2)
        # A plaintext client (what kubelet's own gRPC probe is) gets no answer either.
        with pytest.raises(MlipilotError):
            check_health(target, SERVICE, timeout_s=2)
    finally:
        server.stop(0)
