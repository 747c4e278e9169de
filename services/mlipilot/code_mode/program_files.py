"""What the orchestrator reads of a training program without running it: its identity (the
digest of its editable files) and its knobs (the recipe keys it takes)."""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlipilot.process_globals import GLOBALS_LOCK
from mlipilot.recipe import Recipe, RecipeError

TEMPLATE = Path(__file__).parent / "template"  # the baseline program every campaign starts from
PROGRAM = "training/program.py"  # the template's editable file


def program_digest(files: Mapping[str, str]) -> str:
    """sha256 over the editable files (path and text): equal digests train alike."""
    text = json.dumps(dict(sorted(files.items())), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def program_knobs(program: str) -> tuple[str, ...]:
    """The recipe keys a training program reads: its ``KNOBS`` dict's keys (read, never run)."""
    with GLOBALS_LOCK:
        tree = ast.parse(program)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "KNOBS" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return tuple(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return ()


TEMPLATE_KNOBS = program_knobs((TEMPLATE / PROGRAM).read_text())


def recipe_job(recipe: Recipe, knobs: tuple[str, ...] = TEMPLATE_KNOBS) -> dict[str, Any]:
    """The program's job: the recipe's values for the knobs the program has.

    A recipe that sets any other key away from its default is refused: that change would be
    silently ignored, since the program, not mace_run_train, decides how to train.
    """
    default = Recipe()
    ignored = sorted(
        k
        for k in type(recipe).model_fields
        if k not in knobs and getattr(recipe, k) != getattr(default, k)
    )
    if ignored:
        raise RecipeError(
            f"code mode: the training program has no knob for {', '.join(ignored)} (its knobs: "
            f"{', '.join(k for k in knobs if k in type(recipe).model_fields)}); "
            "change the program instead, or leave these keys at their defaults"
        )
    return {k: getattr(recipe, k) for k in knobs if k in type(recipe).model_fields}
