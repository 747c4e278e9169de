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

from mlipilot.ledger import LedgerEvent, candidate_of
from mlipilot.ledger.events import (
    AgentCallDetail,
    DecisionDetail,
    EvaluationDetail,
    ValidationDetail,
)
from mlipilot.ledger.history import token_totals, tokens_by_candidate
from mlipilot.report.ledger_view import RunView
from mlipilot.scoring.spec import table_metrics

DECISION_COLORS = {
    "ACCEPT": "#2ca02c",
    "REVERT": "#d62728",
    "BASELINE": "#7f7f7f",
    "FAILED": "#000000",
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
    llm_calls: int = 0  # agent_call rows: conversations with an LLM agent
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def header(view: RunView) -> Header:
    started, finished = view.started, view.finished
    steps = incumbent_steps(view)
    best = steps[-1] if steps else None
    prompt, completion = token_totals(view.agent_calls)
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
        llm_calls=len(view.agent_calls),
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


@dataclass(frozen=True)
class Counts:
    """What a campaign did, each number saying what it counts (the baseline not counted)."""

    proposals: int  # candidates the agent proposed (duplicates included)
    decided: int  # candidates with a decision
    agent_failures: int  # refused proposals, failed or given-up calls, a spent token budget


def counts(view: RunView) -> Counts:
    history = view.history
    events = history.events if history is not None else []
    return Counts(
        proposals=sum(1 for name in view.proposals if name != "it000"),
        decided=sum(1 for d in view.decisions if d.iteration),
        agent_failures=sum(1 for e in events if e.event == "agent_failure"),
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
    candidate: str = ""
    noise: NoiseCheck | None = None  # the seed re-evaluation behind the decision, if any


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
            candidate=candidate_of(d),
            noise=noise_check(d),
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
    if evaluation is None:
        return []
    return list(evaluation.details(EvaluationDetail).md_replicas)


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
    metrics: dict[str, float]  # the table_columns present
    feasible: bool | None
    composite: float | None
    violation: float | None
    decision: str
    failed: bool
    reason: str
    tokens: int | None = None  # LLM tokens spent proposing this candidate; None: no LLM call
    noise: NoiseCheck | None = None


def table_columns(view: RunView) -> dict[str, str]:
    """metric -> header: the scorecard's constrained metrics, in its order."""
    return {m: " ".join(h.split("\n")) for m, h in table_metrics(view.spec).items()}


def iteration_table(view: RunView) -> list[TableRow]:
    columns = table_columns(view)
    tokens = candidate_tokens(view)
    return [
        TableRow(
            iteration=d.iteration or 0,
            candidate=candidate_of(d),
            hypothesis=d.hypothesis or "",
            changed=dict(d.patch or {}),
            metrics={k: d.metrics[k] for k in columns if d.metrics and k in d.metrics},
            feasible=d.feasible,
            composite=d.composite,
            violation=d.violation,
            decision=d.decision or "?",
            failed=is_failed(d),
            reason=d.reason or "",
            tokens=tokens.get(candidate_of(d)),
            noise=noise_check(d),
        )
        for d in view.decisions
    ]


# --- LLM tokens: what the agent cost, against the score it reached -------------------------


def call_tokens(call: LedgerEvent) -> tuple[int, int]:
    """(prompt, completion) tokens of one ``agent_call`` row (unreadable counts: none)."""
    detail = call.details(AgentCallDetail)
    return detail.prompt_tokens, detail.completion_tokens


def candidate_tokens(view: RunView) -> dict[str, int]:
    """Tokens spent on each candidate's proposal (all its conversations, failed ones too)."""
    return tokens_by_candidate(view.agent_calls)


@dataclass(frozen=True)
class TokenIteration:
    """The LLM tokens of one iteration (every candidate, failed conversations included)."""

    iteration: int
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cumulative_tokens: int  # everything spent up to the end of this iteration

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenScorePoint:
    """The incumbent after one decision, against the tokens spent before that decision."""

    iteration: int
    candidate: str  # the decided candidate
    tokens: int  # cumulative tokens of the agent_call rows written before the decision
    incumbent_candidate: str | None
    feasible: bool | None
    composite: float | None
    violation: float | None


@dataclass(frozen=True)
class TokenFigure:
    agent: str
    iterations: list[TokenIteration]  # 0 .. the last iteration with a decision or a call
    incumbent: list[TokenScorePoint]  # one per decision, in ledger order
    calls: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def spent(self) -> bool:
        """False for agents without a model (rule-based, random, optuna): nothing to draw."""
        return self.calls > 0


def token_figure(view: RunView) -> TokenFigure:
    calls = view.agent_calls
    per_iteration: dict[int, list[LedgerEvent]] = {}
    for call in calls:
        per_iteration.setdefault(call.iteration or 0, []).append(call)
    # Iterations without a decision still cost tokens (an agent that failed or gave up).
    last = max([d.iteration or 0 for d in view.decisions] + list(per_iteration), default=0)
    iterations, running = [], 0
    for it in range(last + 1):
        prompt, completion = token_totals(per_iteration.get(it, []))
        running += prompt + completion
        iterations.append(
            TokenIteration(it, len(per_iteration.get(it, [])), prompt, completion, running)
        )
    # Ledger order decides what was spent before a decision: row ids grow with time.
    incumbent = []
    for d, step in zip(view.decisions, incumbent_steps(view), strict=True):
        before = [c for c in calls if (c.id or 0) < (d.id or 0)]
        incumbent.append(
            TokenScorePoint(
                iteration=step.iteration,
                candidate=step.candidate,
                tokens=sum(token_totals(before)),
                incumbent_candidate=step.incumbent_candidate,
                feasible=step.feasible,
                composite=step.composite,
                violation=step.violation,
            )
        )
    prompt, completion = token_totals(calls)
    return TokenFigure(
        agent=header(view).agent,
        iterations=iterations,
        incumbent=incumbent,
        calls=len(calls),
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


# --- noise-aware acceptance: the seed re-evaluation behind a decision ----------------------


@dataclass(frozen=True)
class SeedScores:
    """One side of a noise check: a candidate's score over the re-evaluation seeds."""

    candidate: str
    values: list[float]  # NaN where a seed has no result
    feasible: list[bool | None]  # None where a seed has no result

    @property
    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]

    @property
    def mean(self) -> float | None:
        vals = self.finite
        return sum(vals) / len(vals) if vals else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (n - 1); 0 for a single seed."""
        vals, mean = self.finite, self.mean
        if mean is None:
            return None
        if len(vals) < 2:
            return 0.0
        return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


@dataclass(frozen=True)
class NoiseCheck:
    """``detail.noise`` of a decision (``campaign.decision``): the would-be winner and the
    incumbent re-scored over several seeds. ``gain`` is the incumbent's mean minus the
    candidate's, ``spread`` the two sample sds combined in quadrature; the gain had to exceed
    ``k * spread``. Both are None when a seed failed."""

    seeds: list[int]
    k: float | None
    metric: str  # "composite" (both feasible) or "violation"
    incumbent: SeedScores
    candidate: SeedScores
    gain: float | None
    spread: float | None

    @property
    def bar(self) -> float | None:
        """What the gain had to exceed: ``k * spread``."""
        if self.spread is None:
            return None
        return (1.0 if self.k is None else self.k) * self.spread

    @property
    def beats_noise(self) -> bool | None:
        bar = self.bar
        if self.gain is None or bar is None:
            return None
        return self.gain > bar


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _seed_scores(node: Any) -> SeedScores | None:
    if not isinstance(node, dict) or not isinstance(node.get("values"), list):
        return None
    values = [_float(v) for v in node["values"]]
    flags = node.get("feasible") if isinstance(node.get("feasible"), list) else []
    return SeedScores(
        candidate=str(node.get("candidate") or "?"),
        values=[math.nan if v is None else v for v in values],
        feasible=[None if f is None else bool(f) for f in flags],
    )


def noise_check(decision: LedgerEvent) -> NoiseCheck | None:
    """The decision's noise check, or None: most ledgers have none, and a malformed one is
    shown as absent rather than breaking the report."""
    node = decision.details(DecisionDetail).noise
    if not isinstance(node, dict):
        return None
    incumbent, candidate = _seed_scores(node.get("incumbent")), _seed_scores(node.get("candidate"))
    if incumbent is None or candidate is None:
        return None
    seeds = node.get("seeds") if isinstance(node.get("seeds"), list) else []
    return NoiseCheck(
        seeds=[int(s) for s in seeds if isinstance(s, int | float) and not isinstance(s, bool)],
        k=_float(node.get("k")),
        metric=str(node.get("metric") or "composite"),
        incumbent=incumbent,
        candidate=candidate,
        gain=_float(node.get("gain")),
        spread=_float(node.get("spread")),
    )


@dataclass
class ValidationSection:
    """Where scorecard and validation agree: the accepts, and the validated models' checks."""

    accepted: list[str]  # the candidates the scorecard accepted (the baseline not counted)
    validated: list[LedgerEvent]  # validation rows, in ledger order
    best: str | None  # the campaign's best candidate, if it ended

    @property
    def confirmed(self) -> list[str]:
        """Accepted candidates whose validation passed every check."""
        return [
            v.candidate or ""
            for v in self.validated
            if v.status == "passed" and v.candidate in self.accepted
        ]


def validation_section(view: RunView) -> ValidationSection:
    accepted = [d.candidate or "" for d in view.decisions if d.decision == "ACCEPT"]
    best = header(view).best_candidate
    return ValidationSection(accepted, list(view.validations), best)


@dataclass(frozen=True)
class AgreementFigure:
    """Scorecard against validation, candidate by candidate: which checks each validated model
    passes (the baseline's and every accepted one's, in ledger order)."""

    candidates: list[str]  # validated candidates, in ledger order
    accepted: list[bool]  # the scorecard's verdict on each: ACCEPT (or the best, for a baseline)
    checks: list[str]  # every check any of them ran, in the suite's order
    passed: list[list[bool | None]]  # [check][candidate]; None: not run on that model

    @property
    def confirmed(self) -> int:
        """Scorecard accepts whose every check passed."""
        return sum(
            1
            for j, ok in enumerate(self.accepted)
            if ok and all(row[j] is not False for row in self.passed)
        )

    @property
    def disagreements(self) -> list[tuple[str, list[str]]]:
        """Accepted candidates the validation does not confirm, with the checks they fail."""
        out = []
        for j, (name, ok) in enumerate(zip(self.candidates, self.accepted, strict=True)):
            failed = [c for c, row in zip(self.checks, self.passed, strict=True) if row[j] is False]
            if ok and failed:
                out.append((name, failed))
        return out


def agreement_figure(view: RunView) -> AgreementFigure | None:
    """None when no model was validated."""
    section = validation_section(view)
    if not section.validated:
        return None
    candidates = [v.candidate or "" for v in section.validated]
    results: list[dict[str, bool]] = []
    checks: list[str] = []
    for v in section.validated:
        found = {
            str(c.get("metric")): bool(c.get("passed")) for c in v.details(ValidationDetail).checks
        }
        results.append(found)
        checks += [m for m in found if m not in checks]
    accepted = [c in section.accepted or c == section.best for c in candidates]
    passed = [[r.get(check) for r in results] for check in checks]
    return AgreementFigure(candidates, accepted, checks, passed)
