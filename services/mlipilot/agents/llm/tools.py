"""The tools a model may call, and what each answers from the campaign state.

Reading tools return short text built by ``state_view``; ``propose`` checks the patch against
the recipe schema and either ends the conversation with a ``Proposal`` or answers with the
reason it was refused, so the model can correct itself. Every bad call (unknown tool,
arguments that are not a JSON object, a refused patch) is answered, never raised.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mlipilot.agents.base import CampaignState, Proposal
from mlipilot.agents.llm import state_view
from mlipilot.code_mode.diffs import CodeEditError
from mlipilot.code_mode.program_files import (
    PROGRAM,
    TEMPLATE_KNOBS,
    program_digest,
    program_knobs,
    recipe_job,
)
from mlipilot.code_mode.repo import apply_to_files
from mlipilot.errors import clipped
from mlipilot.recipe import Recipe, RecipeError, allowed_range

PROPOSE = "propose"
HYPOTHESIS_MAX = 400  # characters: one or two sentences (also stops a model that rambles)


def _tool(name: str, description: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties or {},
                "required": sorted(properties or {}),
            },
        },
    }


PROPOSAL_PROPERTIES: dict[str, Any] = {
    "hypothesis": {
        "type": "string",
        "maxLength": HYPOTHESIS_MAX,
        "description": "why this change should improve the failing or weakest metric",
    },
    "patch": {
        "type": "object",
        "description": 'recipe keys to change and their new values: {"<key>": <value>, ...}',
    },
}

TOOLS: list[dict[str, Any]] = [
    _tool("get_scorecard", "The scorecard: constraints, thresholds, composite, decision rule."),
    _tool("get_incumbent", "The incumbent recipe (all keys) and its scorecard result."),
    _tool("get_history", "Every tried candidate: patch, verdict, outcome, hypothesis."),
    _tool(
        "get_run",
        "One tried candidate in detail: per-constraint values and margins, MD replica outcomes.",
        {"iteration": {"type": "integer", "description": "the iteration number (0: baseline)"}},
    ),
    _tool("get_recipe_space", "Every recipe key with its allowed values or range."),
    _tool(
        PROPOSE,
        "Propose one recipe change for the next training run. Ends your turn when accepted.",
        PROPOSAL_PROPERTIES,
    ),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOLS]

# Code mode: the program can be read, and a proposal may carry a diff of it.
READ_PROGRAM = "read_program"
CODE_PROPOSAL_PROPERTIES: dict[str, Any] = {
    **PROPOSAL_PROPERTIES,
    "patch": {
        "type": "object",
        "description": (
            'recipe keys to change: {"<key>": <value>, ...}; {} to change only the program'
        ),
    },
    "diff": {
        "type": "string",
        "description": "a unified diff (---/+++ headers, @@ hunks) of the editable program "
        'files against the incumbent\'s program, as read_program shows it; "" for none',
    },
}
CODE_TOOLS: list[dict[str, Any]] = [
    *(t for t in TOOLS if t["function"]["name"] != PROPOSE),
    _tool(
        READ_PROGRAM,
        "Code mode: one editable file of the incumbent's training program (the program that "
        "trains every candidate, in a sandbox).",
        {"path": {"type": "string", "description": "e.g. training/program.py"}},
    ),
    _tool(
        PROPOSE,
        "Propose one change for the next training run: a recipe patch, a diff of the program, "
        "or both. Ends your turn when accepted.",
        CODE_PROPOSAL_PROPERTIES,
    ),
]


def tools_for(state: CampaignState) -> list[dict[str, Any]]:
    """The tools of this campaign's mode: code mode adds reading and diffing the program."""
    return TOOLS if state.program is None else CODE_TOOLS


