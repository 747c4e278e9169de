"""Thresholds for a scorecard from two measured models: the baseline must fail, the expert pass.

The campaign protocol needs both: a baseline that already meets the scorecard leaves the agent
nothing to do, and an expert recipe that cannot meet it means no recipe may. On a new data
set, level of theory or budget the old thresholds may give neither. ``propose`` sets each
accuracy bound (a ``max`` constraint) to the expert's value plus ``margin`` (relative, rounded
up to two significant digits), keeps the physical floors (``min`` constraints: MD survival,
throughput) as they are, and says whether the baseline is then infeasible. Pure: the models
are measured elsewhere (``campaign/calibration.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlipilot.errors import MlipilotError
from mlipilot.scoring.spec import Constraint, ScorecardSpec


@dataclass(frozen=True)
class ThresholdChange:
    metric: str
    unit: str
    op: str  # "<=" or ">="
    baseline: float
    expert: float
    old: float
    new: float

    def passes(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value <= self.new if self.op == "<=" else value >= self.new


@dataclass(frozen=True)
class Calibration:
    spec: ScorecardSpec  # the new version
    changes: list[ThresholdChange]
    margin: float
    derived_from: str = ""  # the scorecard it was made from: "qm7 v1"

    @property
    def baseline_violates(self) -> list[str]:
        return [c.metric for c in self.changes if not c.passes(c.baseline)]

    @property
    def expert_violates(self) -> list[str]:
        return [c.metric for c in self.changes if not c.passes(c.expert)]


def round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (12.31 -> 13, 0.0434 -> 0.044)."""
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"cannot round {value}")
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return math.ceil(round(value / scale, 9)) * scale


def propose(
    spec: ScorecardSpec,
    baseline: dict[str, float],
    expert: dict[str, float],
    margin: float,
    name: str | None = None,
) -> Calibration:
    """The new scorecard version; MlipilotError when no thresholds of this kind can separate
    the two models (the expert fails a floor, or the baseline meets every new bound)."""
    if not 0 <= margin < 10:
        raise MlipilotError(f"--margin: a relative margin in [0, 10), got {margin}")
    missing = [c.metric for c in spec.constraints if not {c.metric} <= baseline.keys() & expert]
    if missing:
        raise MlipilotError(f"calibration: no measurement of {missing} for both models")
    constraints: list[Constraint] = []
    changes: list[ThresholdChange] = []
    for c in spec.constraints:
        b, e = baseline[c.metric], expert[c.metric]
        if c.max is not None:
            if not math.isfinite(e) or e <= 0:
                raise MlipilotError(f"calibration: the expert's {c.metric} is {e}: no bound fits")
            new = round_up(e * (1 + margin))
            constraints.append(c.model_copy(update={"max": new}))
        else:
            new = c.threshold  # a physical floor: not moved to fit a model
            constraints.append(c)
        op = "<=" if c.max is not None else ">="
        changes.append(ThresholdChange(c.metric, c.unit, op, b, e, c.threshold, new))
    name = name or spec.name
    # A new version of the same scorecard, or the first of a new one (another data set's).
    version = spec.version + 1 if name == spec.name else 1
    updated = spec.model_copy(update={"name": name, "version": version, "constraints": constraints})
    calibration = Calibration(
        ScorecardSpec.model_validate(updated.model_dump()),
        changes,
        margin,
        derived_from=f"{spec.name} v{spec.version}",
    )
    if calibration.expert_violates:
        raise MlipilotError(
            f"calibration: the expert fails {calibration.expert_violates}, which are floors no "
            "calibration moves: train it longer or choose another expert"
        )
    if not calibration.baseline_violates:
        raise MlipilotError(
            "calibration: with the expert's values plus a margin of "
            f"{margin:.0%} the baseline meets every bound "
            + ", ".join(f"{c.metric} {c.baseline:.4g} {c.op} {c.new:.4g}" for c in changes)
            + ": the two are too close to tell apart; a smaller margin, a weaker baseline or a "
            "stronger expert"
        )
    return calibration
