"""charts/mlipilot with real helm: lint, render every ci/*-values.yaml, assert on the objects.

Built-in kinds are validated with kubernetes-validate (Kubernetes' own OpenAPI schemas, strict:
unknown fields fail) for the oldest Kubernetes the chart allows and a current one. The
RayCluster has its own test file (KubeRay's CRD schema); helm-unittest is not used.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_render import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    container,
    find,
    one,
    pod_specs,
    render,
    run_helm,
)

SCENARIOS = [p.name for p in CI_VALUES]
CUSTOM_KINDS = {"RayCluster", "ServiceMonitor"}  # not in Kubernetes' own schemas
K8S_VERSIONS = ["1.27.0", "1.33.0"]


def test_every_scenario_file_is_there() -> None:
    assert {"cpu-values.yaml", "gpu-values.yaml", "tls-values.yaml"} <= set(SCENARIOS)


@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_helm_lint_strict(values: str | None) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values:
        args += ["-f", str(CHART / "ci" / values)]
    proc = run_helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_builtin_kinds_pass_kubernetes_validate_strict(values: str | None) -> None:
    objects = render(*([values] if values else []))
    checked = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 10


def test_kubernetes_validate_catches_a_misspelled_field() -> None:
    """The validator above is strict: a typo in a rendered Deployment fails."""
    deployment = one(render(), "Deployment", "mlipilot-orchestrator")
    bad = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_every_container_is_hardened(values: str | None) -> None:
    for label, spec in pod_specs(render(*([values] if values else []))):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, label
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, label
        for c in spec["containers"]:
            sc = c["securityContext"]
            where = f"{label}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            # A read-only root needs somewhere to write: /tmp is always a volume.
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, where


def _services_by_component(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in find(objects, "Service")
    }


@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_services_select_their_deployments_pods(values: str | None) -> None:
    objects = render(*([values] if values else []))
    services = _services_by_component(objects)
    for deployment in find(objects, "Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        service = services[component]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ports = {
            p["name"] for p in container(deployment["spec"]["template"]["spec"], component)["ports"]
        }
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_grpc_services_have_native_grpc_probes() -> None:
    objects = render()
    for component, service in [
        ("orchestrator", "mlipilot.v1.OrchestratorService"),
        ("scorecard", "mlipilot.v1.ScorecardService"),
    ]:
        deployment = one(objects, "Deployment", f"mlipilot-{component}")
        c = container(deployment["spec"]["template"]["spec"], component)
        port = c["ports"][0]["containerPort"]
        assert c["readinessProbe"]["grpc"] == {"port": port, "service": service}
        assert c["livenessProbe"]["grpc"] == {"port": port, "service": ""}
        assert c["startupProbe"]["grpc"] == {"port": port, "service": ""}
        assert "--host" in c["args"] and c["args"][c["args"].index("--host") + 1] == "0.0.0.0"
        assert c["args"][c["args"].index("--port") + 1] == str(port)
        assert c["args"][c["args"].index("--token-file") + 1] == "/etc/mlipilot/auth/token"
        assert "--tls-cert" not in c["args"]


def test_tls_scenario_serves_tls_and_probes_from_inside() -> None:
    objects = render("tls-values.yaml")
    orchestrator = container(
        one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"],
        "orchestrator",
    )
    args = orchestrator["args"]
    assert args[args.index("--tls-cert") + 1] == "/etc/mlipilot/tls/tls.crt"
    assert args[args.index("--tls-key") + 1] == "/etc/mlipilot/tls/tls.key"
    assert args[args.index("--scorecard") + 1] == f"mlipilot-scorecard.{NAMESPACE}.svc:50052"
    assert args[args.index("--scorecard-tls-ca") + 1] == "/etc/mlipilot/tls/ca.crt"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = orchestrator[kind]
        assert "grpc" not in probe  # kubelet's gRPC probe cannot speak TLS
        command = probe["exec"]["command"]
        assert command[:4] == ["mlipilot", "cluster", "grpc-health", "127.0.0.1:50051"]
        assert command[command.index("--tls-server-name") + 1] == "mlipilot-orchestrator"
        assert command[command.index("--tls-ca") + 1] == "/etc/mlipilot/tls/ca.crt"
        assert int(command[command.index("--timeout") + 1]) < probe["timeoutSeconds"]
    readiness = orchestrator["readinessProbe"]["exec"]["command"]
    assert readiness[readiness.index("--service") + 1] == "mlipilot.v1.OrchestratorService"
    volumes = one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"][
        "volumes"
    ]
    assert {"name": "tls", "secret": {"secretName": "mlipilot-grpc-tls", "defaultMode": 0o440}} in (
        volumes
    )
    test_pod = one(objects, "Pod", "mlipilot-test-grpc-health")
    script = container(test_pod["spec"], "grpc-health")["args"][0]
    assert script.count("--tls-ca /etc/mlipilot/tls/ca.crt") == 2
    # The token Secret is the user's: the chart must not render one over it.
    assert not find(objects, "Secret")


def _vllm(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return container(
        one(objects, "Deployment", "mlipilot-vllm")["spec"]["template"]["spec"], "vllm"
    )


def test_vllm_qwen3_args_gpus_and_probes() -> None:
    objects = render("gpu-values.yaml")
    vllm = _vllm(objects)
    args = vllm["args"]
    assert vllm["command"] == ["vllm", "serve"]
    assert args[0] == "Qwen/Qwen3-32B"
    assert args[args.index("--served-model-name") + 1] == "qwen3-32b"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--max-model-len") + 1] == "32768"
    assert "--enable-auto-tool-choice" in args
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert args[args.index("--reasoning-parser") + 1] == "qwen3"
    assert "--tokenizer-mode" not in args and "--load-format" not in args
    # extraArgs: true -> bare flag, value -> flag and value
    assert "--enable-prefix-caching" in args
    assert args[args.index("--max-num-seqs") + 1] == "16"
    assert vllm["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert vllm["startupProbe"]["httpGet"]["path"] == "/health"
    assert vllm["startupProbe"]["failureThreshold"] * vllm["startupProbe"]["periodSeconds"] >= 600
    assert vllm["livenessProbe"]["httpGet"]["path"] == "/health"
    readiness = vllm["readinessProbe"]["exec"]["command"]
    assert "/v1/models" in readiness[2] and "VLLM_API_KEY" in readiness[2]
    assert readiness[-1] == "qwen3-32b"  # ready only when that model is listed
    spec = one(objects, "Deployment", "mlipilot-vllm")["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "template"
    ]["spec"]["tolerations"]
    shm = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_vllm_mistral_args() -> None:
    vllm = _vllm(render("mistral-values.yaml"))
    args = vllm["args"]
    assert args[0] == "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
    for flag in ("--tokenizer-mode", "--config-format", "--load-format"):
        assert args[args.index(flag) + 1] == "mistral"
    assert args[args.index("--tool-call-parser") + 1] == "mistral"
    assert "--enable-auto-tool-choice" in args
    assert "--reasoning-parser" not in args and "hermes" not in args
    hf = next(e for e in vllm["env"] if e["name"] == "HF_TOKEN")
    assert hf["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_vllm_api_key_is_shared_with_the_orchestrator_through_a_secret() -> None:
    objects = render("gpu-values.yaml")
    key_ref = next(e for e in _vllm(objects)["env"] if e["name"] == "VLLM_API_KEY")["valueFrom"][
        "secretKeyRef"
    ]
    orchestrator = container(
        one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"],
        "orchestrator",
    )
    env = {e["name"]: e for e in orchestrator["env"]}
    assert env["MLIPILOT_LLM_KEY"]["valueFrom"]["secretKeyRef"] == key_ref
    assert env["MLIPILOT_LLM_BASE_URL"]["value"] == f"http://mlipilot-vllm.{NAMESPACE}.svc:8000/v1"
    assert env["MLIPILOT_LLM_MODEL"]["value"] == "qwen3-32b"
    secret = one(objects, "Secret", key_ref["name"])
    assert len(secret["data"][key_ref["key"]]) >= 48  # random, base64
    # no key in plain text anywhere in a pod spec
    assert not any(e.get("value") for e in _vllm(objects)["env"] if "KEY" in e["name"])


def test_vllm_extra_args_false_is_left_out() -> None:
    args = _vllm(render(sets=("vllm.extraArgs.enforce-eager=false",)))["args"]
    assert "--enforce-eager" not in args


@pytest.mark.parametrize(
    ("values", "present", "absent"),
    [
        (None, set(), {"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"}),
        ("gpu-values.yaml", {"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"}, set()),
        ("cpu-values.yaml", {"RayCluster"}, {"ServiceMonitor", "NetworkPolicy"}),
        ("tls-values.yaml", set(), {"RayCluster", "PodDisruptionBudget"}),
    ],
)
def test_gated_objects(values: str | None, present: set[str], absent: set[str]) -> None:
    kinds = {o["kind"] for o in render(*([values] if values else []))}
    assert present <= kinds
    assert not absent & kinds


def test_cpu_scenario_has_no_gpu_anywhere() -> None:
    objects = render("cpu-values.yaml")
    assert not find(objects, "Deployment", "mlipilot-vllm")
    assert "nvidia.com/gpu" not in str(objects)


def test_pdbs_cover_scorecard_and_vllm_not_the_singleton_orchestrator() -> None:
    pdbs = find(render("gpu-values.yaml"), "PodDisruptionBudget")
    components = {p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for p in pdbs}
    assert components == {"scorecard", "vllm"}
    assert all(p["spec"]["maxUnavailable"] == 1 for p in pdbs)


def _selected(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    if "podSelector" not in peer or "namespaceSelector" in peer:
        return False
    return peer["podSelector"].get("matchLabels", {}).items() <= labels.items()


def test_network_policy_keeps_trainers_and_agent_away_from_the_scorecard() -> None:
    objects = render("gpu-values.yaml")
    policy = one(objects, "NetworkPolicy", "mlipilot-scorecard")
    grpc_rules = [
        r for r in policy["spec"]["ingress"] if any(p["port"] == "grpc" for p in r["ports"])
    ]
    assert len(grpc_rules) == 1 and grpc_rules[0]["from"]
    peers = grpc_rules[0]["from"]
    ray = one(objects, "RayCluster", "mlipilot-ray")["spec"]
    ray_pods = [ray["headGroupSpec"]["template"]] + [g["template"] for g in ray["workerGroupSpecs"]]
    vllm_pod = one(objects, "Deployment", "mlipilot-vllm")["spec"]["template"]
    orchestrator_pod = one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]
    for pod in [*ray_pods, vllm_pod]:
        assert not any(_selected(p, pod["metadata"]["labels"]) for p in peers)
    assert any(_selected(p, orchestrator_pod["metadata"]["labels"]) for p in peers)
    vllm_policy = one(objects, "NetworkPolicy", "mlipilot-vllm")["spec"]["ingress"][0]["from"]
    for pod in ray_pods:
        assert not any(_selected(p, pod["metadata"]["labels"]) for p in vllm_policy)


def test_servicemonitors_scrape_the_metrics_ports() -> None:
    objects = render("gpu-values.yaml")
    services = _services_by_component(objects)
    for monitor in find(objects, "ServiceMonitor"):
        component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        port = monitor["spec"]["endpoints"][0]["port"]
        assert port in {p["name"] for p in services[component]["spec"]["ports"]}
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_orchestrator_points_at_the_rayclusters_head_service() -> None:
    objects = render()
    cluster = find(objects, "RayCluster")[0]["metadata"]["name"]
    orchestrator = container(
        one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"],
        "orchestrator",
    )
    env = {e["name"]: e.get("value") for e in orchestrator["env"]}
    assert env["RAY_ADDRESS"] == f"ray://{cluster}-head-svc:10001"  # KubeRay's naming
    spec = one(objects, "Deployment", "mlipilot-orchestrator")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}


def test_ray_pods_share_the_run_folders_at_the_orchestrators_paths() -> None:
    objects = render("gpu-values.yaml")

    def mounts(c: dict[str, Any]) -> set[tuple[str, str]]:
        return {(m["mountPath"], m.get("subPath", "")) for m in c["volumeMounts"]}

    orchestrator = container(
        one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"],
        "orchestrator",
    )
    shared = {("/var/lib/mlipilot/runs", "runs"), ("/var/lib/mlipilot/data", "data")}
    assert shared <= mounts(orchestrator)
    for label, spec in pod_specs(objects):
        if "RayCluster" in label:
            assert shared <= mounts(spec["containers"][0]), label
            claim = next(v for v in spec["volumes"] if v["name"] == "state")
            assert claim["persistentVolumeClaim"]["claimName"] == "mlipilot-runs"
    pvc = one(objects, "PersistentVolumeClaim", "mlipilot-runs")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_scorecard_configmap_carries_the_specs_byte_for_byte() -> None:
    """Same bytes, same sha256: a cluster result and a local one name the same spec hash."""
    data = one(render(), "ConfigMap", "mlipilot-scorecards")["data"]
    sources = sorted((REPO / "scorecard").glob("*.yaml"))
    assert sources, "no scorecard/*.yaml"
    assert set(data) == {p.name for p in sources}
    for path in sources:
        assert (
            hashlib.sha256(data[path.name].encode()).hexdigest()
            == hashlib.sha256(path.read_bytes()).hexdigest()
        ), f"{path.name} differs in the ConfigMap"
        copy = CHART / "files" / "scorecards" / path.name
        assert copy.read_bytes() == path.read_bytes(), (
            f"{copy} is stale: cp scorecard/*.yaml charts/mlipilot/files/scorecards/"
        )


def test_scorecard_configmap_takes_extra_specs_and_restarts_pods_on_change() -> None:
    base = render()
    extra = render(sets=("scorecards.extra.mine\\.yaml=name: mine",))
    assert one(extra, "ConfigMap", "mlipilot-scorecards")["data"]["mine.yaml"] == "name: mine\n"

    def checksum(objects: list[dict[str, Any]]) -> str:
        deployment = one(objects, "Deployment", "mlipilot-scorecard")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/scorecards"]

    assert checksum(base) != checksum(extra)


def test_helm_test_pod_checks_both_services_and_the_cluster_view() -> None:
    objects = render()
    pod = one(objects, "Pod", "mlipilot-test-grpc-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    script = container(pod["spec"], "grpc-health")["args"][0].splitlines()
    assert (
        f"mlipilot cluster grpc-health mlipilot-orchestrator.{NAMESPACE}.svc:50051 "
        "--service mlipilot.v1.OrchestratorService"
    ) in [line.strip() for line in script]
    assert (
        f"mlipilot cluster grpc-health mlipilot-scorecard.{NAMESPACE}.svc:50052 "
        "--service mlipilot.v1.ScorecardService"
    ) in [line.strip() for line in script]
    assert f"mlipilot cluster status --namespace {NAMESPACE} --release mlipilot" in script[-1]
    account = pod["spec"]["serviceAccountName"]
    binding = one(objects, "RoleBinding", account)
    assert {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in binding[
        "subjects"
    ]
    rules = one(objects, "Role", binding["roleRef"]["name"])["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("apps", "deployments"), ("", "pods"), ("ray.io", "rayclusters")} <= granted
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in rules)


def test_workloads_do_not_mount_api_tokens() -> None:
    for label, spec in pod_specs(render("gpu-values.yaml")):
        if label.startswith("Pod/") or label.endswith("/head"):
            continue  # the test pod reads the API; KubeRay's autoscaler runs in the head pod
        assert spec["automountServiceAccountToken"] is False, label


def test_long_release_names_stay_within_kubernetes_limits() -> None:
    release = "potentials-" + "x" * 42  # helm's longest: 53 characters
    assert len(release) == 53
    objects = render("gpu-values.yaml", release=release)
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    cluster = find(objects, "RayCluster")[0]["metadata"]["name"]
    assert len(f"{cluster}-head-svc") <= 63


def _models_server(models: list[str], key: str) -> Any:
    """A stand-in for vLLM's /v1/models on loopback, refusing a wrong API key as vLLM does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {key}":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps({"object": "list", "data": [{"id": m} for m in models]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("models", "key", "ready"),
    [
        (["qwen3-32b"], "k3y", True),
        (["some-other-model"], "k3y", False),  # up, but not serving our model
        (["qwen3-32b"], "wrong", False),  # /v1 refused: the probe must send the key
    ],
)
def test_vllm_readiness_probe_runs_against_v1_models(
    models: list[str], key: str, ready: bool
) -> None:
    """The rendered probe command, run for real against a /v1/models stand-in."""
    server = _models_server(models, "k3y")
    try:
        port = server.server_address[1]
        vllm = _vllm(render("gpu-values.yaml", sets=(f"vllm.port={port}",)))
        command = vllm["readinessProbe"]["exec"]["command"]
        assert command[0] == "python3"
        proc = subprocess.run(
            [sys.executable, *command[1:]],
            env={**os.environ, "VLLM_API_KEY": key},
            capture_output=True,
            timeout=30,
        )
        assert (proc.returncode == 0) is ready, proc.stderr
    finally:
        server.shutdown()


