"""The MACE training recipe: the one artifact an agent edits in recipe mode.

Every knob is typed and bounded. A patch is a flat mapping ``{key: value}``; unknown keys and
out-of-range values are rejected with a message naming the key and the allowed range, so an
agent (or a person) knows what to change. ``to_mace_args`` is the single place that turns a
recipe into ``mace_run_train`` flags.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlipilot.errors import MlipilotError, shown


class RecipeError(MlipilotError):
    """A recipe or patch that does not fit the schema."""


class Recipe(BaseModel):
    """Typed, bounded mace-torch training options (the search space of every agent)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- output normalization
    e0s: Literal["average", "zero"] = Field(
        "average", description="isolated-atom energies: least-squares average, or zero"
    )
    scaling: Literal["rms_forces_scaling", "std_scaling", "no_scaling"] = Field(
        "rms_forces_scaling", description="scale of the interaction energy output"
    )
    # -- loss
    loss: Literal["weighted", "ef", "huber", "forces_only", "stress"] = "weighted"
    energy_weight: float = Field(1.0, ge=0.0, le=1000.0)
    forces_weight: float = Field(100.0, ge=0.0, le=1000.0)
    # Stress in eV/Å³ is ~100x smaller than forces in eV/Å: comparable weights need ~100x more.
    stress_weight: float = Field(
        100.0, ge=0.0, le=100000.0, description="only for loss=stress (needs stress labels)"
    )
    huber_delta: float = Field(0.01, gt=0.0, le=1.0, description="only for loss=huber")
    # -- schedule
    lr: float = Field(0.01, ge=1e-5, le=0.1)
    scheduler_patience: int = Field(5, ge=1, le=50)
    lr_factor: float = Field(0.8, ge=0.1, le=0.99)
    ema: bool = False
    ema_decay: float = Field(0.99, ge=0.9, le=0.9999)
    stage_two: bool = Field(False, description="MACE stage two (SWA): re-weighted loss at the end")
    stage_two_start: float = Field(
        0.75, ge=0.1, le=0.95, description="fraction of the epoch budget where stage two starts"
    )
    stage_two_energy_weight: float = Field(1000.0, ge=0.0, le=10000.0)
    stage_two_forces_weight: float = Field(100.0, ge=0.0, le=1000.0)
    stage_two_lr: float = Field(0.001, ge=1e-5, le=0.1)
    stage_two_stress_weight: float = Field(
        100.0, ge=0.0, le=100000.0, description="only for loss=stress with stage two"
    )
    # -- capacity
    num_channels: int = Field(16, ge=4, le=128)
    max_L: int = Field(0, ge=0, le=2)
    correlation: int = Field(3, ge=1, le=3)
    num_interactions: int = Field(2, ge=1, le=3)
    r_max: float = Field(5.0, ge=2.5, le=7.0, description="cutoff radius in Å")
    num_radial_basis: int = Field(8, ge=4, le=16)
    pair_repulsion: bool = Field(False, description="ZBL pair repulsion at short range")
    # -- numerics
    batch_size: int = Field(5, ge=1, le=64)
    default_dtype: Literal["float32", "float64"] = "float64"
    seed: int = Field(1, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        # mace_run_train refuses this pair at start-up; say so before a candidate is trained.
        if self.stage_two and self.loss == "forces_only":
            raise ValueError(
                "stage_two cannot be combined with loss=forces_only: stage two re-weights the "
                "energy term, which forces_only does not have"
            )
        # Found by the Optuna agent: mace-torch 0.3.x's symmetric contraction raises "view size
        # is not compatible" in training for this combination (at 25+ channels on 4-atom Cu;
        # where exactly depends on the shapes, so the whole combination is refused).
        if self.correlation == 1 and self.max_L >= 1 and self.num_interactions >= 2:
            raise ValueError(
                "correlation=1 with max_L>=1 and num_interactions>=2 fails inside mace-torch's "
                "symmetric contraction; use correlation>=2, max_L=0 or num_interactions=1"
            )
        return self

    def patched(self, patch: Mapping[str, Any]) -> Recipe:
        """A new recipe with ``patch`` applied; raises RecipeError naming the bad key."""
        check_patch_keys(patch)
        try:
            return Recipe.model_validate({**self.model_dump(), **patch})
        except ValidationError as exc:
            raise RecipeError(describe_recipe_error(exc, "recipe patch")) from exc

    def diff(self, other: Recipe) -> dict[str, Any]:
        """The patch that turns ``self`` into ``other``."""
        mine, theirs = self.model_dump(), other.model_dump()
        return {k: v for k, v in theirs.items() if mine[k] != v}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()


def check_patch_keys(patch: Mapping[str, Any]) -> None:
    if not isinstance(patch, Mapping):
        raise RecipeError(f"recipe patch: expected a mapping of key: value, got {shown(patch)}")
    # key=repr: a patch parsed from YAML or JSON may mix str keys with int or None keys
    unknown = sorted(set(patch) - set(Recipe.model_fields), key=repr)
    if unknown:
        raise RecipeError(
            f"recipe patch: unknown key(s) {unknown}; known keys: {sorted(Recipe.model_fields)}"
        )


def choices(key: str) -> list[Any] | None:
    """The allowed values of a categorical key (Literal or bool), else None."""
    ann = Recipe.model_fields[key].annotation
    if getattr(ann, "__origin__", None) is Literal:
        return list(ann.__args__)  # type: ignore[union-attr]
    if ann is bool:
        return [False, True]
    return None


def bounds(key: str) -> tuple[float, float, bool]:
    """(low, high, low_is_exclusive) of a numeric key."""
    low, high, exclusive = -math.inf, math.inf, False
    for meta in Recipe.model_fields[key].metadata:
        if isinstance(meta, Ge):
            low = meta.ge
        elif isinstance(meta, Gt):
            low, exclusive = meta.gt, True
        elif isinstance(meta, Le):
            high = meta.le
    return low, high, exclusive  # type: ignore[return-value]


def allowed_range(key: str) -> str:
    """Human-readable domain of a recipe key, e.g. ``2.5 <= r_max <= 7.0 (float)``."""
    options = choices(key)
    if options is not None:
        return f"{key} in {options}".replace("False", "false").replace("True", "true")
    low, high, exclusive = bounds(key)
    type_name = getattr(Recipe.model_fields[key].annotation, "__name__", "number")
    return f"{low} {'<' if exclusive else '<='} {key} <= {high} ({type_name})"


def describe_recipe_error(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        key = str(err["loc"][0]) if err["loc"] else "(top level)"
        if key in Recipe.model_fields:
            lines.append(
                f"{where}: {key} = {shown(err.get('input'))} is not allowed: {err['msg']}; "
                f"allowed: {allowed_range(key)}"
            )
        elif err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key {key!r}; known keys: {sorted(Recipe.model_fields)}")
        else:
            lines.append(f"{where}: {key}: {err['msg']}")
    return "\n".join(lines)


def recipe_from_mapping(data: Mapping[str, Any] | None, where: str) -> Recipe:
    try:
        return Recipe.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise RecipeError(describe_recipe_error(exc, where)) from exc


def recipe_space() -> dict[str, str]:
    """Every key with its allowed domain: what agents are told they may change."""
    return {key: allowed_range(key) for key in Recipe.model_fields}
