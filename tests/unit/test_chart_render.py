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
    CERT_MANAGER,
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    container,
    find,
    one,
    pod_specs,
    render,
    render_error,
    run_helm,
)

SCENARIOS = [p.name for p in CI_VALUES]
# Not in Kubernetes' own schemas.
CUSTOM_KINDS = {"RayCluster", "ServiceMonitor", "Certificate", "Issuer"}
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


@pytest.mark.parametrize("api_versions", [(), CERT_MANAGER], ids=["plain", "cert-manager"])
@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_builtin_kinds_pass_kubernetes_validate_strict(
    values: str | None, api_versions: tuple[str, ...]
) -> None:
    objects = render(*([values] if values else []), api_versions=api_versions)
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


def _flag(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} in {args}"
    return args[args.index(flag) + 1]


def _orchestrator(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"]
    return container(spec, "orchestrator")


def _scorecard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec = one(objects, "Deployment", "mlipilot-scorecard")["spec"]["template"]["spec"]
    return container(spec, "scorecard")


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
    secret = one(objects, "Secret", key_ref["name"])
    assert len(secret["data"][key_ref["key"]]) >= 48  # random, base64
    # no key in plain text anywhere in a pod spec
    assert not any(e.get("value") for e in _vllm(objects)["env"] if "KEY" in e["name"])


def test_orchestrator_gets_llm_endpoint_and_key_env_and_no_llm_base_url() -> None:
    """Campaigns name the endpoint ("vllm"); its URL and key stay in the server's flags."""
    args = _orchestrator(render("gpu-values.yaml"))["args"]
    assert _flag(args, "--llm-endpoint") == f"vllm=http://mlipilot-vllm.{NAMESPACE}.svc:8000/v1"
    assert _flag(args, "--llm-key-env") == "vllm=MLIPILOT_LLM_KEY"
    env = {e["name"] for e in _orchestrator(render("gpu-values.yaml"))["env"]}
    assert "MLIPILOT_LLM_KEY" in env
    assert not {"MLIPILOT_LLM_BASE_URL", "MLIPILOT_LLM_MODEL"} & env
    no_vllm = _orchestrator(render("cpu-values.yaml"))
    assert "--llm-endpoint" not in no_vllm["args"] and "--llm-key-env" not in no_vllm["args"]
    assert "MLIPILOT_LLM_KEY" not in {e["name"] for e in no_vllm["env"]}


def test_vllm_extra_args_false_is_left_out() -> None:
    args = _vllm(render(sets=("vllm.extraArgs.enforce-eager=false",)))["args"]
    assert "--enforce-eager" not in args


@pytest.mark.parametrize(
    ("values", "present", "absent"),
    [
        (None, {"NetworkPolicy"}, {"PodDisruptionBudget", "ServiceMonitor", "Certificate"}),
        ("gpu-values.yaml", {"PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor"}, set()),
        ("cpu-values.yaml", {"RayCluster", "NetworkPolicy"}, {"ServiceMonitor", "Certificate"}),
        ("tls-values.yaml", {"NetworkPolicy"}, {"RayCluster", "PodDisruptionBudget", "Issuer"}),
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


def test_the_scorecards_md_runs_on_the_ray_workers_it_may_reach() -> None:
    """With Ray on, the scorecard pod is a Ray client (its MD replicas become tasks on the
    workers, a GPU each on a GPU cluster), the Ray NetworkPolicy lets it reach the head, and it
    holds the Ray token; with scorecard.ray.enabled false or no Ray, none of it."""
    objects = render("gpu-values.yaml")
    scorecard = _scorecard(objects)
    assert _flag(scorecard["args"], "--ray-address") == "auto"
    assert _flag(scorecard["args"], "--md-gpus") == "auto"
    env = {e["name"]: e.get("value") for e in scorecard["env"]}
    assert env["RAY_ADDRESS"] == _orchestrator_env(objects)["RAY_ADDRESS"]
    assert env["RAY_AUTH_TOKEN_PATH"] == "/etc/mlipilot/ray/token"
    assert "/etc/mlipilot/ray" in {m["mountPath"] for m in scorecard["volumeMounts"]}
    pod = one(objects, "Deployment", "mlipilot-scorecard")["spec"]["template"]
    ray_policy = one(objects, "NetworkPolicy", "mlipilot-ray")["spec"]["ingress"][0]["from"]
    assert any(_selected(p, pod["metadata"]["labels"]) for p in ray_policy)
    for sets in [("scorecard.ray.enabled=false",), ("ray.enabled=false",)]:
        off = render(sets=sets)
        here = _scorecard(off)
        assert "--ray-address" not in here["args"]
        assert "RAY_ADDRESS" not in {e["name"] for e in here["env"]}
        policies = find(off, "NetworkPolicy", "mlipilot-ray")
        if policies:
            peers = policies[0]["spec"]["ingress"][0]["from"]
            off_pod = one(off, "Deployment", "mlipilot-scorecard")["spec"]["template"]
            assert not any(_selected(p, off_pod["metadata"]["labels"]) for p in peers)


def _orchestrator_env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in _orchestrator(objects)["env"]}


def test_servicemonitors_scrape_the_metrics_ports() -> None:
    objects = render("gpu-values.yaml")
    services = _services_by_component(objects)
    for monitor in find(objects, "ServiceMonitor"):
        component = monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        port = monitor["spec"]["endpoints"][0]["port"]
        assert port in {p["name"] for p in services[component]["spec"]["ports"]}
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_servicemonitor_sends_the_bearer_token() -> None:
    """/metrics of both services needs the gRPC token; vLLM's does not (outside /v1)."""
    monitors = {m["metadata"]["name"]: m for m in find(render("gpu-values.yaml"), "ServiceMonitor")}
    for name in ("mlipilot-orchestrator", "mlipilot-scorecard"):
        (endpoint,) = monitors[name]["spec"]["endpoints"]
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": "mlipilot-auth", "key": "token"},
        }, name
    assert "authorization" not in monitors["mlipilot-vllm"]["spec"]["endpoints"][0]
    own = render(
        "gpu-values.yaml", sets=("auth.existingSecret=tokens", "auth.secretKey=grpc-token")
    )
    endpoint = one(own, "ServiceMonitor", "mlipilot-scorecard")["spec"]["endpoints"][0]
    assert endpoint["authorization"]["credentials"] == {"name": "tokens", "key": "grpc-token"}


def test_auth_disabled_without_allow_insecure_fails_to_render() -> None:
    message = render_error(sets=("auth.enabled=false",))
    assert "auth.allowInsecure=true" in message


def test_auth_disabled_with_allow_insecure_passes_insecure() -> None:
    objects = render("gpu-values.yaml", sets=("auth.enabled=false", "auth.allowInsecure=true"))
    for c in (_orchestrator(objects), _scorecard(objects)):
        assert "--insecure" in c["args"] and "--token-file" not in c["args"]
        assert "/etc/mlipilot/auth" not in {m["mountPath"] for m in c["volumeMounts"]}
    assert not find(objects, "Secret", "mlipilot-auth")
    for monitor in find(objects, "ServiceMonitor"):
        assert "authorization" not in monitor["spec"]["endpoints"][0]


def test_servers_with_a_token_do_not_get_insecure() -> None:
    objects = render(sets=("auth.allowInsecure=true",))  # allowed, but auth is still on
    for c in (_orchestrator(objects), _scorecard(objects)):
        assert "--insecure" not in c["args"]
        assert _flag(c["args"], "--token-file") == "/etc/mlipilot/auth/token"


def _tls_args(c: dict[str, Any]) -> tuple[str | None, str | None]:
    args = c["args"]
    cert = args[args.index("--tls-cert") + 1] if "--tls-cert" in args else None
    key = args[args.index("--tls-key") + 1] if "--tls-key" in args else None
    return cert, key


def test_tls_certificates_are_rendered_when_cert_manager_is_available_and_not_otherwise() -> None:
    assert not {"Certificate", "Issuer"} & {o["kind"] for o in render()}
    assert _tls_args(_orchestrator(render())) == (None, None)
    objects = render(api_versions=CERT_MANAGER)
    issuers = {o["metadata"]["name"]: o["spec"] for o in find(objects, "Issuer")}
    assert issuers == {
        "mlipilot-selfsigned": {"selfSigned": {}},
        "mlipilot-ca": {"ca": {"secretName": "mlipilot-ca"}},
    }
    ca = one(objects, "Certificate", "mlipilot-ca")["spec"]
    assert ca["isCA"] is True and ca["secretName"] == "mlipilot-ca"
    assert ca["issuerRef"] == {
        "name": "mlipilot-selfsigned",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    server = one(objects, "Certificate", "mlipilot-grpc")["spec"]
    assert server["issuerRef"]["name"] == "mlipilot-ca"
    assert server.get("isCA") is not True
    assert set(server["dnsNames"]) == {
        "mlipilot-orchestrator",
        f"mlipilot-orchestrator.{NAMESPACE}.svc",
        "mlipilot-scorecard",
        f"mlipilot-scorecard.{NAMESPACE}.svc",
        "localhost",
    }
    assert server["secretName"] == "mlipilot-grpc-tls"
    for c in (_orchestrator(objects), _scorecard(objects)):
        assert _tls_args(c) == ("/etc/mlipilot/tls/tls.crt", "/etc/mlipilot/tls/tls.key")
        assert "exec" in c["readinessProbe"]  # kubelet's gRPC probe speaks plaintext only
    for label, spec in pod_specs(objects):
        for volume in spec.get("volumes", []):
            if volume["name"] == "tls":
                assert volume["secret"]["secretName"] == "mlipilot-grpc-tls", label
    orchestrator = _orchestrator(objects)["args"]
    assert _flag(orchestrator, "--scorecard-tls-ca") == "/etc/mlipilot/tls/ca.crt"
    script = container(one(objects, "Pod", "mlipilot-test-grpc-health")["spec"], "grpc-health")
    assert script["args"][0].count("--tls-ca /etc/mlipilot/tls/ca.crt") == 2


def test_tls_certificate_names_only_the_services_rendered() -> None:
    objects = render(sets=("scorecard.enabled=false",), api_versions=CERT_MANAGER)
    names = one(objects, "Certificate", "mlipilot-grpc")["spec"]["dnsNames"]
    assert not any("scorecard" in n for n in names)


@pytest.mark.parametrize(
    ("sets", "api_versions", "tls", "issued"),
    [
        (("tls.mode=disabled",), CERT_MANAGER, False, False),
        (("tls.mode=enabled",), CERT_MANAGER, True, True),
        (("tls.existingSecret=mine",), (), True, False),  # auto with a Secret
        (("tls.existingSecret=mine",), CERT_MANAGER, True, False),  # the user's Secret wins
        (("tls.mode=disabled", "tls.existingSecret=mine"), (), False, False),
    ],
)
def test_tls_mode(
    sets: tuple[str, ...], api_versions: tuple[str, ...], tls: bool, issued: bool
) -> None:
    objects = render(sets=sets, api_versions=api_versions)
    assert (_tls_args(_orchestrator(objects))[0] is not None) is tls
    assert bool(find(objects, "Certificate")) is issued
    if tls and not issued:
        volumes = one(objects, "Deployment", "mlipilot-scorecard")["spec"]["template"]["spec"][
            "volumes"
        ]
        assert {"name": "tls", "secret": {"secretName": "mine", "defaultMode": 0o440}} in volumes


def test_tls_enabled_without_a_certificate_source_fails_to_render() -> None:
    message = render_error(sets=("tls.mode=enabled",))
    assert "tls.existingSecret" in message and "cert-manager" in message


def test_ray_head_and_workers_get_the_ray_token_from_the_secret() -> None:
    """KubeRay's authOptions (v1.7): RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the Secret's
    auth_token in every Ray container; the orchestrator's Ray client reads the same key."""
    objects = render("gpu-values.yaml")
    auth = one(objects, "RayCluster", "mlipilot-ray")["spec"]["authOptions"]
    assert auth == {"mode": "token", "secretName": "mlipilot-ray-auth"}
    secret = one(objects, "Secret", "mlipilot-ray-auth")
    assert set(secret["data"]) == {"auth_token"}  # the key KubeRay reads
    assert len(secret["data"]["auth_token"]) >= 48
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    orchestrator = _orchestrator(objects)
    env = {e["name"]: e.get("value") for e in orchestrator["env"]}
    assert env["RAY_AUTH_MODE"] == "token"
    assert "RAY_AUTH_TOKEN" not in env  # a file, not the environment children inherit
    path = Path(env["RAY_AUTH_TOKEN_PATH"])
    mount = next(m for m in orchestrator["volumeMounts"] if m["mountPath"] == str(path.parent))
    assert mount["readOnly"] is True
    spec = one(objects, "Deployment", "mlipilot-orchestrator")["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "mlipilot-ray-auth"
    assert volume["secret"]["items"] == [{"key": "auth_token", "path": path.name}]


def test_ray_auth_existing_secret_and_disabled() -> None:
    own = render(sets=("ray.auth.existingSecret=ray-token",))
    assert one(own, "RayCluster", "mlipilot-ray")["spec"]["authOptions"]["secretName"] == (
        "ray-token"
    )
    assert not find(own, "Secret", "mlipilot-ray-auth")
    off = render(sets=("ray.auth.enabled=false",))
    assert "authOptions" not in one(off, "RayCluster", "mlipilot-ray")["spec"]
    assert not find(off, "Secret", "mlipilot-ray-auth")
    env = {e["name"] for e in _orchestrator(off)["env"]}
    assert "RAY_ADDRESS" in env and not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} & env
    no_ray = _orchestrator(render("tls-values.yaml"))
    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} & {e["name"] for e in no_ray["env"]}


def _head(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "RayCluster", "mlipilot-ray")["spec"]["headGroupSpec"]


def test_the_dashboard_host_is_not_0_0_0_0() -> None:
    head = _head(render())
    assert head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    # KubeRay builds the head Service from the container's ports: no port nothing listens on.
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert 8265 not in ports and 10001 in ports


def test_an_open_dashboard_host_puts_the_dashboard_on_the_head_service() -> None:
    head = _head(render(sets=("ray.head.dashboardHost=0.0.0.0",)))
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    ports = {
        p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports["dashboard"] == 8265


def test_dashboard_host_in_ray_start_params_is_refused() -> None:
    message = render_error(sets=("ray.head.rayStartParams.dashboard-host=0.0.0.0",))
    assert "ray.head.dashboardHost" in message


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Labels of each kind of pod the chart runs, by a short name."""
    labels = {}
    for o in find(objects, "Deployment"):
        component = o["metadata"]["labels"]["app.kubernetes.io/component"]
        labels[component] = o["spec"]["template"]["metadata"]["labels"]
    for o in find(objects, "RayCluster"):
        labels["ray-head"] = o["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
        for g in o["spec"]["workerGroupSpecs"]:
            labels[f"ray-{g['groupName']}"] = g["template"]["metadata"]["labels"]
    labels["test"] = one(objects, "Pod", "mlipilot-test-grpc-health")["metadata"]["labels"]
    labels["stranger"] = {"app": "something-else"}
    return labels


def _admits(
    policy: dict[str, Any],
    port: str | int,
    *,
    labels: dict[str, str] | None = None,
    peer: dict[str, Any] | None = None,
) -> bool:
    """Whether an ingress policy lets a pod of this namespace (its labels) or a peer given in
    the values (e.g. a namespaceSelector) reach `port` (a name or number) of its pods."""
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports and not any(p["port"] == port for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        if peer is not None and peer in peers:
            return True
        if labels is not None and any(_selected(p, labels) for p in peers):
            return True
    return False


MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def test_network_policy_is_rendered_by_default() -> None:
    objects = render()
    names = {p["metadata"]["name"] for p in find(objects, "NetworkPolicy")}
    assert names == {"mlipilot-orchestrator", "mlipilot-scorecard", "mlipilot-vllm", "mlipilot-ray"}
    for policy in find(objects, "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # DNS and egress stay open
    assert not find(render(sets=("networkPolicy.enabled=false",)), "NetworkPolicy")


def test_network_policies_let_the_legitimate_traffic_through() -> None:
    objects = render("gpu-values.yaml")
    labels = _pod_labels(objects)
    policy = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    allowed = [
        ("mlipilot-scorecard", "orchestrator", "grpc"),
        ("mlipilot-scorecard", "test", "grpc"),
        ("mlipilot-vllm", "orchestrator", "http"),
        ("mlipilot-ray", "orchestrator", 10001),  # the Ray client
        ("mlipilot-ray", "scorecard", 10001),  # scorecard.ray: its MD replicas as Ray tasks
        ("mlipilot-ray", "ray-head", 6379),  # GCS, raylets, object transfer among Ray pods
        ("mlipilot-ray", "ray-gpu", 6379),
        ("mlipilot-ray", "ray-gpu", 12345),
        ("mlipilot-orchestrator", "stranger", "grpc"),  # orchestratorFrom empty: the token decides
        ("mlipilot-orchestrator", "test", "grpc"),
    ]
    for name, source, port in allowed:
        assert _admits(policy[name], port, labels=labels[source]), (name, source, port)
    refused = [
        ("mlipilot-scorecard", "ray-gpu", "grpc"),
        ("mlipilot-scorecard", "ray-head", "grpc"),
        ("mlipilot-scorecard", "vllm", "grpc"),
        ("mlipilot-scorecard", "stranger", "grpc"),
        ("mlipilot-vllm", "ray-gpu", "http"),
        ("mlipilot-ray", "vllm", 10001),
        ("mlipilot-ray", "stranger", 10001),
    ]
    for name, source, port in refused:
        assert not _admits(policy[name], port, labels=labels[source]), (name, source, port)


def test_metrics_ingress_is_limited_to_metrics_from() -> None:
    objects = render("gpu-values.yaml")
    stranger = _pod_labels(objects)["stranger"]
    policy = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    for name, port in [
        ("mlipilot-orchestrator", "metrics"),
        ("mlipilot-scorecard", "metrics"),
        ("mlipilot-vllm", "http"),  # vLLM's /metrics shares its API port
        ("mlipilot-ray", 8080),
    ]:
        assert _admits(policy[name], port, peer=MONITORING), (name, port)
        assert not _admits(policy[name], port, labels=stranger), (name, port)
    assert not _admits(policy["mlipilot-scorecard"], "grpc", peer=MONITORING)
    assert not _admits(policy["mlipilot-ray"], 10001, peer=MONITORING)


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


def _mounts(c: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """mountPath -> (subPath, read-only) of the state volume's mounts."""
    return {
        m["mountPath"]: (m.get("subPath", ""), m.get("readOnly", False))
        for m in c["volumeMounts"]
        if m["name"] == "state"
    }


RUNS = "/var/lib/mlipilot/runs"
DATA = "/var/lib/mlipilot/data"


def test_ray_pods_share_the_run_folders_at_the_orchestrators_paths() -> None:
    objects = render("gpu-values.yaml")
    assert _mounts(_orchestrator(objects))[RUNS] == ("runs", False)
    for label, spec in pod_specs(objects):
        if "RayCluster" in label:
            assert _mounts(spec["containers"][0])[RUNS] == ("runs", False), label
            claim = next(v for v in spec["volumes"] if v["name"] == "state")
            assert claim["persistentVolumeClaim"]["claimName"] == "mlipilot-runs"
    pvc = one(objects, "PersistentVolumeClaim", "mlipilot-runs")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_no_ray_pod_mounts_the_data_subpath(values: str | None) -> None:
    """Trainers get their training split in the run folder; the test split is not theirs."""
    for label, spec in pod_specs(render(*([values] if values else []))):
        if "RayCluster" not in label:
            continue
        for c in spec["containers"]:
            mounts = c.get("volumeMounts", [])
            assert not any(m.get("subPath") == "data" for m in mounts), label
            assert DATA not in {m["mountPath"] for m in mounts}, label


@pytest.mark.parametrize("values", [None, *SCENARIOS])
def test_the_scorecard_mounts_data_read_only_and_runs_read_write(values: str | None) -> None:
    mounts = _mounts(_scorecard(render(*([values] if values else []))))
    assert mounts == {RUNS: ("runs", False), DATA: ("data", True)}


def test_the_orchestrator_mounts_runs_and_data_read_write() -> None:
    assert _mounts(_orchestrator(render())) == {RUNS: ("runs", False), DATA: ("data", False)}


def test_only_the_orchestrator_and_scorecard_mount_the_data_sets() -> None:
    for label, spec in pod_specs(render("gpu-values.yaml", api_versions=CERT_MANAGER)):
        has_data = any(DATA in _mounts(c) for c in spec["containers"])
        expected = label in {"Deployment/mlipilot-orchestrator", "Deployment/mlipilot-scorecard"}
        assert has_data is expected, label


def test_orchestrator_and_scorecard_flags() -> None:
    objects = render()
    orchestrator = _orchestrator(objects)["args"]
    assert _flag(orchestrator, "--max-campaigns") == "4"
    assert _flag(orchestrator, "--scorecards") == "/var/lib/mlipilot/scorecard"
    assert _flag(orchestrator, "--data-root") == DATA
    scorecard = _scorecard(objects)["args"]
    assert _flag(scorecard, "--max-queued") == "8"
    read_roots = [scorecard[i + 1] for i, a in enumerate(scorecard) if a == "--read-root"]
    assert read_roots == [RUNS, DATA]
    assert _flag(scorecard, "--write-root") == RUNS
    # The scorecard specs the orchestrator checks are the ConfigMap both mount.
    mounted = {m["mountPath"] for m in _orchestrator(objects)["volumeMounts"]}
    assert "/var/lib/mlipilot/scorecard" in mounted


def test_max_campaigns_and_max_queued_come_from_values() -> None:
    objects = render(sets=("orchestrator.maxCampaigns=2", "scorecard.maxQueued=3"))
    assert _flag(_orchestrator(objects)["args"], "--max-campaigns") == "2"
    assert _flag(_scorecard(objects)["args"], "--max-queued") == "3"


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
    objects = render("gpu-values.yaml", release=release, api_versions=CERT_MANAGER)
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    for cert in find(objects, "Certificate"):
        assert len(cert["spec"]["commonName"]) <= 64  # X.509's upper bound
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


def _notes(
    tmp_path: Path, *values: str, sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = ()
) -> str:
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
    for item in sets:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
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
    assert '"qwen3-32b"' in gpu
    tls = _notes(tmp_path / "tls", "tls-values.yaml")
    assert "--tls-ca ca.crt" in tls and "mlipilot-grpc-tls must name it" in tls


def test_notes_tell_llm_campaigns_to_name_the_endpoint(tmp_path: Path) -> None:
    gpu = _notes(tmp_path, "gpu-values.yaml")
    assert "agent: {kind: llm, endpoint: vllm, model: qwen3-32b}" in gpu
    assert "base_url" not in gpu and "api_key_env" not in gpu and "MLIPILOT_LLM" not in gpu


def test_notes_say_plainly_when_tls_is_off(tmp_path: Path) -> None:
    plain = _notes(tmp_path / "plain")
    assert "WARNING: TLS is off" in plain and "cert-manager.io/v1" in plain
    assert "gRPC and the bearer token travel in clear text" in plain
    assert "(plaintext)" in plain and "--tls-ca" not in plain
    issued = _notes(tmp_path / "issued", api_versions=CERT_MANAGER)
    assert "TLS is off" not in issued and "(TLS)" in issued
    assert "get secret mlipilot-grpc-tls" in issued and "--tls-ca ca.crt" in issued
    insecure = _notes(tmp_path / "insecure", sets=("auth.enabled=false", "auth.allowInsecure=true"))
    assert "--insecure" in insecure and "--token-file" not in insecure
