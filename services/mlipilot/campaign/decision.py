"""The accept/revert rule (DESIGN.md, step 5), as one pure function.

- A candidate that failed to train or score is reverted, with its cause.
- Feasible beats infeasible.
- Between two feasible results the lower composite wins, by more than ``min_improvement``
  (relative), so noise-level gains do not churn the incumbent.
- Between two infeasible results the smaller total violation wins: the campaign moves
  towards feasibility even before it gets there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from mlipilot.scoring.result import ScoreResult

Verdict = Literal["BASELINE", "ACCEPT", "REVERT"]


class Decision(BaseModel):
    verdict: Verdict
    reason: str


def decide(
    candidate: ScoreResult | None,
    incumbent: ScoreResult | None,
    *,
    failure: str | None = None,
    min_improvement: float = 0.0,
) -> Decision:
    if incumbent is None:
        if candidate is None:
            return Decision(verdict="BASELINE", reason=f"baseline failed: {failure}")
        return Decision(verdict="BASELINE", reason=f"baseline is {candidate.short()}")
    if candidate is None:
        return Decision(verdict="REVERT", reason=f"candidate failed: {failure or 'no result'}")
    if candidate.feasible and not incumbent.feasible:
        return Decision(
            verdict="ACCEPT",
            reason=f"feasible (composite {candidate.composite:.3f}); incumbent was infeasible",
        )
    if candidate.feasible:
        bar = incumbent.composite * (1.0 - min_improvement)
        if candidate.composite < bar:
            return Decision(
                verdict="ACCEPT",
                reason=f"composite {incumbent.composite:.3f} -> {candidate.composite:.3f}",
            )
        return Decision(
            verdict="REVERT",
            reason=f"composite {candidate.composite:.3f} not below incumbent's "
            f"{incumbent.composite:.3f}"
            + (f" by {min_improvement:.0%}" if min_improvement else ""),
        )
    broken = ", ".join(c.metric for c in candidate.violated())
    if incumbent.feasible:
        return Decision(verdict="REVERT", reason=f"infeasible: violates {broken}")
    if candidate.violation < incumbent.violation:
        return Decision(
            verdict="ACCEPT",
            reason=f"less infeasible: violation {incumbent.violation:.3f} -> "
            f"{candidate.violation:.3f} (still violates {broken})",
        )
    return Decision(
        verdict="REVERT",
        reason=f"violation {candidate.violation:.3f} not below incumbent's "
        f"{incumbent.violation:.3f} ({broken})",
    )
