"""Rendering charts/mlipilot with the real helm binary, for the chart tests.

helm comes from `make helm` (into the venv's bin) or PATH; without it the chart tests fail
rather than skip, so a CI without helm cannot pass them silently.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mlipilot"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "mlipilot"
NAMESPACE = "mlipilot"
# `helm template --api-versions`: a cluster that serves cert-manager's API.
CERT_MANAGER = ("cert-manager.io/v1",)


def helm() -> str:
    local = Path(sys.prefix) / "bin" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    if found is None:
        pytest.fail("helm not found: run `make helm` (or `make install`)")
    return found


def _helm_args(
    values: tuple[str, ...], sets: tuple[str, ...], api_versions: tuple[str, ...] = ()
) -> list[str]:
    args: list[str] = []
    for name in values:
        args += ["-f", str(CHART / "ci" / name)]
    for item in sets:
        args += ["--set", item]
    for api in api_versions:
        args += ["--api-versions", api]
    return args


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


@functools.cache
def _render(
    values: tuple[str, ...], sets: tuple[str, ...], release: str, api_versions: tuple[str, ...]
) -> tuple[Any, ...]:
    args = _helm_args(values, sets, api_versions)
    proc = run_helm("template", release, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def render(
    *values: str,
    sets: tuple[str, ...] = (),
    release: str = RELEASE,
    api_versions: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders with ci/<values> files and --set items, for a
    cluster that also serves ``api_versions`` (e.g. CERT_MANAGER)."""
    return [dict(d) for d in _render(tuple(values), tuple(sets), release, tuple(api_versions))]


def render_error(
    *values: str, sets: tuple[str, ...] = (), api_versions: tuple[str, ...] = ()
) -> str:
    """helm template's error output; fails the test if rendering succeeded."""
    args = _helm_args(values, sets, api_versions)
    proc = run_helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode != 0, f"expected helm to refuse {values} {sets}"
    return proc.stderr


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(matches) == 1, f"container {name}: {len(matches)}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the chart renders: Deployments, the test Pod, RayCluster head and groups."""
    specs = []
    for o in objects:
        label = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Deployment":
            specs.append((label, o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((label, o["spec"]))
        elif o["kind"] == "RayCluster":
            specs.append((f"{label}/head", o["spec"]["headGroupSpec"]["template"]["spec"]))
            for group in o["spec"].get("workerGroupSpecs", []):
                specs.append((f"{label}/{group['groupName']}", group["template"]["spec"]))
    return specs
