"""A scorecard result and the pure function that judges metrics against a spec."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel

from mlipilot.scoring.spec import SHORT_RANGE_METRIC, ScorecardSpec

# Metrics by kind, for agents that reason about them: whatever units a scorecard states accuracy
# in (meV/atom for Cu, kcal/mol for molecules), a name's prefix says which quantity it measures.
# A name ending in "_" is a kind, any other a metric.
ENERGY = "energy_"
FORCES = "force_"
MD = "md_survival_fraction"
SPEED = "relative_throughput"
SHORT_RANGE = SHORT_RANGE_METRIC  # scorecard v2's pushed-pair probe (short_range.py)


class ConstraintOutcome(BaseModel):
    metric: str
    value: float
    op: Literal["<=", ">="]
    threshold: float
    unit: str
    margin: float  # relative to the threshold; > 0 satisfied
    violation: float  # normalized excess, 0 when satisfied

    @property
    def satisfied(self) -> bool:
        return self.violation == 0.0


class ScoreResult(BaseModel):
    spec_name: str
    spec_hash: str
    test_hash: str
    metrics: dict[str, float]
    constraints: list[ConstraintOutcome]
    feasible: bool
    violation: float  # sum of normalized violations; 0 when feasible
    composite: float  # sum(weight * metric / threshold); lower is better
    hardware: dict[str, Any] = {}
    timings_s: dict[str, float] = {}
    details: dict[str, Any] = {}

    @classmethod
    def judged(
        cls,
        spec: ScorecardSpec,
        metrics: dict[str, float],
        *,
        spec_hash: str,
        test_hash: str,
        **extra: Any,
    ) -> ScoreResult:
        """The result of ``metrics`` measured against ``spec``."""
        constraints, violation, composite = judge(spec, metrics)
        return cls(
            spec_name=spec.name,
            spec_hash=spec_hash,
            test_hash=test_hash,
            metrics=metrics,
            constraints=constraints,
            feasible=violation == 0.0,
            violation=violation,
            composite=composite,
            **extra,
        )

    def violated(self) -> list[ConstraintOutcome]:
        return [c for c in self.constraints if not c.satisfied]

    def constraints_on(self, metric: str) -> list[ConstraintOutcome]:
        """The constraints on ``metric``, or on every metric of a kind (``ENERGY``, ``FORCES``)."""
        is_kind = metric.endswith("_")
        return [
            c
            for c in self.constraints
            if c.metric == metric or (is_kind and c.metric.startswith(metric))
        ]

    def fails(self, metric: str) -> bool:
        """Some constraint on ``metric`` (or on a metric of that kind) is violated."""
        return any(not c.satisfied for c in self.constraints_on(metric))

    def short(self) -> str:
        if self.feasible:
            return f"feasible, composite {self.composite:.3f}"
        names = ", ".join(c.metric for c in self.violated())
        return f"infeasible (violation {self.violation:.3f}: {names})"


def judge(
    spec: ScorecardSpec, metrics: dict[str, float]
) -> tuple[list[ConstraintOutcome], float, float]:
    """Constraint outcomes, total violation and composite score for ``metrics``.

    A metric that is missing or not finite counts as violating its constraint by a large,
    finite amount so that "broken" still orders below "bad".
    """
    outcomes = []
    for c in spec.constraints:
        value = metrics.get(c.metric, math.nan)
        violation = min(c.violation(value), 1e6) if math.isfinite(value) else 1e6
        outcomes.append(
            ConstraintOutcome(
                metric=c.metric,
                value=value,
                op="<=" if c.max is not None else ">=",
                threshold=c.threshold,
                unit=c.unit,
                margin=c.margin(value) if math.isfinite(value) else -1e6,
                violation=violation,
            )
        )
    composite = 0.0
    for metric, weight in spec.composite_weights.items():
        value = metrics.get(metric, math.nan)
        threshold = spec.constraint(metric).threshold
        composite += weight * (value / threshold if math.isfinite(value) else 1e6)
    return outcomes, sum(o.violation for o in outcomes), composite