def proposal_json_schema(code_mode: bool = False) -> dict[str, Any]:
    """The JSON schema of a proposal for structured output: the patch as the recipe's keys
    (in code mode the patch may be empty, and a ``diff`` of the program comes with it)."""
    keys = Recipe.model_json_schema()["properties"]
    patch = {
        "type": "object",
        "properties": {
            k: {f: v for f, v in spec.items() if f not in ("title", "default", "description")}
            for k, spec in keys.items()
        },
        "additionalProperties": False,
        "minProperties": 1,
    }
    properties: dict[str, Any] = {
        "hypothesis": {"type": "string", "minLength": 1, "maxLength": HYPOTHESIS_MAX},
        "patch": patch,
    }
    if code_mode:
        patch["minProperties"] = 0
        properties["diff"] = {"type": "string"}
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


@dataclass
class ToolAnswer:
    content: str
    error: bool = False
    proposal: Proposal | None = None


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as a dict: a JSON object in a string (or already a dict)."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"arguments are not valid JSON ({exc}): {clipped(str(raw), 200)}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"arguments must be a JSON object, got {clipped(str(raw), 200)}")
    return value


def call_tool(state: CampaignState, name: str, raw_arguments: Any) -> ToolAnswer:
    """What the named tool answers; a bad call is answered with an error the model can fix."""
    names = [t["function"]["name"] for t in tools_for(state)]
    if name not in names:
        return ToolAnswer(f"error: unknown tool {name!r}; tools: {names}", error=True)
    try:
        args = parse_arguments(raw_arguments)
    except ValueError as exc:
        return ToolAnswer(f"error: {name}: {exc}", error=True)
    if name == PROPOSE:
        return check_proposal(state, args)
    if name == READ_PROGRAM:
        return _read_program(state, args.get("path"))
    if name == "get_run":
        iteration = args.get("iteration")
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            return ToolAnswer('error: get_run needs {"iteration": <integer>}', error=True)
        text = state_view.run_details(state, iteration)
        return ToolAnswer(text, error=text.startswith("error:"))
    reader = {
        "get_scorecard": state_view.scorecard_text,
        "get_incumbent": state_view.incumbent_text,
        "get_history": lambda s: state_view.history_table(s.history),
        "get_recipe_space": lambda s: state_view.recipe_space_text(),
    }[name]
    return ToolAnswer(reader(state))


def _read_program(state: CampaignState, path: Any) -> ToolAnswer:
    program = state.program or {}
    if not isinstance(path, str) or path not in program:
        return ToolAnswer(
            f"error: read_program needs a path among the editable files {sorted(program)}",
            error=True,
        )
    return ToolAnswer(program[path])


LEVERS_SHOWN = 3  # untried keys a refusal spells out with their ranges


def levers_text(state: CampaignState, turn: int = 0) -> str:
    """``LEVERS_SHOWN`` keys no candidate has changed yet, with what each may be: concrete
    moves for a model that copies a row of the history (Qwen2.5-Coder-1.5B did, iteration
    after iteration). ``turn`` rotates the choice, so a model refused again sees others."""
    keys = state_view.untouched_keys(state)
    if not keys:
        return ""
    start = turn * LEVERS_SHOWN % len(keys)
    shown = (keys[start:] + keys[:start])[:LEVERS_SHOWN]
    return "untried, for example: " + "; ".join(allowed_range(k) for k in shown)


def _untouched_hint(state: CampaignState) -> str:
    keys = state_view.untouched_keys(state)
    if not keys:
        return "see get_history"
    return "keys no candidate has changed yet: " + ", ".join(keys) + ". " + levers_text(state)


