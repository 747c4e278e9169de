"""The chart's pods, started for real from its rendered manifests with `podman kube play`.

What a Kubernetes node would run, less what needs a control plane: the chart is rendered with
its CPU values (charts/mlipilot/ci/cpu-values.yaml), and its Deployments (orchestrator,
scorecard), ConfigMap, Secrets, volume and RayCluster pods run in podman pods as written: the
image, command, arguments, environment, securityContext (user 10001, read-only root filesystem,
no capabilities, no privilege escalation, seccomp) and volume mounts. Then a user's first hour:
gRPC health, the token from the chart's Secret required, a tiny campaign submitted with
`mlipilot submit` through the orchestrator pod, its events watched to the end, and its ledger
read from the volume; a second one trained on the Ray worker pod. The chart's `helm test` pod
runs too.

What a control plane would do, and what stands in for it here (printed by the test as well):

- RayCluster: no KubeRay operator. kuberay_pods() makes the head and one CPU worker pod from the
  chart's templates the way KubeRay's controller does (`ray start` from rayStartParams, the Ray
  token from authOptions' Secret); no autoscaler sidecar (it needs the Kubernetes API).
- Service: no kube-proxy or cluster DNS. Each pod gets a fixed address on a podman network and
  `hostAliases` for the Service names the chart renders (<name>.<namespace>.svc, and KubeRay's
  <cluster>-head-svc), so the chart's own addresses (--scorecard, RAY_ADDRESS) are used as
  rendered.
- NetworkPolicy, ServiceAccount, Role/RoleBinding: API objects, nothing on a node to run.
- Probes: podman 4.3 does not run gRPC probes; the test makes the same gRPC health calls
  (`mlipilot cluster grpc-health`, the command the chart's TLS probes use) from outside and from
  inside the pods.

Stand-ins for podman 4.3 (Debian bookworm) gaps, each doing what kubelet does (Node.adapt):

- Secret volumes crash `podman kube play` 4.3 (nil pointer in VolumeFromSecret), so each is a
  host folder holding the Secret's items with the volume's defaultMode, group-owned by the pod's
  fsGroup, as kubelet writes them.
- containerPorts: podman 4.3 publishes them on the host (a node does not), where the two
  services' metrics ports (9090) collide; they are left out and the pods reached at their
  addresses.
- emptyDir: podman 4.3 makes each a named volume called after the pod's volume ("tmp"), one
  shared by every pod, root-owned where the image has no such folder (/dev/shm); each is a fresh
  world-writable folder per pod instead, as kubelet makes one.
- subPath on a persistentVolumeClaim is ignored by podman 4.3 (every mount sees the volume's
  root), so each (claim, subPath) mount is a hostPath into the podman volume named after the
  claim, root:fsGroup with mode 2775, as kubelet's fsGroup handling leaves a fresh volume and
  the subPath folders it creates.

Opt-in (minutes, root, podman): `make test-deploy` builds the image and sets
MLIPILOT_DEPLOY_TESTS=1. Skips with the reason when podman or the image is missing, unless
MLIPILOT_REQUIRE_DEPLOY_TESTS=1 (then it fails).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from factories import tiny_spec

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mlipilot"
BIN = Path(os.environ.get("MLIPILOT_BIN", REPO / ".venv" / "bin"))
VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
IMAGE = os.environ.get("MLIPILOT_DEPLOY_IMAGE", f"localhost/mlipilot:{VERSION}")
RELEASE = "mlipilot"
NAMESPACE = "mlipilot-deploy"
NETWORK = "mlipilot-deploy"
SUBNET = os.environ.get("MLIPILOT_DEPLOY_SUBNET", "10.89.117.0/24")
PREFIX = SUBNET.rsplit(".", 1)[0]
ADDRESS = {
    "orchestrator": f"{PREFIX}.10",
    "scorecard": f"{PREFIX}.11",
    "test": f"{PREFIX}.12",
    "ray-head": f"{PREFIX}.13",
    "ray-worker": f"{PREFIX}.14",
}
UID = 10001
LEFTOVERS = [f"{RELEASE}-{c}-pod-0" for c in ("orchestrator", "scorecard")]
LEFTOVERS += [f"{RELEASE}-ray-head", f"{RELEASE}-ray-worker"]
CAMPAIGN_TIMEOUT_S = int(os.environ.get("MLIPILOT_DEPLOY_CAMPAIGN_TIMEOUT", "1200"))
# What a node runs (here) and what it cannot (why).
RUNS_HERE = {"Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim", "Pod"}
NOT_HERE = {
    "RayCluster": "no KubeRay operator: its head and worker pods are started by a stand-in",
    "Service": "no kube-proxy or cluster DNS; fixed pod addresses and hostAliases instead",
    "NetworkPolicy": "no CNI enforcing policies (podman's bridge)",
    "ServiceAccount": "no API server",
    "Role": "no API server",
    "RoleBinding": "no API server",
}

_REQUIRED = os.environ.get("MLIPILOT_REQUIRE_DEPLOY_TESTS") == "1"


def _unavailable(reason: str) -> None:
    if _REQUIRED:
        pytest.fail(f"MLIPILOT_REQUIRE_DEPLOY_TESTS=1 but {reason}")
    pytest.skip(reason)


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(REPO / "docker" / "containers.conf"))
    return env


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=_podman_env(),
        check=check,
        timeout=timeout,
    )


def mlipilot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mlipilot"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def say(text: str) -> None:
    print(f"[deploy] {text}", flush=True)


# -- rendering -------------------------------------------------------------------------------


def deploy_values() -> dict[str, Any]:
    """On top of ci/cpu-values.yaml: the image built here, a tiny scorecard among the served
    specs (scorecards.extra, the chart's way to add one), and no `cluster status` in the helm
    test pod (it asks the Kubernetes API, which does not exist here)."""
    return {
        "image": {"repository": IMAGE.rsplit(":", 1)[0], "tag": IMAGE.rsplit(":", 1)[1]},
        "scorecards": {"extra": {"cu-emt-tiny.yaml": yaml.safe_dump(tiny_spec(md_seeds=(0,)))}},
        "tests": {"clusterStatus": False},
    }


def render(tmp: Path) -> list[dict[str, Any]]:
    values = tmp / "deploy-values.yaml"
    values.write_text(yaml.safe_dump(deploy_values()))
    helm = shutil.which("helm", path=f"{BIN}:{os.environ.get('PATH', '')}")
    assert helm, "helm not found (make helm)"
    out = subprocess.run(
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "-f",
            str(CHART / "ci" / "cpu-values.yaml"),
            "-f",
            str(values),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


# -- the node's side: volumes, secrets, names --------------------------------------------------


@dataclass
class Node:
    """What kubelet and the cluster would provide, for the rendered objects."""

    root: Path
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)
    claims: dict[str, Path] = field(default_factory=dict)  # claim -> podman volume mountpoint
    hosts: list[dict[str, Any]] = field(default_factory=list)  # hostAliases for Services
    configmaps: list[str] = field(default_factory=list)

    def claim(self, name: str) -> Path:
        if name not in self.claims:
            podman("volume", "rm", "-f", name, check=False)
            podman("volume", "create", name)
            mount = podman("volume", "inspect", name, "--format", "{{.Mountpoint}}").stdout
            self.claims[name] = Path(mount.strip())
        return self.claims[name]

    def secret_folder(self, volume: dict[str, Any], pod: str, gid: int) -> Path:
        source = volume["secret"]
        data = self.secrets[source["secretName"]]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        folder = self.root / "secrets" / pod / volume["name"]
        folder.mkdir(parents=True)
        os.chmod(folder, 0o755)
        for item in items:
            path = folder / item["path"]
            path.write_bytes(data[item["key"]])
            os.chown(path, 0, gid)
            os.chmod(path, item.get("mode", source.get("defaultMode", 0o644)))
        return folder

    def adapt(self, pod: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The pod spec as podman 4.3 can run it, with the same files at the same paths."""
        gid = spec.get("securityContext", {}).get("fsGroup", 0)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        new_volumes: dict[str, dict[str, Any]] = {}
        for container in spec["containers"]:
            # A containerPort publishes nothing on a Kubernetes node; podman 4.3 binds it on
            # the host (both services' metrics are on 9090), so the pods are reached at their
            # own addresses instead, as in a cluster.
            container.pop("ports", None)
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                if "secret" in volume:
                    path = (
                        self.secret_folder(volume, pod, gid)
                        if (mount["name"] not in new_volumes)
                        else Path(new_volumes[mount["name"]]["hostPath"]["path"])
                    )
                    new_volumes[mount["name"]] = {
                        "name": mount["name"],
                        "hostPath": {"path": str(path), "type": "Directory"},
                    }
                elif "persistentVolumeClaim" in volume:
                    sub = mount.pop("subPath", "")
                    folder = self.claim(volume["persistentVolumeClaim"]["claimName"]) / sub
                    # As kubelet leaves it: fsGroup owns the volume (group-writable, setgid),
                    # and a subPath folder it creates takes the volume root's mode.
                    folder.mkdir(parents=True, exist_ok=True)
                    for path in {folder.parent, folder} if sub else {folder}:
                        os.chown(path, 0, gid)
                        os.chmod(path, 0o2775)
                    name = f"{mount['name']}-{sub}" if sub else mount["name"]
                    mount["name"] = name
                    new_volumes[name] = {
                        "name": name,
                        "hostPath": {"path": str(folder), "type": "Directory"},
                    }
                elif "emptyDir" in volume:
                    # Fresh per pod and world-writable, as kubelet makes one (medium Memory,
                    # /dev/shm here, is a tmpfs there: a folder on disk here).
                    folder = self.root / "emptydir" / pod / mount["name"]
                    folder.mkdir(parents=True, exist_ok=True)
                    os.chmod(folder, 0o777)
                    new_volumes[mount["name"]] = {
                        "name": mount["name"],
                        "hostPath": {"path": str(folder), "type": "Directory"},
                    }
                else:
                    new_volumes[mount["name"]] = volume
        spec["volumes"] = list(new_volumes.values())
        spec["hostAliases"] = self.hosts
        return spec


def service_hosts(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """hostAliases standing in for cluster DNS: each Service's names -> its pod's address
    (and the head Service KubeRay would create for the RayCluster)."""
    hosts = []
    for doc in docs:
        if doc["kind"] == "Service":
            name = doc["metadata"]["name"]
            address = ADDRESS[doc["spec"]["selector"]["app.kubernetes.io/component"]]
        elif doc["kind"] == "RayCluster":
            name, address = f"{doc['metadata']['name']}-head-svc", ADDRESS["ray-head"]
        else:
            continue
        names = [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc"]
        hosts.append({"ip": address, "hostnames": [*names, f"{names[-1]}.cluster.local"]})
    return hosts


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def kuberay_pods(cluster: dict[str, Any], token: bytes) -> dict[str, dict[str, Any]]:
    """A stand-in for KubeRay's RayCluster controller (v1.x): the head pod and one worker pod
    of the first enabled group, from the chart's templates, with what KubeRay adds: the
    container runs `/bin/bash -lc -- "ulimit -n 65536; ray start ... --block"` built from
    rayStartParams (num-cpus and memory from the container's resources when not given), the
    head's address for workers, and the Ray token from authOptions' Secret (RAY_AUTH_MODE,
    RAY_AUTH_TOKEN). No autoscaler sidecar (it needs the Kubernetes API)."""
    name = cluster["metadata"]["name"]
    head_svc = f"{name}-head-svc.{NAMESPACE}.svc.cluster.local"
    groups = [("head", cluster["spec"]["headGroupSpec"])]
    groups += [("worker", g) for g in cluster["spec"]["workerGroupSpecs"][:1]]
    pods = {}
    for kind, group in groups:
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        params = {k: str(v) for k, v in group.get("rayStartParams", {}).items()}
        resources = container.get("resources", {})
        cpu = resources.get("limits", {}).get("cpu") or resources.get("requests", {}).get("cpu")
        memory = resources.get("limits", {}).get("memory")
        if "num-cpus" not in params and cpu:
            cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
            params["num-cpus"] = str(max(1, int(cores)))
        if memory:
            params.setdefault("memory", str(_bytes(memory)))
        params.setdefault("metrics-export-port", "8080")
        params.setdefault("dashboard-agent-listen-port", "52365")
        start = ["--head"] if kind == "head" else [f"--address={head_svc}:6379"]
        start += [f"--{k}={v}" for k, v in params.items()] + ["--block"]
        container["command"] = ["/bin/bash", "-lc", "--"]
        container["args"] = ["ulimit -n 65536; ray start " + " ".join(start)]
        container["env"] = [
            *container.get("env", []),
            {"name": "RAY_CLUSTER_NAME", "value": name},
            {"name": "RAY_NODE_TYPE_NAME", "value": group.get("groupName", "headgroup")},
            {"name": "RAY_PORT", "value": "6379"},
            {
                "name": "RAY_ADDRESS",
                "value": "127.0.0.1:6379" if kind == "head" else f"{head_svc}:6379",
            },
            {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
            {"name": "RAY_AUTH_MODE", "value": "token"},
            {"name": "RAY_AUTH_TOKEN", "value": token.decode()},
        ]
        container.pop("lifecycle", None)
        pods[f"ray-{kind}"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{kind}",
                "labels": group["template"]["metadata"]["labels"],
            },
            "spec": {**spec, "restartPolicy": "Never"},
        }
    return pods


# -- the deployment ----------------------------------------------------------------------------


@dataclass
class Deployment:
    docs: list[dict[str, Any]]
    node: Node
    token: str
    token_file: Path
    pods: dict[str, str]  # component -> podman pod name
    containers: dict[str, str]  # component -> container name

    def address(self, component: str) -> str:
        port = {"orchestrator": 50051, "scorecard": 50052}[component]
        return f"{ADDRESS[component]}:{port}"

    def logs(self, component: str) -> str:
        out = podman("logs", self.containers[component], check=False)
        return out.stdout + out.stderr


def play(doc_list: list[dict[str, Any]], folder: Path, name: str, ip: str) -> None:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(doc_list))
    out = podman("kube", "play", "--network", NETWORK, "--ip", ip, str(path), check=False)
    assert out.returncode == 0, f"podman kube play {name}: {out.stdout}\n{out.stderr}"


def container_of(pod: str) -> str:
    rows = json.loads(podman("ps", "-a", "--pod", "--format", "json").stdout)
    names = [r["Names"][0] for r in rows if r.get("PodName") == pod and not r.get("IsInfra")]
    assert len(names) == 1, (pod, rows)
    return names[0]


def wait_healthy(target: str, service: str, timeout: float = 300) -> float:
    start = time.monotonic()
    while True:
        out = mlipilot("cluster", "grpc-health", target, "--service", service, "--timeout", "3")
        if out.returncode == 0:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{target} {service} not SERVING after {timeout}s: {out.stdout}")
        time.sleep(2)


def wait_for_ray(head: str, worker: str, timeout: float = 300) -> tuple[float, float]:
    """Until the head's GCS sees the worker's CPU (a driver in the head pod, with the token
    KubeRay gives it); fails at once when a Ray container has exited."""
    probe = (
        "import ray; ray.init(address='auto', logging_level='ERROR'); "
        "print(ray.cluster_resources().get('CPU', 0))"
    )
    start = time.monotonic()
    while True:
        out = podman("exec", head, "python3", "-c", probe, check=False, timeout=120)
        lines = out.stdout.strip().splitlines()
        if out.returncode == 0 and lines and float(lines[-1]) >= 1:
            return time.monotonic() - start, float(lines[-1])
        running = {
            n: podman("inspect", n, "--format", "{{.State.Running}}").stdout.strip() == "true"
            for n in (head, worker)
        }
        if not all(running.values()) or time.monotonic() - start > timeout:
            logs = {n: podman("logs", "--tail", "30", n, check=False).stderr for n in running}
            raise AssertionError(f"no Ray cluster (running: {running}): {logs}")
        time.sleep(5)


def teardown(node: Node | None, pods: list[str]) -> None:
    for pod in pods:
        podman("pod", "rm", "-f", "-t", "10", pod, check=False, timeout=120)
    if node is not None:
        for volume in [*node.claims, *node.configmaps]:  # kube play keeps a ConfigMap's volume
            podman("volume", "rm", "-f", volume, check=False)
    podman("network", "rm", "-f", NETWORK, check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if os.environ.get("MLIPILOT_DEPLOY_TESTS") != "1" and not _REQUIRED:
        pytest.skip("opt-in: `make test-deploy` (builds the image, needs root and podman)")
    if shutil.which("podman") is None:
        _unavailable("podman is not installed (apt-get install podman runc)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        _unavailable(f"no image {IMAGE}: build it with `make image`")
    if os.geteuid() != 0:
        _unavailable("needs root (podman networks with fixed pod addresses, volume ownership)")

    tmp = tmp_path_factory.mktemp("deploy")
    docs = render(tmp)
    kinds = sorted({d["kind"] for d in docs})
    say(f"rendered {len(docs)} objects ({', '.join(kinds)}) from ci/cpu-values.yaml, image {IMAGE}")
    for doc in docs:
        if doc["kind"] not in RUNS_HERE:
            why = NOT_HERE.get(doc["kind"], "not a node-side object")
            say(f"not run here: {doc['kind']} {doc['metadata']['name']}: {why}")
    unknown = {d["kind"] for d in docs} - RUNS_HERE - set(NOT_HERE)
    assert not unknown, f"rendered kinds this test does not account for: {unknown}"

    pod_names: list[str] = []
    node: Node | None = None
    # A leftover of an interrupted run would hold the addresses.
    for pod in (*LEFTOVERS, f"{RELEASE}-test-grpc-health"):
        podman("pod", "rm", "-f", pod, check=False)
    podman("network", "rm", "-f", NETWORK, check=False)
    podman("network", "create", "--subnet", SUBNET, NETWORK)
    try:
        node = Node(root=tmp, hosts=service_hosts(docs))
        for doc in docs:
            if doc["kind"] == "Secret":
                data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
                node.secrets[doc["metadata"]["name"]] = data
        auth = next(
            d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-auth")
        )
        token = base64.b64decode(auth["data"]["token"]).decode()
        token_file = tmp / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
        node.configmaps = [d["metadata"]["name"] for d in configmaps]
        for claim in (d for d in docs if d["kind"] == "PersistentVolumeClaim"):
            node.claim(claim["metadata"]["name"])
            say(
                f"volume: claim {claim['metadata']['name']} -> podman volume at "
                f"{node.claims[claim['metadata']['name']]}"
            )

        pods: dict[str, str] = {}
        containers: dict[str, str] = {}
        deployments = {
            d["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in docs
            if d["kind"] == "Deployment"
        }
        assert set(deployments) == {"orchestrator", "scorecard"}, set(deployments)
        # The RayCluster first, as KubeRay would start it beside the Deployments: the scorecard
        # (MD on the Ray workers) and the orchestrator (trainers there) are its clients.
        cluster = next(d for d in docs if d["kind"] == "RayCluster")
        ray_token = node.secrets[cluster["spec"]["authOptions"]["secretName"]]["auth_token"]
        for component, pod in kuberay_pods(cluster, ray_token).items():
            node.adapt(component, pod["spec"])
            play([pod], tmp, component, ADDRESS[component])
            pods[component] = pod["metadata"]["name"]
            pod_names.append(pods[component])
            containers[component] = container_of(pods[component])
            args = pod["spec"]["containers"][0]["args"][0]
            say(f"KubeRay stand-in: pod {pods[component]} at {ADDRESS[component]}: {args}")
        waited, cpus = wait_for_ray(containers["ray-head"], containers["ray-worker"])
        say(f"Ray cluster up after {waited:.0f} s: {cpus:.0f} CPU (the worker's; the head has 0)")
        for component in ("scorecard", "orchestrator"):
            doc = deployments[component]
            node.adapt(component, doc["spec"]["template"]["spec"])
            started = time.monotonic()
            play([*configmaps, doc], tmp, component, ADDRESS[component])
            pods[component] = f"{doc['metadata']['name']}-pod-0"
            pod_names.append(pods[component])
            containers[component] = container_of(pods[component])
            say(
                f"pod {pods[component]} started ({time.monotonic() - started:.1f} s) at "
                f"{ADDRESS[component]}, container {containers[component]}"
            )
        yield Deployment(docs, node, token, token_file, pods, containers)
    finally:
        for pod in pod_names:
            out = podman("logs", "--tail", "15", container_of(pod), check=False)
            say(f"last log lines of {pod}:\n{(out.stdout + out.stderr).rstrip()}")
        teardown(node, [*pod_names, f"{RELEASE}-test-grpc-health"])


# -- the checks, in the order a user meets them -------------------------------------------------


def test_services_become_healthy(deployment: Deployment) -> None:
    for component, service in (
        ("scorecard", "mlipilot.v1.ScorecardService"),
        ("orchestrator", "mlipilot.v1.OrchestratorService"),
    ):
        for name in ("", service):  # the startup/liveness probes' and the readiness probe's
            waited = wait_healthy(deployment.address(component), name)
            say(f"health {component} {name or '(server)'}: SERVING after {waited:.1f} s")
    # The chart's probe command, inside the pod (as the TLS variant of the probes runs it).
    out = podman(
        "exec",
        deployment.containers["orchestrator"],
        "mlipilot",
        "cluster",
        "grpc-health",
        "127.0.0.1:50051",
        "--service",
        "mlipilot.v1.OrchestratorService",
    )
    say(f"health from inside the orchestrator pod: {out.stdout.strip()}")


def _process_status(container: str) -> dict[str, str]:
    pid = podman("inspect", container, "--format", "{{.State.Pid}}").stdout.strip()
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@pytest.mark.parametrize("component", ["orchestrator", "scorecard", "ray-head", "ray-worker"])
def test_pods_run_non_root_with_a_read_only_root(deployment: Deployment, component: str) -> None:
    container = deployment.containers[component]
    status = _process_status(container)  # the server process itself, seen from the host
    uids = status["Uid"].split()
    gids = status["Gid"].split()
    assert uids == [str(UID)] * 4, status["Uid"]
    assert gids == [str(UID)] * 4, status["Gid"]
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status
    assert status["NoNewPrivs"] == "1", status
    assert status["Seccomp"] == "2", status  # a filter (RuntimeDefault), not unconfined
    inspect = json.loads(podman("inspect", container).stdout)[0]
    assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/x", "/usr/local/bin/x", "/var/lib/mlipilot/x", "/etc/x"):
        out = podman("exec", container, "touch", path, check=False)
        assert out.returncode != 0 and "Read-only file system" in out.stderr, (path, out)
    # What must stay writable: /tmp (emptyDir) and the runs volume.
    for path in ("/tmp/probe", "/var/lib/mlipilot/runs/.probe"):
        podman("exec", container, "sh", "-c", f"touch {path} && rm {path}")
    if not component.startswith("ray"):
        token = podman("exec", container, "cat", "/etc/mlipilot/auth/token").stdout
        assert token == deployment.token  # the Secret's token, mounted, readable by 10001
    say(
        f"{component}: uid/gid {uids[0]}/{gids[0]}, CapEff {status['CapEff']}, NoNewPrivs 1, "
        f"seccomp filter, read-only root (touch / -> Read-only file system), /tmp and runs "
        f"writable" + ("" if component.startswith("ray") else ", token mounted from the Secret")
    )


@pytest.mark.parametrize("component", ["orchestrator", "scorecard"])
def test_the_secrets_token_is_required(
    deployment: Deployment, component: str, tmp_path: Path
) -> None:
    import grpc

    from mlipilot.rpc.channel import open_channel
    from mlipilot.v1 import (
        orchestrator_pb2,
        orchestrator_pb2_grpc,
        scorecard_pb2,
        scorecard_pb2_grpc,
    )

    def call(token: str | None) -> grpc.StatusCode:
        channel = open_channel(deployment.address(component), token=token)
        try:
            if component == "orchestrator":
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
                stub.ListCampaigns(orchestrator_pb2.ListCampaignsRequest(), timeout=10)
            else:
                stub = scorecard_pb2_grpc.ScorecardServiceStub(channel)
                stub.ListScorecards(scorecard_pb2.ListScorecardsRequest(), timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()
        finally:
            channel.close()

    assert call(None) == grpc.StatusCode.UNAUTHENTICATED
    assert call("not-" + deployment.token) == grpc.StatusCode.UNAUTHENTICATED
    assert call(deployment.token) == grpc.StatusCode.OK
    # /metrics is behind the same token.
    import urllib.error
    import urllib.request

    url = f"http://{ADDRESS[component]}:9090/metrics"
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url, timeout=10)
    assert denied.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {deployment.token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
    if component == "orchestrator":  # the dashboard (orchestrator.dashboardPort), too
        url = f"http://{ADDRESS[component]}:8050/api/campaigns"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url, timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {deployment.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200
    say(
        f"{component}: no token -> UNAUTHENTICATED, wrong token -> UNAUTHENTICATED, the "
        f"Secret's token -> OK; /metrics (and the dashboard) 401 without it, 200 with it"
    )


def test_the_charts_helm_test_pod_passes(deployment: Deployment, tmp_path: Path) -> None:
    pod = next(d for d in deployment.docs if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    deployment.node.adapt("test", pod["spec"])
    play([pod], tmp_path, "helm-test", ADDRESS["test"])
    name = pod["metadata"]["name"]
    container = container_of(name)
    out = podman("wait", container, timeout=180)
    logs = podman("logs", container, check=False)
    say(f"helm test pod {name}: exit {out.stdout.strip()}\n{logs.stdout}{logs.stderr}".rstrip())
    assert out.stdout.strip() == "0", logs.stdout + logs.stderr


def tiny_campaign(name: str, **compute: object) -> dict[str, Any]:
    """The smallest real campaign: 16 generated Cu EMT frames, the baseline plus one proposal,
    two epochs each, scored by the scorecard pod on the chart's extra tiny spec."""
    return {
        "name": name,
        "data": {
            "kind": "cu-emt",
            "path": "/var/lib/mlipilot/data/cu-emt-deploy",  # under the server's --data-root
            "seed": 0,
            "n_train": 16,
            "n_test": 8,
        },
        "scorecard": "cu-emt-tiny.yaml",  # served from the chart's ConfigMap (scorecards.extra)
        "baseline": {
            "e0s": "zero",
            "scaling": "no_scaling",
            "energy_weight": 1.0,
            "forces_weight": 1.0,
            "lr": 0.001,
            "num_channels": 8,
            "num_interactions": 1,
            "correlation": 2,
            "r_max": 4.0,
            "batch_size": 4,
        },
        "agent": {"kind": "rule-based"},
        "budget": {"iterations": 1, "epochs": 2, "max_train_seconds": 300},
        "compute": {"torch_threads": 1, **compute},
    }


def run_campaign(deployment: Deployment, campaign: dict[str, Any], folder: Path) -> list[Any]:
    """Submit with `mlipilot submit`, watch to the end, read and verify the ledger from the
    volume (what outlives the pods); the ledger's events."""
    from mlipilot.ledger.store import read_events

    path = folder / f"{campaign['name']}.yaml"
    path.write_text(yaml.safe_dump(campaign))
    server = deployment.address("orchestrator")
    token = str(deployment.token_file)
    started = time.monotonic()
    out = mlipilot(
        "submit", str(path), "--server", server, "--token-file", token, "--paths-on-server"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    campaign_id = out.stdout.strip().split()[-1]
    say(f"submitted: campaign {campaign_id}")

    watched = mlipilot(
        "watch", campaign_id, "--server", server, "--token-file", token, timeout=CAMPAIGN_TIMEOUT_S
    )
    say(f"events of {campaign_id} ({time.monotonic() - started:.0f} s):\n{watched.stdout.rstrip()}")
    assert watched.returncode == 0, (
        watched.stdout + watched.stderr + deployment.logs("orchestrator")
    )
    got = mlipilot("get", campaign_id, "--server", server, "--token-file", token)
    say(f"get: {got.stdout.strip()}")
    assert got.returncode == 0, got.stderr

    ledger = deployment.node.claims[f"{RELEASE}-runs"] / "runs" / campaign_id / "ledger.sqlite"
    stat = ledger.stat()
    assert stat.st_uid == UID, f"the ledger is written by uid {stat.st_uid}"
    events = read_events(ledger)
    kinds = [e.event for e in events]
    say(f"ledger {ledger} (owner uid {stat.st_uid}): {len(events)} events: {', '.join(kinds)}")
    for e in events:
        if e.decision:
            say(f"  iteration {e.iteration} {e.candidate}: {e.decision} ({e.reason})")
    verify = mlipilot("ledger", "verify", str(ledger.parent))
    say(f"ledger verify: {verify.stdout.strip()}")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert any(e.decision for e in events), kinds
    assert kinds[0] == "campaign_started" and kinds[-1] == "campaign_finished", kinds
    return events


def test_a_tiny_campaign_runs_through_the_orchestrator_pod(
    deployment: Deployment, tmp_path: Path
) -> None:
    campaign = tiny_campaign("deploy-tiny")
    path = tmp_path / "denied.yaml"
    path.write_text(yaml.safe_dump(campaign))
    server = deployment.address("orchestrator")
    denied = mlipilot("submit", str(path), "--server", server, "--paths-on-server")
    assert denied.returncode != 0, "submit without the token must be refused"
    say(
        f"submit without a token: exit {denied.returncode}: "
        f"{(denied.stdout + denied.stderr).strip()[-200:]}"
    )
    events = run_campaign(deployment, campaign, tmp_path)
    assert sum(e.event == "training" for e in events) == 2


def test_a_campaign_trains_on_the_ray_pods(deployment: Deployment, tmp_path: Path) -> None:
    """compute.ray_address auto: the orchestrator, a Ray client through the chart's RAY_ADDRESS
    and token file, trains the candidates on the worker pod (the same image as a Ray worker)."""
    events = run_campaign(deployment, tiny_campaign("deploy-ray", ray_address="auto"), tmp_path)
    assert sum(e.event == "training" for e in events) == 2
    probe = (
        "import json, ray; from ray.util.state import list_actors; "
        "ray.init(address='auto', logging_level='ERROR'); "
        "nodes = {n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes()}; "
        "print(json.dumps([[a.class_name, a.state, nodes.get(a.node_id)] for a in list_actors()]))"
    )
    out = podman("exec", deployment.containers["ray-head"], "python3", "-c", probe, check=False)
    say(
        f"Ray actors (class, state, node address): {out.stdout.strip()} {out.stderr.strip()[-300:]}"
    )
    actors = json.loads(out.stdout.strip().splitlines()[-1])
    trainers = [a for a in actors if "Trainer" in a[0]]
    assert trainers and all(a[2] == ADDRESS["ray-worker"] for a in trainers), actors
