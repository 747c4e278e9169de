"""The accept/revert rule (README, "The loop", step 5), as one pure function.

- A candidate that failed to train or score is reverted, with its cause.
- Feasible beats infeasible.
- Between two feasible results the lower composite wins, by more than ``min_improvement``
  (relative), so noise-level gains do not churn the incumbent.
- Between two infeasible results the smaller total violation wins: the campaign moves
  towards feasibility even before it gets there.

Noise-aware acceptance (campaign option ``noise``, ``decide_over_seeds``): training noise
alone can move the composite by more than a real change does, so a would-be accept is trained
again with further seeds, and so is the incumbent (recipe seed s gives seeds s, s+1, ...). Then:

- A side counts as feasible only when every one of its seeds is feasible. A candidate's seed
  that failed to train or score reverts it, saying which seed failed and why. An incumbent's
  repeat that failed is left out of its side (recorded as null): the incumbent was accepted on
  its own run, and a failed repeat, reused for as long as it stays incumbent, must not block
  every later candidate.
- Feasible vs feasible: gain = mean(incumbent composite) - mean(candidate composite) and
  spread = sqrt(sd_incumbent^2 + sd_candidate^2), with sample standard deviations over seeds:
  the spread of the difference of two single runs. Accept only when gain > k x spread and the
  mean composite also clears ``min_improvement``.
- A candidate feasible on every seed beats an incumbent that is not.
- A candidate infeasible on some seed is reverted when the incumbent is feasible on every seed,
  or when the candidate's own first seed was feasible (its case rested on feasibility).
- Otherwise (infeasible vs infeasible) the same gain > k x spread test runs on the total
  violation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from mlipilot.scoring.result import ScoreResult

Verdict = Literal["BASELINE", "ACCEPT", "REVERT"]


class Decision(BaseModel):
    verdict: Verdict
    reason: str


# Sums of the same margins in another order differ in the last bits: no improvement at all.
ROUND_OFF = 1e-9


def _below(value: float, bar: float) -> bool:
    """``value`` lower than ``bar`` by more than round-off (relative to the bar)."""
    return value < bar - ROUND_OFF * max(1.0, abs(bar))


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
        if _below(candidate.composite, bar):
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
    if _below(candidate.violation, incumbent.violation):
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


_SEED_LIMIT = 2**31  # the recipe's seed is at most 2**31 - 1


def repeat_seeds(seed: int, count: int) -> list[int]:
    """The training seeds of a side: its recipe's own seed first, then the next ones up."""
    return [(seed + j) % _SEED_LIMIT for j in range(count)]


@dataclass(frozen=True)
class SeedRun:
    """One training seed of one side: the run (candidate folder) that gave its result."""

    seed: int
    run: str  # it003, it003.seed2, ... (or an earlier candidate that trained the same)
    result: ScoreResult | None
    failure: str | None = None