def check_proposal(state: CampaignState, args: dict[str, Any]) -> ToolAnswer:
    """A ``Proposal`` when hypothesis and patch (and in code mode the diff) are valid and new,
    else the reason why not."""
    if state.program is not None:
        return _check_code_proposal(state, args)
    hypothesis, patch = args.get("hypothesis"), args.get("patch")
    if problem := _argument_problem(args, ("hypothesis", "patch")):
        return _refused(problem)
    if isinstance(patch, str):  # some models send the patch as a JSON string
        with contextlib.suppress(json.JSONDecodeError):
            patch = json.loads(patch)
    if not isinstance(patch, dict) or not patch:
        return _refused(f"patch must be a non-empty JSON object of recipe keys: {_PATCH_FORM}")
    try:
        recipe = state.incumbent.patched(patch)
    except RecipeError as exc:
        return _refused(str(exc))
    if why := state.untrainable(recipe):
        return _refused(why)
    if recipe == state.incumbent:
        same = ", ".join(f"{k} is {state_view.compact(v)}" for k, v in sorted(patch.items()))
        return _refused(
            f"the patch changes nothing: the incumbent's {same} already; " + _untouched_hint(state)
        )
    if state.tried(recipe):
        where = state_view.tried_at(state, recipe)
        return _refused(
            f"that recipe was tried already at {where}; propose another; " + _untouched_hint(state)
        )
    return ToolAnswer(
        "accepted: the candidate will be trained and scored",
        proposal=Proposal(hypothesis=hypothesis.strip(), patch=patch),
    )


def _check_code_proposal(state: CampaignState, args: dict[str, Any]) -> ToolAnswer:
    """Code mode: a patch (possibly empty) and a diff (possibly empty), not both empty; the
    recipe within the program's knobs, the diff applying to the incumbent's program."""
    assert state.program is not None
    hypothesis, patch, diff = args.get("hypothesis"), args.get("patch", {}), args.get("diff", "")
    if problem := _argument_problem(args, ("hypothesis", "patch", "diff")):
        return _refused(problem)
    if isinstance(patch, str):
        with contextlib.suppress(json.JSONDecodeError):
            patch = json.loads(patch) if patch.strip() else {}
    if patch is None:
        patch = {}
    if not isinstance(patch, dict):
        return _refused(f"patch must be a JSON object of recipe keys, {_PATCH_FORM}, or {{}}")
    if diff is None:
        diff = ""
    if not isinstance(diff, str):
        return _refused("diff must be a string: a unified diff of the program, or empty")
    if not patch and not diff.strip():
        return _refused("give a recipe patch, a diff of the program, or both")
    try:
        recipe = state.incumbent.patched(patch)
        knobs = program_knobs(state.program.get(PROGRAM, "")) or TEMPLATE_KNOBS
        recipe_job(recipe, knobs)
        files = apply_to_files(state.program, diff) if diff.strip() else dict(state.program)
    except (RecipeError, CodeEditError) as exc:
        return _refused(str(exc))
    if why := state.untrainable(recipe):
        return _refused(why)
    program = program_digest(files)
    if recipe == state.incumbent and program == state.program_sha256:
        return _refused("this changes nothing: the recipe and the program equal the incumbent's")
    if state.tried(recipe, program):
        return _refused("that recipe and program were tried already (see get_history)")
    return ToolAnswer(
        "accepted: the candidate will be trained and scored",
        proposal=Proposal(hypothesis=hypothesis.strip(), patch=patch, diff=diff or None),
    )


def _argument_problem(args: dict[str, Any], allowed: tuple[str, ...]) -> str | None:
    """What is wrong with propose's arguments before their content is read, or None."""
    unexpected = sorted(set(args) - set(allowed))
    if unexpected:
        return f"unexpected argument(s) {unexpected}; give {', '.join(allowed)} only"
    hypothesis = args.get("hypothesis")
    if not isinstance(hypothesis, str) or not hypothesis.strip():
        return "hypothesis must be a non-empty string"
    if not _WORD.search(hypothesis):  # "...", "<why>": a template copied, not a reason
        return "hypothesis must say in words why the change should help"
    if len(hypothesis) > HYPOTHESIS_MAX:
        return f"hypothesis is longer than {HYPOTHESIS_MAX} characters: be brief"
    return None


_PATCH_FORM = '{"<key>": <value>, ...}'  # a form, not a patch a model could copy as its own
_WORD = re.compile(r"[^\W\d_]{3}")  # three letters in a row, in any script


def _refused(reason: str) -> ToolAnswer:
    return ToolAnswer(f"error: proposal refused: {reason}", error=True)
