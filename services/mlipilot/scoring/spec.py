"""The scorecard spec: fixed, versioned data that judges every candidate.

A spec lives in ``scorecard/*.yaml``. It is hashed into every result so a score is never
compared against a different yardstick. No threshold lives in code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from mlipilot.yaml_files import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Constraint(_Strict):
    """One physical constraint: ``metric <= max`` or ``metric >= min``."""

    metric: str
    max: float | None = None
    min: float | None = None
    unit: str
    why: str = ""

    @model_validator(mode="after")
    def _one_bound(self) -> Constraint:
        if (self.max is None) == (self.min is None):
            raise ValueError(f"constraint on {self.metric!r} needs exactly one of 'max' or 'min'")
        bound = self.max if self.max is not None else self.min
        if bound is None or bound <= 0:
            raise ValueError(f"constraint on {self.metric!r}: the bound must be > 0, got {bound}")
        return self

    @property
    def threshold(self) -> float:
        return self.max if self.max is not None else self.min  # type: ignore[return-value]

    def margin(self, value: float) -> float:
        """Relative distance to the threshold; positive means satisfied."""
        if value != value:  # NaN: as bad as it gets
            return float("-inf")
        if self.max is not None:
            return (self.max - value) / self.max
        return (value - self.threshold) / self.threshold

    def violation(self, value: float) -> float:
        """Normalized excess over the threshold, 0 when satisfied."""
        return max(0.0, -self.margin(value))


class AccuracySettings(_Strict):
    """Held-out accuracy: computed on the test split only, never seen by trainer or agent."""

    batch_size: int = Field(8, ge=1)


Precision = Literal["float32", "float64"]
SHORT_RANGE_METRIC = "short_range_rise_fraction"


class MolecularSettings(_Strict):
    """Tests for isolated molecules (scoring/md_molecular.py): bonds are the start frame's pairs
    closer than ``bond_factor`` x the sum of covalent radii."""

    max_bond_deviation_A: float = Field(
        0.5, gt=0, description="a bond longer or shorter than its start length by more: unstable"
    )
    bond_factor: float = Field(1.2, gt=1, le=2, description="bonded: closer than factor x radii")
    fragment_factor: float = Field(
        1.5, gt=1, le=5, description="a bond beyond factor x radii is broken; split: fragmented"
    )

    @model_validator(mode="after")
    def _broken_beyond_bonded(self) -> MolecularSettings:
        if self.fragment_factor <= self.bond_factor:
            raise ValueError(
                f"fragment_factor {self.fragment_factor} must exceed bond_factor "
                f"{self.bond_factor}: otherwise a start bond would count as broken"
            )
        return self


class MDSettings(_Strict):
    """MD stability: NVT replicas (start frame x temperature x seed), then an NVE segment."""

    start_frames: list[int] = Field(min_length=1, description="indices into the test split")
    temperatures_K: list[PositiveFloat] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    nvt_steps: int = Field(ge=1)
    nve_steps: int = Field(ge=0)
    timestep_fs: float = Field(gt=0)
    friction_per_fs: float = Field(gt=0)
    min_distance_A: float = Field(gt=0, description="closer than this is a collapse")
    max_temperature_factor: float = Field(gt=1, description="T above factor x target = runaway")
    max_energy_drift_meV_per_atom_per_ps: float = Field(gt=0)
    trace_every: int = Field(10, ge=1)
    engine: Literal["batched", "ase"] = Field(
        "batched",
        description="batched: all replicas per model call (scoring/md_batched.py); "
        "ase: the reference loop, one ASE calculator call per replica and step",
    )
    precision: Precision = Field(
        "float32", description="dtype of the model's evaluation; the integrator stays float64"
    )
    molecular: MolecularSettings | None = Field(
        None, description="bond-length deviation and fragmentation tests, for molecules"
    )


class ThroughputSettings(_Strict):
    """MD speed of the candidate relative to the baseline model, timed side by side."""

    md_steps: int = Field(ge=1)
    repeats: int = Field(3, ge=1)


class ShortRangeSettings(_Strict):
    """Two atoms pushed together (scoring/short_range.py): the energy must rise all the way."""

    start_frame: int = Field(0, ge=0, description="index into the test split")
    atom: int = Field(0, ge=0, description="the atom pushed at its nearest neighbour")
    from_A: float = Field(gt=0, description="pair distance the push starts from")
    to_A: float = Field(gt=0, description="pair distance it ends at")
    step_A: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _inwards(self) -> ShortRangeSettings:
        if self.to_A >= self.from_A:
            raise ValueError(f"to_A {self.to_A} must be below from_A {self.from_A}: a push inwards")
        return self


class ScorecardSpec(_Strict):
    name: str
    version: int = Field(ge=1)
    description: str = ""
    accuracy: AccuracySettings = AccuracySettings()
    md: MDSettings
    throughput: ThroughputSettings
    short_range: ShortRangeSettings | None = Field(
        None, description="the pushed-pair probe; measured only when the scorecard has it"
    )
    constraints: list[Constraint] = Field(min_length=1)
    composite_weights: dict[str, float] = Field(
        min_length=1, description="composite = sum(weight * metric / threshold), lower is better"
    )

    @model_validator(mode="after")
    def _weights_name_constraints(self) -> ScorecardSpec:
        names = {c.metric for c in self.constraints}
        unknown = sorted(set(self.composite_weights) - names)
        if unknown:
            raise ValueError(
                f"composite_weights names metrics without a constraint: {unknown}; "
                f"constrained metrics are {sorted(names)}"
            )
        if SHORT_RANGE_METRIC in names and self.short_range is None:
            raise ValueError(
                f"a constraint on {SHORT_RANGE_METRIC!r} needs a 'short_range' section "
                "(the probe's start frame and distances)"
            )
        return self

    def constraint(self, metric: str) -> Constraint:
        for c in self.constraints:
            if c.metric == metric:
                return c
        raise KeyError(metric)


def load_spec(path: str | Path) -> tuple[ScorecardSpec, str]:
    """Load and validate a scorecard spec; return it with the sha256 of the file's bytes."""
    return load_yaml_model(path, ScorecardSpec, "scorecard spec")


# Short headers for the metrics scorecards constrain; any other shows under its own name.
METRIC_HEADERS = {
    "energy_mae_meV_per_atom": "E MAE\nmeV/at",
    "force_mae_meV_per_A": "F MAE\nmeV/Å",
    "energy_mae_kcal_per_mol": "E MAE\nkcal/mol",
    "force_mae_kcal_per_mol_per_A": "F MAE\nkcal/mol/Å",
    "md_survival_fraction": "MD\nsurvival",
    "relative_throughput": "speed\nvs base",
    SHORT_RANGE_METRIC: "short\nrange",
}


def table_metrics(spec: ScorecardSpec) -> dict[str, str]:
    """The metrics a table shows: the scorecard's constrained ones, in its order, with headers
    of two lines (quantity, unit)."""
    return {c.metric: METRIC_HEADERS.get(c.metric, c.metric) for c in spec.constraints}
