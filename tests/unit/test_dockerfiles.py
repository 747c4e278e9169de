"""docker/Dockerfile checked without building it (no Docker engine here; CI elsewhere builds):
pinned bases, one base for every stage, a non-root user, an entrypoint and flags that exist in
the package, and versions that agree with the chart, the Makefile and pyproject.toml."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import CHART, REPO, container, find, one, pod_specs, render
from packaging.specifiers import SpecifierSet
from typer.testing import CliRunner

from mlipilot.cli import app

DOCKERFILE = REPO / "docker" / "Dockerfile"
tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


INSTRUCTIONS = _instructions(DOCKERFILE.read_text())


def _args() -> dict[str, str]:
    """Every ARG with a default (global and per stage; names are unique in this file)."""
    found = {}
    for word, rest in INSTRUCTIONS:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            assert name not in found, f"ARG {name} twice"
            found[name] = value.strip('"')
    return found


ARGS = _args()


def _expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: ARGS[m.group(1) or m.group(2)], text)


def _stages() -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for word, rest in INSTRUCTIONS:
        if word == "FROM":
            image, *alias = rest.split(" AS ") if " AS " in rest else (rest,)
            stages.append({"base": _expand(image.strip()), "name": alias, "lines": []})
        elif stages:
            stages[-1]["lines"].append((word, rest))
    return stages


STAGES = _stages()


def _pinned(image: str) -> bool:
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    return bool(re.match(r"^v?\d+\.\d+\.\d+", tag))  # an exact release, not "3.12" or "latest"


def test_every_base_is_pinned_and_there_is_one_base() -> None:
    bases = {s["base"] for s in STAGES}
    assert len(STAGES) >= 2
    assert all(_pinned(b) for b in bases), bases
    # Build and runtime stages (and so the CPU and CUDA builds) share one Python base.
    assert len(bases) == 1


def test_pinning_check_itself() -> None:
    assert _pinned("python:3.12.12-slim-bookworm")
    assert _pinned("vllm/vllm-openai:v0.33.0")
    assert _pinned("python@sha256:" + "a" * 64)
    assert not _pinned("python:3.12-slim")
    assert not _pinned("python:latest")
    assert not _pinned("python")


def test_runtime_runs_as_a_non_root_user_the_chart_expects() -> None:
    users = [rest for word, rest in STAGES[-1]["lines"] if word == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    assert int(gid or uid) == values["podSecurityContext"]["runAsGroup"]


def test_entrypoint_is_the_packages_console_script() -> None:
    (entrypoint,) = [rest for word, rest in STAGES[-1]["lines"] if word == "ENTRYPOINT"]
    program = yaml.safe_load(entrypoint)[0]  # JSON (exec) form
    assert PYPROJECT["scripts"].get(program) == "mlipilot.cli:app"


def test_workdir_is_the_orchestrators() -> None:
    (workdir,) = [rest for word, rest in STAGES[-1]["lines"] if word == "WORKDIR"]
    orchestrator = one(render(), "Deployment", "mlipilot-orchestrator")
    assert container(orchestrator["spec"]["template"]["spec"], "orchestrator")["workingDir"] == (
        workdir
    )


def test_copied_sources_exist() -> None:
    for stage in STAGES:
        for word, rest in stage["lines"]:
            if word == "COPY" and "--from" not in rest:
                parts = [p for p in shlex.split(rest) if not p.startswith("--")]
                for source in parts[:-1]:
                    assert (REPO / source).exists(), source


def test_versions_agree_with_pyproject_makefile_and_chart() -> None:
    ray = ARGS["RAY_VERSION"]
    ray_spec = next(r for r in PYPROJECT["dependencies"] if re.match(r"ray\b", r))
    assert ray in SpecifierSet(re.sub(r"^ray(\[[^]]*\])?", "", ray_spec).split(";")[0])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["ray"]["rayVersion"] == ray  # KubeRay is told the Ray the image has
    makefile = (REPO / "Makefile").read_text()
    assert f"TORCH_SPEC ?= torch=={ARGS['TORCH_VERSION']}" in makefile
    python = re.search(r"python:(\d+\.\d+)\.\d+", ARGS["PYTHON_IMAGE"]).group(1)
    assert f"{python}.0" in SpecifierSet(PYPROJECT["requires-python"])
    assert "ray[default]==${RAY_VERSION}" in DOCKERFILE.read_text()  # dashboard agent


def test_chart_images_are_pinned() -> None:
    for values in (None, "gpu-values.yaml"):
        for label, spec in pod_specs(render(*([values] if values else []))):
            for c in spec["containers"]:
                assert _pinned(c["image"]), f"{label}: {c['image']}"


def test_ray_needs_its_console_script() -> None:
    # KubeRay runs `ray start` and the chart's preStop `ray stop`: the package must provide it.
    assert list(entry_points(group="console_scripts", name="ray"))


def _mlipilot_commands() -> list[list[str]]:
    """Every mlipilot command line the chart renders (containers, probes, the test pod)."""
    lines = []
    for values in (None, "tls-values.yaml"):
        for _, spec in pod_specs(render(*([values] if values else []))):
            for c in spec["containers"]:
                if c.get("command") == ["mlipilot"]:
                    lines.append(c["args"])
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    command = c.get(probe, {}).get("exec", {}).get("command", [])
                    if command[:1] == ["mlipilot"]:
                        lines.append(command[1:])
                if c.get("command") == ["/bin/sh", "-ec"]:
                    for line in c["args"][0].splitlines():
                        if line.strip().startswith("mlipilot "):
                            lines.append(shlex.split(line)[1:])
    return lines


def test_commands_and_flags_the_chart_uses_exist() -> None:
    runner = CliRunner()
    lines = _mlipilot_commands()
    assert len(lines) >= 6
    seen = set()
    for args in lines:
        words = [a for a in args[:2] if not a.startswith("-")]
        seen.add(" ".join(words))
        result = runner.invoke(app, [*words, "--help"], terminal_width=200)
        assert result.exit_code == 0, (words, result.output)
        flags = {a.split("=")[0] for a in args if a.startswith("--")}
        missing = {f for f in flags if f not in result.output}
        assert not missing, f"mlipilot {' '.join(words)}: the chart passes {missing}"
    assert {"serve orchestrator", "serve scorecard", "cluster grpc-health"} <= seen
    assert "cluster status" in seen


@pytest.mark.parametrize("component", ["orchestrator", "scorecard"])
def test_services_listen_on_all_interfaces_in_the_container(component: str) -> None:
    deployment = find(render(), "Deployment", f"mlipilot-{component}")[0]
    args = container(deployment["spec"]["template"]["spec"], component)["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"  # the CLI's default is 127.0.0.1


def test_runtime_installs_the_openmp_runtime_tblite_links_but_does_not_bundle() -> None:
    import tblite

    package = Path(tblite.__file__).parent
    extension = next(package.glob("_libtblite*.so"))
    bundled = [p.name for p in (package.parent / "tblite.libs").glob("*")]
    # The dynamic section names the library; a bundled copy would carry a hashed name.
    assert b"libgomp.so.1\x00" in extension.read_bytes()
    assert not any(name.startswith("libgomp") for name in bundled), bundled
    runtime = DOCKERFILE.read_text().split("AS runtime", 1)[1]
    installs = [rest for word, rest in _instructions(runtime) if word == "RUN"]
    assert any("apt-get install" in r and " libgomp1" in r for r in installs), installs
