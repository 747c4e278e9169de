"""What each part of the report shows, as plain data taken from the run folder.

One function per figure or table; the drawing (``figures``) and the page (``html``) only read
these, so tests can check the numbers a reader will see.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlipilot.campaign.ledger import LedgerEvent
from mlipilot.report.ledger_view import RunView, candidate_of

DECISION_COLORS = {
    "ACCEPT": "#2ca02c",
    "REVERT": "#d62728",
    "BASELINE": "#7f7f7f",
    "FAILED": "#000000",
}

# The metrics shown in the iteration table, in order, with their headers.
TABLE_METRICS = {
    "energy_mae_meV_per_atom": "E MAE (meV/atom)",
    "force_mae_meV_per_A": "F MAE (meV/Å)",
    "md_survival_fraction": "MD survival",
    "relative_throughput": "speed vs baseline",
}


def is_failed(decision: LedgerEvent) -> bool:
    """A candidate that never got a score: crash, NaN loss, time-out, scoring error."""
    return decision.metrics is None


def is_incumbent_change(decision: LedgerEvent) -> bool:
    """The rows after which the incumbent is this row's candidate."""
    return not is_failed(decision) and decision.decision in ("BASELINE", "ACCEPT")


def iteration_label(iteration: int | None, candidate: str | None) -> str:
    """``iteration 3``, or ``iteration 3 (it003-2)`` where the iteration had several
    candidates."""
    if candidate is None or iteration is None or candidate == f"it{iteration:03d}":
        return f"iteration {iteration}"
    return f"iteration {iteration} ({candidate})"


# --- header -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    campaign: str
    run: str
    agent: str
    spec_name: str
    spec_version: int
    spec_hash: str
    train_hash: str
    test_hash: str
    iterations_done: int  # iterations with a decision, the baseline not counted
    candidates_done: int  # candidates decided (several per iteration), the baseline not counted
    iterations_planned: int | None
    epochs: int | None
    status: str  # finished | failed | interrupted | running
    wall_s: float | None
    best_iteration: int | None
    best_candidate: str | None
    best_feasible: bool | None
    best_composite: float | None
    best_violation: float | None


def header(view: RunView) -> Header:
    started, finished = view.started, view.finished
    steps = incumbent_steps(view)
    best = steps[-1] if steps else None
    return Header(
        campaign=str(view.campaign_setting("name") or view.run_dir.name),
        run=view.run_dir.name,
        agent=(started.agent if started else None) or view.decisions[0].agent or "?",
        spec_name=view.spec.name,
        spec_version=view.spec.version,
        spec_hash=view.spec_hash,
        train_hash=(started.train_hash if started else None) or "?",
        test_hash=(started.test_hash if started else None) or view.decisions[0].test_hash or "?",
        iterations_done=len({d.iteration for d in view.decisions if d.iteration}),
        candidates_done=sum(1 for d in view.decisions if d.iteration),
        iterations_planned=view.campaign_setting("budget", "iterations"),
        epochs=view.campaign_setting("budget", "epochs"),
        status=(finished.status if finished else None) or "running",
        wall_s=finished.duration_s if finished else None,
        best_iteration=best.incumbent_iteration if best else None,
        best_candidate=best.incumbent_candidate if best else None,
        best_feasible=best.feasible if best else None,
        best_composite=best.composite if best else None,
        best_violation=best.violation if best else None,
    )


# --- figure 1: composite / violation with the incumbent -----------------------------------


@dataclass(frozen=True)
class ScorePoint:
    iteration: int
    decision: str
    failed: bool
    feasible: bool | None
    composite: float | None
    violation: float | None


@dataclass(frozen=True)
class IncumbentStep:
    """The incumbent after the decision of ``candidate`` (of ``iteration``)."""

    iteration: int
    candidate: str
    incumbent_iteration: int | None  # None while there is no scored incumbent
    incumbent_candidate: str | None  # its candidate name, e.g. it003-2
    feasible: bool | None
    composite: float | None
    violation: float | None


@dataclass(frozen=True)
class ScoreFigure:
    points: list[ScorePoint]
    incumbent: list[IncumbentStep]
    feasibility_threshold: float = 0.0  # total violation; feasible means exactly this


