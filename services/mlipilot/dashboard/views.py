"""What the dashboard shows, as JSON-ready data built from a campaign's events.

The numbers come from the report's own data functions (``report/data.py``) over the events a
feed has read, so the live page and the static report never disagree. Text written by an
agent (hypotheses, reasons, diffs) is passed on as data; the page puts it in the document as
text, never as markup.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from typing import Any

from mlipilot.dashboard.feeds import CampaignFeed
from mlipilot.errors import MlipilotError
from mlipilot.ledger import LedgerEvent, candidate_of
from mlipilot.ledger.events import ProposalDetail, TrainingDetail
from mlipilot.recipe import Recipe
from mlipilot.report import data
from mlipilot.report.colors import campaign_color
from mlipilot.report.ledger_view import RunView, run_view


def _view(feed: CampaignFeed) -> RunView:
    spec, spec_hash = feed.spec()
    return run_view(feed.run_dir, spec, spec_hash, feed.history())


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def summary(feed: CampaignFeed) -> dict[str, Any]:
    """One line of the campaign list: status, agent, best, and counts that say what they count."""
    history = feed.history()
    if history.started is None:  # created, nothing recorded yet
        return {"id": feed.id, "color": campaign_color(feed.id), "status": "starting"} | {
            k: None for k in _SUMMARY_KEYS
        }
    view = _view(feed)
    h = data.header(view)
    counts = data.counts(view)
    return {
        "id": feed.id,
        "color": campaign_color(feed.id),
        "campaign": h.campaign,
        "agent": h.agent,
        "status": h.status,
        "scorecard": f"{h.spec_name} v{h.spec_version}",
        "spec_hash": h.spec_hash,
        "proposals": counts.proposals,
        "decided": counts.decided,
        "agent_failures": counts.agent_failures,
        "iterations_planned": h.iterations_planned,
        "best_candidate": h.best_candidate,
        "best_feasible": h.best_feasible,
        "best_composite": _finite(h.best_composite),
        "best_violation": _finite(h.best_violation),
        "tokens": h.total_tokens,
        "wall_s": h.wall_s,
        "events": len(history.events),
        "version": feed.version,
    }


_SUMMARY_KEYS = (
    "campaign", "agent", "scorecard", "spec_hash", "proposals", "decided", "agent_failures",
    "iterations_planned", "best_candidate", "best_feasible", "best_composite", "best_violation",
    "tokens", "wall_s", "events", "version",
)  # fmt: skip


def campaign(feed: CampaignFeed) -> dict[str, Any]:
    """One campaign live: candidates (in flight and decided), the score against iterations with
    the incumbent line, decisions with reasons and hypotheses, tokens per iteration."""
    if feed.history().started is None:
        empty: dict[str, Any] = {"points": [], "incumbent": []}
        return {"summary": summary(feed), "candidates": [], "score": empty, "tokens": []}
    view = _view(feed)
    score = data.score_figure(view)
    tokens = data.token_figure(view)
    return {
        "summary": summary(feed),
        "candidates": candidates(feed),
        "score": {
            "points": [_plain(asdict(p)) for p in score.points],
            "incumbent": [_plain(asdict(s)) for s in score.incumbent],
        },
        "tokens": [
            {"iteration": t.iteration, "calls": t.calls, "tokens": t.total_tokens}
            for t in tokens.iterations
        ],
        "constraints": [
            {"metric": c.metric, "op": _op(c.max), "threshold": c.threshold}
            for c in view.spec.constraints
        ],
    }


def candidates(feed: CampaignFeed) -> list[dict[str, Any]]:
    """Every proposed candidate with where it is: proposed, training (epoch), scoring (MD
    steps), scored, or decided (verdict, reason)."""
    history = feed.history()
    tokens = history.tokens_by_candidate()
    rows: dict[str, dict[str, Any]] = {}
    for e in history.events:
        if e.event not in ("proposal", "progress", "training", "evaluation", "decision"):
            continue
        name = candidate_of(e)
        if e.event == "proposal":
            rows[name] = {
                "name": name,
                "iteration": e.iteration,
                "hypothesis": e.hypothesis or "",
                "patch": e.patch or {},
                "stage": "duplicate" if e.status == "duplicate" else "proposed",
                "progress": None,
                "verdict": None,
                "reason": None,
                "feasible": None,
                "composite": None,
                "violation": None,
                "tokens": tokens.get(name),
            }
            continue
        row = rows.get(name)
        if row is None:  # a seed repeat: shown with the candidate it repeats
            continue
        if e.event == "progress":
            detail = e.detail or {}
            row["stage"] = "training" if detail.get("stage") == "train" else "scoring"
            row["progress"] = {
                "stage": detail.get("stage"),
                "done": detail.get("done"),
                "total": detail.get("total"),
            }
        elif e.event == "training":
            row["stage"] = "scoring" if e.status == "ok" else f"training {e.status}"
        elif e.event == "evaluation":
            row["stage"] = "scored" if e.metrics is not None else "scoring failed"
        elif e.event == "decision":
            row.update(
                stage="decided",
                verdict=e.decision,
                reason=e.reason or "",
                feasible=e.feasible,
                composite=_finite(e.composite),
                violation=_finite(e.violation),
            )
    return list(rows.values())


def candidate(feed: CampaignFeed, name: str) -> dict[str, Any] | None:
    """One candidate: its recipe against the incumbent it was proposed from (or its code diff),
    its training curve, each constraint against its threshold, MD traces with failures
    marked, and validation results when there are any. None: no such candidate."""
    view = _view(feed)
    history = feed.history()
    proposal = history.proposals.get(name)
    if proposal is None:
        return None
    recipe = Recipe.model_validate(proposal.recipe) if proposal.recipe else None
    before = _incumbent_before(view, proposal)
    diff = []
    if recipe is not None and before is not None:
        old = before.model_dump()
        changed = before.diff(recipe)
        diff = [{"key": k, "incumbent": old[k], "candidate": v} for k, v in changed.items()]
    trained = view.trained_candidate(name)
    training = history.trainings.get(trained)
    curve = []
    if training is not None:
        curve = [
            {"epoch": r.get("epoch"), "loss": _finite(r.get("loss"))}
            for r in training.details(TrainingDetail).curve
            if isinstance(r.get("epoch"), int) and r["epoch"] >= 0
        ]
    evaluation = history.evaluations.get(trained)
    decision = next((d for d in history.decisions if candidate_of(d) == name), None)
    constraints = []
    if evaluation is not None and evaluation.metrics is not None:
        for c in view.spec.constraints:
            value = evaluation.metrics.get(c.metric)
            ok = None
            if value is not None and math.isfinite(value):
                ok = value <= c.threshold if c.max is not None else value >= c.threshold
            constraints.append(
                {
                    "metric": c.metric,
                    "unit": c.unit,
                    "op": _op(c.max),
                    "threshold": c.threshold,
                    "value": _finite(value),
                    "ok": ok,
                }
            )
    return {
        "name": name,
        "iteration": proposal.iteration,
        "hypothesis": proposal.hypothesis or "",
        "recipe_diff": diff,
        "code_diff": proposal.details(ProposalDetail).diff,
        "duplicate_of": proposal.details(ProposalDetail).duplicate_of,
        "training": {
            "status": training.status if training else None,
            "reason": training.reason if training else None,
            "curve": curve,
        },
        "constraints": constraints,
        "decision": {
            "verdict": decision.decision if decision else None,
            "reason": decision.reason if decision else None,
        },
        "md": _md_traces(view, name, trained, evaluation),
        "validation": [
            {"status": v.status, "reason": v.reason, "detail": v.detail or {}}
            for v in history.validations
            if candidate_of(v) == name
        ],
    }


def _incumbent_before(view: RunView, proposal: LedgerEvent) -> Recipe | None:
    """The incumbent's recipe when ``proposal`` was made: the last ACCEPT (or the baseline)
    decided before its row."""
    current = view.baseline if view.started is not None else None
    for d in view.decisions:
        if (d.id or 0) >= (proposal.id or 0):
            break
        if data.is_incumbent_change(d):
            # A decision without its proposal row: keep the last known.
            with contextlib.suppress(MlipilotError):
                current = view.recipe_of(candidate_of(d))
    return current


def _md_traces(
    view: RunView, name: str, folder: str, evaluation: LedgerEvent | None
) -> list[dict[str, Any]]:
    traces = []
    for replica in data._replicas(evaluation):
        file = str(replica.get("trace_file", ""))
        path = view.run_dir / "candidates" / folder / "md" / file
        if not file or "/" in file or not path.is_file():
            continue
        cols = data.read_trace(path)
        traces.append(
            {
                "replica": file,
                "status": str(replica.get("status", "?")),
                "failed": replica.get("status") != "stable",
                "time_ps": [_finite(x) for x in cols["time_ps"]],
                "temperature_K": [_finite(x) for x in cols["temperature_K"]],
                "min_distance_A": [_finite(x) for x in cols["min_distance_A"]],
            }
        )
    return traces


def compare(feeds: list[CampaignFeed]) -> dict[str, Any]:
    """Several campaigns side by side, as ``mlipilot compare`` shows them, but live."""
    out: list[dict[str, Any]] = []
    for feed in feeds:
        if feed.history().started is None:  # created, nothing recorded yet
            out.append({"summary": summary(feed), "incumbent": [], "tokens": []})
            continue
        view = _view(feed)
        steps = data.incumbent_steps(view)
        tokens = data.token_figure(view)
        out.append(
            {
                "summary": summary(feed),
                "incumbent": [_plain(asdict(s)) for s in steps],
                "tokens": [
                    {"candidate": p.candidate, "tokens": p.tokens} for p in tokens.incumbent
                ],
            }
        )
    return {"campaigns": out}


def _op(upper: float | None) -> str:
    return "<=" if upper is not None else ">="


def _plain(value: Any) -> Any:
    """JSON has no NaN or infinity: such a number is shown as missing."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
