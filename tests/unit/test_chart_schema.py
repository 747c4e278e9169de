"""values.schema.json: in step with values.yaml (keys, `@schema` enum tags, `# --` docs), and
helm refusing bad values with a message that names the key."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml
from chart_render import CHART, render_error

VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _pairs(values: Any, schema: dict[str, Any], path: str) -> list[tuple[str, Any, dict]]:
    """(path, value, schema) for every value whose schema lists properties, recursively."""
    found = [(path, values, schema)]
    if not isinstance(values, dict):
        return found
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, value in values.items():
        sub = props.get(key) if props else (extra if isinstance(extra, dict) else None)
        if sub is not None:
            found += _pairs(value, sub, f"{path}.{key}".lstrip("."))
    return found


def test_values_yaml_passes_its_own_schema() -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)


def test_schema_and_values_have_the_same_keys() -> None:
    for path, value, schema in _pairs(VALUES, SCHEMA, ""):
        if not isinstance(value, dict) or "properties" not in schema:
            continue
        if schema.get("additionalProperties") is False:
            unknown = set(value) - set(schema["properties"])
            assert not unknown, f"{path or '(top)'}: {unknown} in values.yaml, not in the schema"
        undocumented = set(schema["properties"]) - set(value) - {"global"}
        assert not undocumented, f"{path or '(top)'}: {undocumented} in the schema only"


def _key_lines() -> list[tuple[int, str, list[str]]]:
    """(indent, key, the comment lines right above it) for every key line of values.yaml."""
    out, comments = [], []
    for line in VALUES_TEXT.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if match:
            out.append((len(match.group(1)), match.group(2), comments))
        comments = []
    return out


def test_schema_enum_tags_match_the_schema() -> None:
    tags = 0
    stack: list[tuple[int, str]] = []
    for indent, key, comments in _key_lines():
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        for comment in comments:
            tag = re.match(r"# @schema enum:\[(.*)\]", comment)
            if not tag:
                continue
            tags += 1
            node = SCHEMA
            for _, part in stack:
                node = node["properties"][part]
            enum = [v.strip() for v in tag.group(1).split(",")]
            assert node.get("enum") == enum, ".".join(k for _, k in stack)
    assert tags >= 5


def test_every_value_is_documented() -> None:
    """KubeRay/helm-docs style: a key has a `# --` line, or all its children do."""
    lines = _key_lines()

    def ok(i: int) -> bool:
        indent, _, comments = lines[i]
        if any(c.startswith("# --") for c in comments):
            return True
        children = []
        for j in range(i + 1, len(lines)):
            if lines[j][0] <= indent:
                break
            if not children or lines[j][0] == lines[children[0]][0]:
                children.append(j)
        return bool(children) and all(ok(j) for j in children)

    missing = [key for i, (indent, key, _) in enumerate(lines) if indent == 0 and not ok(i)]
    assert not missing


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("vllm.model.family=llama", "vllm.model.family"),
        ("vllm.tensorParallelSize=0", "vllm.tensorParallelSize"),
        ("vllm.gpuMemoryUtilization=1.5", "vllm.gpuMemoryUtilization"),
        ("ray.rayVersion=latest", "ray.rayVersion"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("orchestrator.port=70000", "orchestrator.port"),
        ("tls.mode=on", "tls.mode"),
        ("tls.enabled=true", "enabled"),  # replaced by tls.mode
        ("ray.auth.enabled=yes", "ray.auth.enabled"),
        ("ray.head.dashboardHost=", "ray.head.dashboardHost"),
        ("orchestrator.maxCampaigns=0", "orchestrator.maxCampaigns"),
        ("scorecard.maxQueued=0", "scorecard.maxQueued"),
        ("auth.allowInsecure=maybe", "auth.allowInsecure"),
        ("persistence.accessModes[0]=ReadWriteSometimes", "persistence.accessModes"),
        ("ray.workerGroups.GPU_Group.enabled=true", "ray.workerGroups"),
        ("ray.workerGroups.gpu.gpusPerWorker=-1", "ray.workerGroups.gpu.gpusPerWorker"),
        ("scorecards.extra.notes\\.txt=x", "scorecards.extra"),
        ("ray.autoscaler.upscalingMode=Fast", "ray.autoscaler.upscalingMode"),
        ("orchestrator.replicas=2", "orchestrator"),  # a single writer: no such knob
        ("vllm.extraArgs.--model=x", "vllm.extraArgs"),
        ("image.digest=sha256:short", "image.digest"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(setting: str, message: str) -> None:
    assert message in render_error(sets=(setting,))


def test_schema_accepts_what_the_scenarios_set() -> None:
    """Not one refusal too many: every ci file's keys are known to the schema."""
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        values = yaml.safe_load(path.read_text())
        errors = [
            e.message
            for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)
            if "additional" in e.message.lower()
        ]
        assert not errors, f"{path.name}: {errors}"