def _notes(tmp_path: Path, *values: str) -> str:
    """NOTES.txt as `helm install` prints it: helm template skips NOTES, so a copy of the chart
    renders it through `tpl` as an ordinary template."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "files" / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "files/notes.txt") . | indent 2 }}\n'
    )
    args = ["template", "mlipilot", str(chart), "--namespace", NAMESPACE]
    args += ["--show-only", "templates/zz-notes.yaml"]
    for name in values:
        args += ["-f", str(CHART / "ci" / name)]
    proc = run_helm(*args)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["notes"]


def test_notes_warn_about_single_node_storage_only_when_it_applies(tmp_path: Path) -> None:
    cpu = _notes(tmp_path / "cpu", "cpu-values.yaml")
    assert "has no ReadWriteMany" in cpu
    assert "kubectl -n mlipilot port-forward svc/mlipilot-orchestrator 50051:50051" in cpu
    assert "get secret mlipilot-auth" in cpu
    assert "mlipilot cluster status --namespace mlipilot --release mlipilot" in cpu
    gpu = _notes(tmp_path / "gpu", "gpu-values.yaml")
    assert "ReadWriteMany" not in gpu
    assert '"qwen3-32b"' in gpu and "agent.api_key_env MLIPILOT_LLM_KEY" in gpu
    tls = _notes(tmp_path / "tls", "tls-values.yaml")
    assert "--tls-ca ca.crt" in tls and "mlipilot-grpc-tls must name it" in tls