def decide_over_seeds(
    candidate: Sequence[SeedRun],
    incumbent: Sequence[SeedRun],
    *,
    k: float,
    min_improvement: float = 0.0,
) -> tuple[Decision, dict[str, Any]]:
    """The verdict on a would-be winner repeated over seeds, and the numbers behind it.

    The first run of each side is its original training. The numbers are what the ledger
    keeps as the decision's ``detail.noise``; ``gain`` and ``spread`` are None when a seed
    has no result.
    """
    metric = "composite"
    cand = [r.result for r in candidate]
    inc = [r.result for r in incumbent if r.result is not None]  # failed repeats left out
    if all(r is not None for r in cand) and inc:
        cand_ok = all(r.feasible for r in cand if r is not None)
        inc_ok = all(r.feasible for r in inc)
        metric = "composite" if cand_ok and inc_ok else "violation"
    noise: dict[str, Any] = {
        "seeds": [r.seed for r in candidate],
        "k": k,
        "metric": metric,
        "incumbent": _side(incumbent, metric),
        "candidate": _side(candidate, metric),
        "gain": None,
        "spread": None,
    }
    failed = next((r for r in candidate if r.result is None), None)
    if failed is not None:
        why = failed.failure or "no result"
        reason = f"candidate's seed {failed.seed} ({failed.run}) failed: {why}"
        return Decision(verdict="REVERT", reason=reason), noise
    if not inc:
        return Decision(verdict="REVERT", reason="the incumbent has no result"), noise
    cand_values = noise["candidate"]["values"]
    inc_values = [v for v in noise["incumbent"]["values"] if v is not None]
    gain = statistics.fmean(inc_values) - statistics.fmean(cand_values)
    spread = math.hypot(_sd(inc_values), _sd(cand_values))
    noise |= {"gain": gain, "spread": spread}
    n = len(candidate)
    if len(inc_values) < len(incumbent):
        dropped = [r.seed for r in incumbent if r.result is None]
        n_note = f" (incumbent's seed {', '.join(map(str, dropped))} failed, left out)"
    else:
        n_note = ""
    bar = f"spread {spread:.3f}" if k == 1 else f"{k:g} x spread {spread:.3f} = {k * spread:.3f}"
    cand_bad = [r for r in candidate if r.result is not None and not r.result.feasible]
    inc_bad = [r for r in incumbent if r.result is not None and not r.result.feasible]
    if not cand_bad and not inc_bad:
        before, after = statistics.fmean(inc_values), statistics.fmean(cand_values)
        change = f"composite {before:.3f} -> {after:.3f} over {n} seeds{n_note}"
        if gain <= k * spread + ROUND_OFF * max(1.0, abs(before)):
            reason = f"{change}: gain {gain:.3f} not above {bar}"
            return Decision(verdict="REVERT", reason=reason), noise
        if after >= before * (1.0 - min_improvement):
            reason = f"{change}: gain {gain:.3f} > {bar} but below {min_improvement:.0%}"
            return Decision(verdict="REVERT", reason=reason), noise
        return Decision(verdict="ACCEPT", reason=f"{change}: gain {gain:.3f} > {bar}"), noise
    if not cand_bad:
        seeds = ", ".join(str(r.seed) for r in inc_bad)
        plural = "s" if len(inc_bad) > 1 else ""
        reason = f"feasible on all {n} seeds; the incumbent is infeasible on seed{plural} {seeds}"
        return Decision(verdict="ACCEPT", reason=reason), noise
    worst = cand_bad[0]
    assert worst.result is not None
    broken = ", ".join(c.metric for c in worst.result.violated())
    where = f"infeasible on seed {worst.seed} ({worst.run}: violates {broken})"
    if not inc_bad:
        return Decision(verdict="REVERT", reason=f"{where}; the incumbent is feasible"), noise
    first = candidate[0].result
    if first is not None and first.feasible:
        reason = f"feasible on seed {candidate[0].seed} but {where}"
        return Decision(verdict="REVERT", reason=reason), noise
    before, after = statistics.fmean(inc_values), statistics.fmean(cand_values)
    change = f"violation {before:.3f} -> {after:.3f} over {n} seeds{n_note}"
    if gain > k * spread + ROUND_OFF * max(1.0, abs(before)):
        reason = f"less infeasible: {change}: gain {gain:.3f} > {bar}"
        return Decision(verdict="ACCEPT", reason=reason), noise
    return Decision(verdict="REVERT", reason=f"{change}: gain {gain:.3f} not above {bar}"), noise


def _side(runs: Sequence[SeedRun], metric: str) -> dict[str, Any]:
    """One side of ``detail.noise``: per seed its value of ``metric`` and its feasibility."""
    return {
        "candidate": runs[0].run,
        "runs": [r.run for r in runs],
        "seeds": [r.seed for r in runs],
        "values": [getattr(r.result, metric) if r.result else None for r in runs],
        "feasible": [r.result.feasible if r.result else None for r in runs],
    }


def _sd(values: list[float]) -> float:
    """Sample standard deviation; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0
