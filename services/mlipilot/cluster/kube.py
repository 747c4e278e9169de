"""Connecting to the Kubernetes API, and the few reads the cluster view needs, as plain dicts."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mlipilot.errors import MlipilotError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"

T = TypeVar("T")


@dataclass
class Connection:
    """An API client and the namespace to look in when none is given."""

    api_client: Any  # kubernetes.client.ApiClient
    namespace: str
    where: str  # for messages: "in-cluster service account" or "kubeconfig context X"


def connect(
    kubeconfig: Path | None = None,
    context: str | None = None,
    *,
    environ: dict[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> Connection:
    """In a pod (KUBERNETES_SERVICE_HOST set, no kubeconfig or context asked for): the pod's
    service account; elsewhere the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    env = os.environ if environ is None else environ
    configuration = client.Configuration()
    if kubeconfig is None and context is None and env.get("KUBERNETES_SERVICE_HOST"):
        loader = config.incluster_config.InClusterConfigLoader(
            token_filename=str(service_account_dir / "token"),
            cert_filename=str(service_account_dir / "ca.crt"),
            environ=env,
        )
        try:
            loader.load_and_set(configuration)
        except config.ConfigException as exc:
            raise MlipilotError(f"in-cluster Kubernetes configuration: {exc}") from exc
        ns_file = service_account_dir / "namespace"
        namespace = ns_file.read_text().strip() if ns_file.is_file() else "default"
        return Connection(client.ApiClient(configuration), namespace, "in-cluster service account")
    config_file = str(kubeconfig) if kubeconfig else None
    try:
        contexts, active = config.list_kube_config_contexts(config_file=config_file)
        if context is not None:
            active = next((c for c in contexts if c.get("name") == context), None)
            if active is None:
                names = ", ".join(c.get("name", "?") for c in contexts)
                raise MlipilotError(f"kubeconfig has no context {context!r} (it has: {names})")
        config.load_kube_config(
            config_file=config_file, context=context, client_configuration=configuration
        )
    except (config.ConfigException, OSError) as exc:
        raise MlipilotError(
            f"no usable Kubernetes configuration ({exc}): pass --kubeconfig or --context, or "
            "set KUBECONFIG"
        ) from exc
    namespace = (active or {}).get("context", {}).get("namespace") or "default"
    name = (active or {}).get("name", "?")
    return Connection(client.ApiClient(configuration), namespace, f"kubeconfig context {name}")


class ClusterReader:
    """The reads of the cluster view, each returning the API's JSON (camelCase dicts)."""

    def __init__(self, connection: Connection) -> None:
        from kubernetes import client

        self.connection = connection
        api = connection.api_client
        self._apps = client.AppsV1Api(api)
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._discovery = client.DiscoveryV1Api(api)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except ApiException as exc:
            if exc.status in (401, 403):
                raise MlipilotError(
                    f"the Kubernetes API refused to {what} ({exc.status} {exc.reason}) as "
                    f"{self.connection.where}: bind the release's <fullname>-cluster-view Role "
                    "(chart value clusterView.extraSubjects) or use an account that may read it"
                ) from exc
            raise MlipilotError(
                f"the Kubernetes API failed to {what}: {exc.status} {exc.reason}"
            ) from exc
        except HTTPError as exc:
            host = self.connection.api_client.configuration.host
            raise MlipilotError(f"cannot reach the Kubernetes API at {host}: {exc}") from exc

    def _items(self, what: str, fn: Callable[[], Any]) -> list[dict[str, Any]]:
        result = self._call(what, fn)
        data = self.connection.api_client.sanitize_for_serialization(result)
        return list(data.get("items") or [])

    def deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._items(
            f"list Deployments in {namespace}",
            lambda: self._apps.list_namespaced_deployment(namespace, label_selector=selector),
        )

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self._items(
            f"list Pods in {namespace}",
            lambda: self._core.list_namespaced_pod(namespace, label_selector=selector),
        )

    def endpoint_slices(self, namespace: str, service: str) -> list[dict[str, Any]]:
        selector = f"kubernetes.io/service-name={service}"
        return self._items(
            f"list EndpointSlices of Service {service} in {namespace}",
            lambda: self._discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=selector
            ),
        )

    def rayclusters(self, namespace: str, selector: str) -> list[dict[str, Any]] | None:
        """The RayClusters, or None when the API has no RayCluster kind (no KubeRay)."""
        from kubernetes.client.exceptions import ApiException

        def fetch() -> dict[str, Any] | None:
            try:
                return self._custom.list_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, label_selector=selector
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

        result = self._call(f"list RayClusters in {namespace}", fetch)
        return None if result is None else list(result.get("items") or [])