def incumbent_steps(view: RunView) -> list[IncumbentStep]:
    steps: list[IncumbentStep] = []
    current: LedgerEvent | None = None
    for d in view.decisions:
        if is_incumbent_change(d):
            current = d
        assert d.iteration is not None
        steps.append(
            IncumbentStep(
                iteration=d.iteration,
                candidate=candidate_of(d),
                incumbent_iteration=current.iteration if current else None,
                incumbent_candidate=candidate_of(current) if current else None,
                feasible=current.feasible if current else None,
                composite=current.composite if current else None,
                violation=current.violation if current else None,
            )
        )
    return steps


def score_figure(view: RunView) -> ScoreFigure:
    points = [
        ScorePoint(
            iteration=d.iteration or 0,
            decision=d.decision or "?",
            failed=is_failed(d),
            feasible=d.feasible,
            composite=d.composite,
            violation=d.violation,
        )
        for d in view.decisions
    ]
    return ScoreFigure(points=points, incumbent=incumbent_steps(view))


# --- figure 2: decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionBar:
    iteration: int
    decision: str  # as in the ledger: BASELINE | ACCEPT | REVERT
    failed: bool  # REVERT (or BASELINE) without metrics
    reason: str

    @property
    def category(self) -> str:
        return "FAILED" if self.failed else self.decision

    @property
    def color(self) -> str:
        return DECISION_COLORS.get(self.category, "#bbbbbb")


@dataclass(frozen=True)
class DecisionFigure:
    bars: list[DecisionBar]


def decision_figure(view: RunView) -> DecisionFigure:
    return DecisionFigure(
        bars=[
            DecisionBar(
                iteration=d.iteration or 0,
                decision=d.decision or "?",
                failed=is_failed(d),
                reason=d.reason or "",
            )
            for d in view.decisions
        ]
    )


# --- figure 3: each constrained metric against its threshold ------------------------------


@dataclass(frozen=True)
class MetricPoint:
    iteration: int
    value: float
    accepted: bool  # BASELINE or ACCEPT: this candidate became the incumbent


@dataclass(frozen=True)
class ConstraintPanel:
    metric: str
    unit: str
    op: str  # "<=" or ">="
    threshold: float
    points: list[MetricPoint]


@dataclass(frozen=True)
class ConstraintFigure:
    panels: list[ConstraintPanel]


def constraint_figure(view: RunView) -> ConstraintFigure:
    panels = []
    for c in view.spec.constraints:
        points = [
            MetricPoint(d.iteration or 0, d.metrics[c.metric], is_incumbent_change(d))
            for d in view.decisions
            if d.metrics is not None and c.metric in d.metrics
        ]
        op = "<=" if c.max is not None else ">="
        panels.append(ConstraintPanel(c.metric, c.unit, op, c.threshold, points))
    return ConstraintFigure(panels=panels)


# --- figure 4: MD traces ------------------------------------------------------------------


@dataclass(frozen=True)
class MDTrace:
    iteration: int
    name: str  # the candidate the trace is shown for (its decision row), e.g. it003-2
    candidate: str  # the folder that holds the trace (a duplicate points at the original)
    replica: str  # the trace file name
    role: str  # "incumbent" or "failed"
    status: str  # the replica's verdict: stable, min_distance, temperature_runaway, ...
    time_ps: list[float]
    temperature_K: list[float]
    total_eV: list[float]
    min_distance_A: list[float]


@dataclass(frozen=True)
class MDFigure:
    incumbent_iteration: int | None
    traces: list[MDTrace]
    min_distance_threshold_A: float
    target_temperatures_K: list[float]
    runaway_factor: float
    missing: list[str] = field(default_factory=list)  # trace files named but not found
    incumbent_candidate: str | None = None  # the final incumbent's candidate name


def _replicas(evaluation: LedgerEvent | None) -> list[dict[str, Any]]:
    if evaluation is None or not evaluation.detail:
        return []
    return list(evaluation.detail.get("md_replicas") or [])


def read_trace(path: Path) -> dict[str, list[float]]:
    columns: dict[str, list[float]] = {
        "time_ps": [],
        "temperature_K": [],
        "total_eV": [],
        "min_distance_A": [],
    }
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for name, values in columns.items():
                try:
                    values.append(float(row[name]))
                except (KeyError, TypeError, ValueError):
                    values.append(math.nan)
    return columns


