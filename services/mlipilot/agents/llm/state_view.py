"""The campaign state as short text for a model: few tokens, no paths, no test data.

Everything here is built from ``CampaignState`` alone (scorecard spec, recipes, results,
history). Results are shown as metrics and margins; MD replica outcomes without their trace
files; hardware and hashes are left out. Numbers are rounded to 3-4 significant digits.
"""

from __future__ import annotations

import json
from typing import Any

from mlipilot.agents.base import CampaignState, HistoryEntry, TrainingSummary
from mlipilot.recipe import Recipe, recipe_space
from mlipilot.scoring.result import ScoreResult
from mlipilot.training.mace_args import frames_trained_on

HISTORY_ROWS = 12  # the newest rows shown in the history table; older ones are counted
HYPOTHESIS_CHARS = 90
_REPLICA_KEYS = ("start_frame", "temperature_K", "seed", "status", "survived_ps", "failure_ps")
_REPLICA_KEYS += ("max_temperature_K", "min_distance_A", "nve_drift_meV_per_atom_per_ps")


def num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def compact(data: Any) -> str:
    """JSON without spaces, floats rounded: what a patch or recipe costs least to show."""
    return json.dumps(_rounded(data), separators=(",", ":"), sort_keys=True)


def _rounded(data: Any) -> Any:
    if isinstance(data, float):
        return float(f"{data:.4g}")
    if isinstance(data, dict):
        return {k: _rounded(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_rounded(v) for v in data]
    return data


def scorecard_text(state: CampaignState) -> str:
    spec = state.spec
    lines = [f"scorecard {spec.name} v{spec.version}; constraints (all must hold):"]
    for c in spec.constraints:
        op = "<=" if c.max is not None else ">="
        why = f" ({c.why})" if c.why else ""
        lines.append(f"- {c.metric} {op} {num(c.threshold)} {c.unit}{why}")
    weights = " + ".join(f"{num(w)}*{m}/threshold" for m, w in spec.composite_weights.items())
    lines.append(f"composite (lower is better) = {weights}")
    lines.append(
        "decision: ACCEPT when the candidate is feasible and its composite is lower than the "
        "incumbent's, or when the incumbent is infeasible and the candidate's total violation "
        "is lower; else REVERT. Margin = relative distance to the threshold, >0 satisfied."
    )
    return "\n".join(lines)


def result_text(result: ScoreResult | None) -> str:
    if result is None:
        return "no result (training or scoring failed)"
    head = f"feasible, composite {num(result.composite)}"
    if not result.feasible:
        head = f"INFEASIBLE, total violation {num(result.violation)}, " + head.split(", ")[1]
    parts = [
        f"{c.metric}={num(c.value)} {c.unit} ({c.op}{num(c.threshold)}, margin {c.margin:+.2f})"
        for c in result.constraints
    ]
    return head + "; " + "; ".join(parts)


def recipe_text(recipe: Recipe) -> str:
    return compact(recipe.model_dump())


def history_table(history: list[HistoryEntry]) -> str:
    if not history:
        return "no candidates tried yet"
    shown = history[-HISTORY_ROWS:]
    lines = []
    if len(history) > len(shown):
        lines.append(f"({len(history) - len(shown)} older rows not shown)")
    lines.append("iter | verdict | patch | outcome | hypothesis")
    for h in shown:
        r = h.result
        if r is None:
            outcome = "failed"
        elif r.feasible:
            outcome = f"feasible c={num(r.composite)}"
        else:
            outcome = f"viol={num(r.violation)} c={num(r.composite)}"
        hyp = h.hypothesis if len(h.hypothesis) <= HYPOTHESIS_CHARS else h.hypothesis[:87] + "..."
        patch = compact(h.patch) if h.patch else ("{}" if h.diff else "(baseline)")
        if h.diff:  # code mode: the edit itself is in the ledger; here, which lines it touched
            changed = sum(
                1 for ln in h.diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")
            )
            patch += f" + program diff ({changed} lines)"
        lines.append(f"{h.iteration} | {h.verdict} | {patch} | {outcome} | {hyp}")
    return "\n".join(lines)


def run_details(state: CampaignState, iteration: int) -> str:
    """One tried candidate in full: patch, verdict and reason, margins, MD replica outcomes."""
    entries = [h for h in state.history if h.iteration == iteration]
    if not entries:
        known = sorted({h.iteration for h in state.history})
        return f"error: no run for iteration {iteration}; known iterations: {known}"
    out = []
    for h in entries:
        out.append(f"iteration {h.iteration}: {h.verdict} ({h.reason})")
        out.append(f"hypothesis: {h.hypothesis}")
        out.append(f"patch: {compact(h.patch) if h.patch else '(baseline)'}")
        if h.training is not None:
            out.append(f"training: {training_text(h.training)}")
        out.append(f"result: {result_text(h.result)}")
        if h.result is not None:
            out.extend(_md_lines(h.result))
    return "\n".join(out)


def training_text(t: TrainingSummary) -> str:
    """One line: status, epochs and time, the loss curve's shape, validation errors first/last."""
    head = f"{t.status}" + (f" ({t.cause})" if t.cause else "")
    parts = [f"{head}, {t.epochs} epochs in {t.seconds:.0f} s"]
    if t.first_loss is not None and t.last_loss is not None:
        parts.append(
            f"loss {num(t.first_loss)} -> {num(t.last_loss)} (best {num(t.best_loss)} at epoch "
            f"{t.best_epoch})"
        )
    if t.recent_loss_change is not None:
        trend = (
            "still falling"
            if t.recent_loss_change < -0.02
            else ("rising" if t.recent_loss_change > 0.02 else "flat")
        )
        parts.append(f"last epochs {trend} ({t.recent_loss_change:+.1%})")
    if t.last_valid:
        parts.append(
            "validation (meV units, a held-out part of the train split) "
            + ", ".join(
                f"{k} {num(t.first_valid.get(k))} -> {num(v)}" for k, v in t.last_valid.items()
            )
        )
    return "; ".join(parts)


def _md_lines(result: ScoreResult) -> list[str]:
    replicas = result.details.get("md_replicas") or []
    if not replicas:
        return []
    lines = [f"MD replicas ({len(replicas)}): " + ",".join(_REPLICA_KEYS)]
    for r in replicas:
        lines.append(",".join(num(r.get(k)) for k in _REPLICA_KEYS))  # never trace_file
    return lines


def recipe_space_text() -> str:
    return "\n".join(recipe_space().values())


def incumbent_text(state: CampaignState) -> str:
    return (
        f"incumbent recipe: {recipe_text(state.incumbent)}\n"
        f"incumbent result: {result_text(state.incumbent_result)}"
    )


def untouched_keys(state: CampaignState) -> list[str]:
    """Recipe keys no candidate of the campaign has moved from the baseline's value (the seed
    aside): levers not pulled yet. Small models otherwise keep nudging the one they tried."""
    tried = [h.recipe for h in state.history] + list(state.pending) + [state.incumbent]
    moved = {k for r in tried for k in state.baseline.diff(r)}
    return [k for k in Recipe.model_fields if k not in moved and k != "seed"]


def tried_at(state: CampaignState, recipe: Recipe) -> str:
    """Where ``recipe`` was tried, as a history row says it (for a refusal)."""
    for h in state.history:
        if h.recipe == recipe and h.program_sha256 == state.program_sha256:
            return f"iteration {h.iteration} ({h.verdict}: {h.reason})"
    return "this iteration (already proposed)"


def overview(state: CampaignState) -> str:
    """The first user message: everything needed for a proposal, in one compact block."""
    head = f"Iteration {state.iteration} of {state.iterations_total}."
    if state.train_frames is not None:
        usable = frames_trained_on(state.train_frames)
        head += f" Training data: {state.train_frames} frames (batch_size at most {usable})."
        head += (
            " Every frame has a stress label (loss=stress can fit it)."
            if state.train_stress
            else " No stress labels (loss=stress unavailable)."
        )
    parts = [
        head,
        scorecard_text(state),
        incumbent_text(state),
        "history:\n" + history_table(state.history),
    ]
    if untouched := untouched_keys(state):
        parts.append("keys no candidate has changed yet: " + ", ".join(untouched))
    if state.pending:
        pending = [compact(state.incumbent.diff(r)) for r in state.pending]
        parts.append(
            "already proposed, not yet decided (propose something else): " + "; ".join(pending)
        )
    if state.asked_alongside:
        others = "1 other proposal is" if state.asked_alongside == 1 else "other proposals are"
        if state.asked_alongside > 1:
            others = f"{state.asked_alongside} {others}"
        parts.append(
            f"{others} being asked of you at this moment, from this same state, and cannot "
            "be shown here; this is number "
            f"{state.slot + 1}: propose your idea ranked {state.slot + 1} by promise, so "
            "that the proposals differ"
        )
    if state.last_error:
        parts.append(f"your previous proposal was refused: {state.last_error}")
    return "\n\n".join(parts)
