"""The packages stay layered: each imports only from its own layer and the layers below.

The order, lowest first, is the order of dependence: a campaign drives agents that read the
ledger, trainers run tasks the campaign hands them, and nothing below ``campaign`` knows it
exists. An import that goes up (even one inside a function) fails here, naming both ends.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "services" / "mlipilot"

LAYERS: list[set[str]] = [
    # plain modules every layer may use
    {"errors", "recipe", "config", "yaml_files", "atomic_files", "process_globals", "faults"}
    | {"ray_runtime", "stopping", "supervised", "cli_output", "v1"},
    {"data", "model_files"},
    {"scoring"},
    {"ledger"},
    {"training"},  # the training contract (tasks, trainers) and mace_run_train
    {"code_mode"},  # the candidate's own program: a kind of training task
    {"agents"},
    {"report"},
    {"validation"},
    {"campaign"},
    {"rpc", "cluster", "dashboard"},
    {"cli", "cli_services"},
]


def layer_of(top: str) -> int:
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"mlipilot.{top} is in no layer: add it to LAYERS in {__file__}")


def imported_tops(source: str) -> set[str]:
    """The ``mlipilot`` sub-package or module each import of ``source`` reaches."""
    tops = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mlipilot" and len(parts) > 1:
                tops.add(parts[1])
    return tops


def upward_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        top = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if top == "__init__":
            continue
        own = layer_of(top)
        for target in sorted(imported_tops(path.read_text())):
            if target != top and layer_of(target) > own:
                found.append(f"{rel} imports mlipilot.{target}, a layer above {top}")
    return found


def test_no_package_imports_a_layer_above_it() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import_even_inside_a_function() -> None:
    source = "def f():\n    from mlipilot.campaign.loop import run_campaign\n"
    assert imported_tops(source) == {"campaign"}
    assert layer_of("campaign") > layer_of("training")