def md_figure(view: RunView) -> MDFigure:
    steps = incumbent_steps(view)
    last = steps[-1] if steps else None
    final = last.incumbent_candidate if last else None
    final_iteration = last.incumbent_iteration if last else None
    # (iteration, candidate name, folder, replica, role)
    wanted: list[tuple[int, str, str, dict[str, Any], str]] = []
    seen: set[str] = set()
    if final is not None:
        folder = view.trained_candidate(final)
        seen.add(folder)
        for replica in _replicas(view.evaluation_of(final)):
            wanted.append((final_iteration or 0, final, folder, replica, "incumbent"))
    for d in view.decisions:
        name = candidate_of(d)
        folder = view.trained_candidate(name)
        if folder in seen:
            continue
        seen.add(folder)
        for replica in _replicas(view.evaluation_of(name)):
            if replica.get("status") != "stable":
                wanted.append((d.iteration or 0, name, folder, replica, "failed"))
    traces, missing = [], []
    for iteration, name, folder, replica, role in wanted:
        file = str(replica.get("trace_file", ""))
        path = view.run_dir / "candidates" / folder / "md" / file
        if not file or not path.is_file():
            missing.append(f"candidates/{folder}/md/{file}")
            continue
        cols = read_trace(path)
        traces.append(
            MDTrace(
                iteration=iteration,
                name=name,
                candidate=folder,
                replica=file,
                role=role,
                status=str(replica.get("status", "?")),
                **cols,
            )
        )
    md = view.spec.md
    return MDFigure(
        incumbent_iteration=final_iteration,
        traces=traces,
        min_distance_threshold_A=md.min_distance_A,
        target_temperatures_K=[float(t) for t in md.temperatures_K],
        runaway_factor=md.max_temperature_factor,
        missing=missing,
        incumbent_candidate=final,
    )


# --- the recipe: baseline -> incumbent ----------------------------------------------------


@dataclass(frozen=True)
class DiffEntry:
    key: str
    baseline: Any
    incumbent: Any


@dataclass(frozen=True)
class AcceptedStep:
    iteration: int
    hypothesis: str
    patch: dict[str, Any]
    reason: str
    candidate: str = ""  # e.g. it003-2


@dataclass(frozen=True)
class RecipeDiff:
    incumbent_iteration: int | None
    entries: list[DiffEntry]
    path: list[AcceptedStep]  # the accepted proposals that led there, in order
    incumbent_candidate: str | None = None  # e.g. it003-2

    def as_patch(self) -> dict[str, Any]:
        return {e.key: e.incumbent for e in self.entries}


def recipe_diff(view: RunView) -> RecipeDiff:
    steps = incumbent_steps(view)
    last = steps[-1] if steps else None
    baseline = view.baseline
    if last is None or last.incumbent_candidate is None:
        return RecipeDiff(None, [], [])
    incumbent = view.recipe_of(last.incumbent_candidate)
    before = baseline.model_dump()
    entries = [DiffEntry(k, before[k], v) for k, v in baseline.diff(incumbent).items()]
    path = [
        AcceptedStep(
            iteration=d.iteration or 0,
            hypothesis=d.hypothesis or "",
            patch=dict(d.patch or {}),
            reason=d.reason or "",
            candidate=candidate_of(d),
        )
        for d in view.decisions
        if d.decision == "ACCEPT" and not is_failed(d)
    ]
    return RecipeDiff(
        incumbent_iteration=last.incumbent_iteration,
        entries=entries,
        path=path,
        incumbent_candidate=last.incumbent_candidate,
    )


# --- the table of iterations --------------------------------------------------------------


@dataclass(frozen=True)
class TableRow:
    iteration: int
    candidate: str  # it003, or it003-2 with several candidates per iteration
    hypothesis: str
    changed: dict[str, Any]
    metrics: dict[str, float]  # the TABLE_METRICS present
    feasible: bool | None
    composite: float | None
    violation: float | None
    decision: str
    failed: bool
    reason: str


def iteration_table(view: RunView) -> list[TableRow]:
    return [
        TableRow(
            iteration=d.iteration or 0,
            candidate=candidate_of(d),
            hypothesis=d.hypothesis or "",
            changed=dict(d.patch or {}),
            metrics={k: d.metrics[k] for k in TABLE_METRICS if d.metrics and k in d.metrics},
            feasible=d.feasible,
            composite=d.composite,
            violation=d.violation,
            decision=d.decision or "?",
            failed=is_failed(d),
            reason=d.reason or "",
        )
        for d in view.decisions
    ]
