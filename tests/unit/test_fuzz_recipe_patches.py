"""Fuzzed recipe patches: applied exactly as asked, or refused naming the offending key.

A patch is what an agent (an LLM, Optuna, a person) proposes, so it can hold anything JSON or
YAML can: known keys with values of every type and on or past their bounds, unknown keys
(also non-string ones), nested junk, or not be a mapping at all. ``Recipe.patched`` must either
return a recipe that re-validates and whose ``diff`` from the original is exactly the effective
change, or raise ``RecipeError`` (a ``MlipilotError``, so a ``ValueError``) whose message names
the offending keys; no other exception may escape.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe, RecipeError, bounds, choices

KEYS = sorted(Recipe.model_fields)
BASES = [
    Recipe(),
    Recipe(loss="huber", ema=True, num_channels=32, r_max=4.5, default_dtype="float32"),
    Recipe(stage_two=True, loss="ef", lr=0.001, max_L=2, seed=0),
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def plausible(key: str) -> st.SearchStrategy[Any]:
    """Values a proposer would plausibly send for ``key``: in range, on a bound, just past it."""
    options = choices(key)
    if options is not None:
        near = [str(o) for o in options] + [str(o).upper() for o in options]
        return st.sampled_from(options) | st.sampled_from([*near, "true", "no", 1, 0, 2, None])
    low, high, _ = bounds(key)
    edges = [low, high, low - 1, high + 1, low / 2, high * 2, math.nan, math.inf, -math.inf]
    is_int = Recipe.model_fields[key].annotation is int
    inside = (
        st.integers(int(low), int(high))
        if is_int
        else st.floats(low, high, allow_nan=False, allow_infinity=False)
    )
    spelled = inside.map(str)  # "16", "0.01": lax validation may accept numeric strings
    return inside | st.sampled_from(edges) | spelled | st.floats() | st.integers()


@st.composite
def patches(draw: st.DrawFn) -> dict[Any, Any]:
    patch: dict[Any, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True)):
        patch[key] = draw(plausible(key) | JSON)
    if draw(st.integers(0, 3)) == 0:  # sometimes unknown keys, of any hashable type
        for key in draw(st.lists(st.text(max_size=10) | st.integers() | st.none(), max_size=2)):
            if key not in Recipe.model_fields:
                patch[key] = draw(JSON)
    return patch


_TRUE = {"1", "on", "t", "true", "y", "yes"}  # what pydantic's lax mode reads as a bool
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _accepted_as(given: Any, value: Any) -> bool:
    """Whether pydantic's lax mode may have turned ``given`` into ``value``."""
    if isinstance(given, str) and isinstance(value, bool):
        return given.strip().lower() in (_TRUE if value else _FALSE)
    if isinstance(given, str) and isinstance(value, int | float):
        try:
            return float(given) == value
        except ValueError:
            return False
    return bool(given == value)


def _bad_alone(key: str, value: Any) -> bool:
    try:
        Recipe.model_validate({key: value})
    except ValidationError:
        return True
    return False


@settings(max_examples=1500)
@given(base=st.sampled_from(BASES), patch=patches())
@example(base=BASES[0], patch={1: 2, "a": 3, None: 4})
@example(base=BASES[0], patch={"stage_two": True, "loss": "forces_only"})
@example(base=BASES[2], patch={"loss": "forces_only"})
@example(base=BASES[0], patch={"lr": "1e-3", "num_channels": 16.0, "ema": "yes"})
@example(base=BASES[0], patch={"lr": math.nan, "seed": 2**31})
@example(base=BASES[0], patch={"num_channels": "x" * 100_000})
@example(base=BASES[2], patch={"correlation": 1, "loss": "forces_only", "stage_two": "False"})
def test_patched_applies_exactly_or_names_the_key(base: Recipe, patch: dict[Any, Any]) -> None:
    try:
        new = base.patched(patch)
    except RecipeError as exc:
        event("refused")
        _check_refusal(exc, base, patch)
        return
    event("applied" if patch else "empty patch")
    assert Recipe.model_validate(new.model_dump()) == new
    mine, theirs = base.model_dump(), new.model_dump()
    assert {k: v for k, v in theirs.items() if k not in patch} == {
        k: v for k, v in mine.items() if k not in patch
    }, "keys outside the patch changed"
    for key, given_value in patch.items():
        assert _accepted_as(given_value, theirs[key]), (key, given_value, theirs[key])
    assert base.diff(new) == {k: theirs[k] for k in patch if theirs[k] != mine[k]}
    assert base.patched(base.diff(new)) == new  # the diff replays to the same recipe


def _check_refusal(exc: RecipeError, base: Recipe, patch: dict[Any, Any]) -> None:
    assert isinstance(exc, MlipilotError) and isinstance(exc, ValueError)
    msg = str(exc)
    assert msg.startswith("recipe patch: "), msg
    assert len(msg) < 10_000, "the message grows with the value sent"
    unknown = [k for k in patch if k not in Recipe.model_fields]
    if unknown:
        for key in unknown:
            assert repr(key) in msg, (key, msg)
        return
    bad = [k for k in patch if _bad_alone(k, patch[k])]
    if bad:
        for key in bad:
            assert f"recipe patch: {key} = " in msg and "allowed: " in msg, (key, msg)
        return
    # Each value is fine alone: only the stage_two/forces_only pair and mace's failing
    # correlation=1 capacity are refused together.
    merged = {**base.model_dump(), **patch}
    stage_two = TypeAdapter(bool).validate_python(merged["stage_two"])  # "False" is False
    if stage_two and merged["loss"] == "forces_only":
        assert "stage_two" in msg and "forces_only" in msg
        return
    corr, max_l, n_int = (float(merged[k]) for k in ("correlation", "max_L", "num_interactions"))
    assert corr == 1 and max_l >= 1 and n_int >= 2, msg  # values as sent: "1", 1.0, ...
    assert "correlation=1 with max_L>=1 and num_interactions>=2" in msg


@settings(max_examples=200)
@given(patch=JSON.filter(lambda v: not isinstance(v, dict)) | st.tuples(st.text(), st.integers()))
def test_a_patch_that_is_not_a_mapping_is_refused(patch: Any) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe().patched(patch)
    assert "expected a mapping" in str(info.value)
    assert len(str(info.value)) < 1_000


def test_recipe_error_is_a_user_error() -> None:
    assert issubclass(RecipeError, MlipilotError) and issubclass(RecipeError, ValueError)
