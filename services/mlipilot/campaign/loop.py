"""The campaign loop: propose, train, score, decide, record — one iteration at a time.

Every step is written to the ledger before the next begins. A candidate that fails (training
crash, NaN loss, time-out, scoring error) is a recorded REVERT with its cause; the campaign
goes on. Only a baseline that cannot be trained or scored stops the campaign, since every
later decision and the throughput yardstick depend on it.

The same loop runs for ``mlipilot run`` (in one process, scorecard in process) and inside the
orchestrator service (scorecard over gRPC, stoppable by a cancel or a shutdown).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mlipilot.agents import make_agent
from mlipilot.agents.base import Agent, AgentGaveUp, CampaignState, HistoryEntry, Proposal
from mlipilot.campaign.decision import Decision, decide
from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.ledger import Ledger, LedgerEvent, utc_now
from mlipilot.campaign.reporting import IterationRow, NullReporter, Reporter
from mlipilot.campaign.stopping import CampaignStopped, StopRequest
from mlipilot.config import Campaign
from mlipilot.data.dataset import Dataset, ensure_cu_emt
from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe, RecipeError
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import Scorecard, Scorer, ScorerUnavailable, hardware
from mlipilot.scoring.spec import ScorecardSpec, load_spec
from mlipilot.training.mace_args import training_key
from mlipilot.training.trainer import EpochRecord, TrainingBudget, train_recipe

# Builds the scorer for a campaign: (spec, spec sha256, dataset) -> Scorer.
ScorerFactory = Callable[[ScorecardSpec, str, Dataset], Scorer]


def local_scorer(spec: ScorecardSpec, spec_hash: str, dataset: Dataset) -> Scorer:
    return Scorecard(spec, spec_hash, dataset.load("test"), dataset.hash("test"))


@dataclass
class CampaignOutcome:
    layout: RunLayout
    rows: list[IterationRow]
    best_iteration: int
    best_result: ScoreResult
    wall_s: float


@dataclass
class _Incumbent:
    iteration: int
    recipe: Recipe
    result: ScoreResult
    model: Path


@dataclass
class _Trained:
    """What one training of a recipe gave: reused when a later proposal trains the same."""

    iteration: int
    model: Path | None
    result: ScoreResult | None
    failure: str | None


@dataclass
class _Run:
    campaign: Campaign
    layout: RunLayout
    ledger: Ledger
    scorecard: Scorer
    dataset: Dataset
    reporter: Reporter
    agent_name: str
    stop: StopRequest
    history: list[HistoryEntry] = field(default_factory=list)
    rows: list[IterationRow] = field(default_factory=list)
    trained: dict[str, _Trained] = field(default_factory=dict)  # by training_key

    def record(self, **fields: Any) -> int:
        return self.ledger.append(LedgerEvent(campaign=self.layout.root.name, **fields))

    def stage_progress(self, candidate: str, iteration: int) -> Callable[[str, int, int], None]:
        """A progress callback that shows, records about every tenth step, and stops."""
        last_tenth: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            self.stop.check()
            self.reporter.stage(candidate, stage, done, total)
            tenth = done * 10 // max(total, 1)
            if tenth == last_tenth.get(stage):
                return
            last_tenth[stage] = tenth
            self.record(
                event="progress",
                iteration=iteration,
                candidate=candidate,
                status=stage,
                detail={"stage": stage, "done": done, "total": total},
            )

        return report


def run_campaign(
    campaign: Campaign,
    campaign_file: Path,
    out_root: Path,
    reporter: Reporter | None = None,
    agent: Agent | None = None,
) -> CampaignOutcome:
    """Run a campaign in this process: ``mlipilot run``."""
    layout = create_run(campaign, Path(campaign_file).read_text(), out_root)
    return run_in_layout(campaign, layout, reporter=reporter, agent=agent)


def create_run(campaign: Campaign, campaign_yaml: str, out_root: Path) -> RunLayout:
    """The campaign's run folder, with the campaign file and scorecard spec as run.

    The ledger is created here, empty, so readers (a watcher) can open it from the start.
    """
    layout = RunLayout.create(out_root, campaign.name)
    (layout.root / "campaign.yaml").write_text(campaign_yaml)
    shutil.copyfile(campaign.scorecard, layout.root / "scorecard.yaml")
    Ledger(layout.ledger).close()
    return layout


def run_in_layout(
    campaign: Campaign,
    layout: RunLayout,
    *,
    reporter: Reporter | None = None,
    agent: Agent | None = None,
    scorer_factory: ScorerFactory = local_scorer,
    stop: StopRequest | None = None,
) -> CampaignOutcome:
    """Run ``campaign`` into ``layout``; every step goes to its ledger, also how it ended."""
    reporter = reporter or NullReporter()
    stop = stop or StopRequest()
    start = time.monotonic()
    with Ledger(layout.ledger) as ledger:
        try:
            run, agent = _start(campaign, layout, ledger, reporter, agent, scorer_factory, stop)
            incumbent = _run_iterations(run, agent)
        except BaseException as exc:  # the ledger says how a campaign ended, whatever ended it
            if isinstance(exc, CampaignStopped):
                status: str = exc.status
            else:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            ledger.append(
                LedgerEvent(
                    campaign=layout.root.name,
                    event="campaign_finished",
                    status=status,
                    reason=str(exc) or repr(exc),
                    duration_s=time.monotonic() - start,
                )
            )
            ledger.export_tsv(layout.results_tsv)
            raise
        ledger.export_tsv(layout.results_tsv)
        wall = time.monotonic() - start
        run.record(
            event="campaign_finished",
            status="finished",
            composite=incumbent.result.composite,
            feasible=incumbent.result.feasible,
            violation=incumbent.result.violation,
            reason=f"best is iteration {incumbent.iteration}: {incumbent.result.short()}",
            duration_s=wall,
        )
    outcome = CampaignOutcome(layout, run.rows, incumbent.iteration, incumbent.result, wall)
    _write_summary(outcome)
    reporter.campaign_finished(outcome)
    return outcome


def _start(
    campaign: Campaign,
    layout: RunLayout,
    ledger: Ledger,
    reporter: Reporter,
    agent: Agent | None,
    scorer_factory: ScorerFactory,
    stop: StopRequest,
) -> tuple[_Run, Agent]:
    """Data, scorer and agent ready, and the campaign's start recorded."""
    if campaign.compute.torch_threads:
        torch.set_num_threads(campaign.compute.torch_threads)
    spec, spec_hash = load_spec(campaign.scorecard)
    dataset = ensure_cu_emt(
        campaign.data.path,
        seed=campaign.data.seed,
        n_train=campaign.data.n_train,
        n_test=campaign.data.n_test,
    )
    scorecard = scorer_factory(spec, spec_hash, dataset)
    agent = agent or make_agent(campaign.agent)
    run = _Run(campaign, layout, ledger, scorecard, dataset, reporter, agent.name, stop)
    reporter.campaign_started(campaign, layout, agent.name)
    run.record(
        event="campaign_started",
        agent=agent.name,
        spec_hash=spec_hash,
        train_hash=dataset.hash("train"),
        test_hash=dataset.hash("test"),
        recipe=campaign.baseline.model_dump(),
        detail={"campaign": campaign.model_dump(mode="json"), "hardware": hardware()},
    )
    return run, agent


def _run_iterations(run: _Run, agent: Agent) -> _Incumbent:
    incumbent = _run_baseline(run)
    baseline_model = incumbent.model
    for iteration in range(1, run.campaign.budget.iterations + 1):
        run.stop.check()
        run.record(
            event="iteration_started",
            iteration=iteration,
            candidate=f"it{iteration:03d}",
            detail={"iterations_budget": run.campaign.budget.iterations},
        )
        proposal = _ask_agent(run, agent, iteration, incumbent)
        if proposal is None:
            break
        incumbent = _try_candidate(run, iteration, proposal, incumbent, baseline_model)
    return incumbent


def _run_baseline(run: _Run) -> _Incumbent:
    recipe = run.campaign.baseline
    proposal = Proposal(hypothesis="baseline recipe from the campaign file", patch={"-": "-"})
    run.record(
        event="iteration_started",
        iteration=0,
        candidate="it000",
        detail={"iterations_budget": run.campaign.budget.iterations},
    )
    model, result, failure = _train_and_score(run, 0, recipe, proposal, baseline_model=None)
    run.trained[training_key(recipe, run.campaign.budget.epochs)] = _Trained(
        0, model, result, failure
    )
    decision = decide(result, None, failure=failure)
    _record_decision(run, 0, recipe, proposal, {}, result, decision)
    if result is None or model is None:
        raise MlipilotError(f"the baseline could not be trained and scored: {failure}")
    shutil.copyfile(model, run.layout.best_model)
    return _Incumbent(0, recipe, result, model)


def _ask_agent(run: _Run, agent: Agent, iteration: int, inc: _Incumbent) -> Proposal | None:
    """A validated proposal, or None when the agent gives up; refusals are recorded."""
    last_error = None
    for attempt in range(run.campaign.budget.agent_retries + 1):
        state = CampaignState(
            iteration=iteration,
            iterations_total=run.campaign.budget.iterations,
            spec=run.scorecard.spec,
            baseline=run.campaign.baseline,
            incumbent=inc.recipe,
            incumbent_result=inc.result,
            history=run.history,
            last_error=last_error,
        )
        try:
            proposal = agent.propose(state)
            inc.recipe.patched(proposal.patch)
            return proposal
        except AgentGaveUp as exc:
            run.record(
                event="agent_failure",
                iteration=iteration,
                agent=agent.name,
                status="gave_up",
                reason=str(exc),
            )
            run.reporter.note(f"agent {agent.name} gave up: {exc}")
            return None
        except RecipeError as exc:
            last_error = str(exc)
            run.record(
                event="agent_failure",
                iteration=iteration,
                agent=agent.name,
                status="invalid_patch",
                reason=last_error,
                detail={"attempt": attempt},
            )
    run.reporter.note(f"iteration {iteration}: no valid proposal after retries: {last_error}")
    return None


def _try_candidate(
    run: _Run, iteration: int, proposal: Proposal, inc: _Incumbent, baseline_model: Path
) -> _Incumbent:
    recipe = inc.recipe.patched(proposal.patch)
    key = training_key(recipe, run.campaign.budget.epochs)
    prior = run.trained.get(key)
    if prior is None:
        model, result, failure = _train_and_score(run, iteration, recipe, proposal, baseline_model)
        run.trained[key] = _Trained(iteration, model, result, failure)
    else:  # the same training ran already: answer from the ledger, do not retrain
        model, result, failure = prior.model, prior.result, prior.failure
        run.record(
            event="proposal",
            iteration=iteration,
            candidate=f"it{iteration:03d}",
            agent=run.agent_name,
            hypothesis=proposal.hypothesis,
            patch=proposal.patch,
            recipe=recipe.model_dump(),
            recipe_hash=recipe.digest(),
            status="duplicate",
            detail={"duplicate_of": f"it{prior.iteration:03d}"},
        )
    decision = decide(
        result, inc.result, failure=failure, min_improvement=run.campaign.min_improvement
    )
    if prior is not None:
        reason = f"same training as it{prior.iteration:03d}, not retrained; {decision.reason}"
        decision = Decision(verdict=decision.verdict, reason=reason)
    _record_decision(run, iteration, recipe, proposal, proposal.patch, result, decision)
    if decision.verdict == "ACCEPT" and model is not None and result is not None:
        shutil.copyfile(model, run.layout.best_model)
        return _Incumbent(iteration, recipe, result, model)
    return inc


def _train_and_score(
    run: _Run, iteration: int, recipe: Recipe, proposal: Proposal, baseline_model: Path | None
) -> tuple[Path | None, ScoreResult | None, str | None]:
    name = f"it{iteration:03d}"
    cdir = run.layout.candidate(iteration)
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(), sort_keys=True))
    patch = None if iteration == 0 else proposal.patch
    run.record(
        event="proposal",
        iteration=iteration,
        candidate=name,
        agent=run.agent_name,
        hypothesis=proposal.hypothesis,
        patch=patch,
        recipe=recipe.model_dump(),
        recipe_hash=recipe.digest(),
    )
    budget = run.campaign.budget
    progress = run.stage_progress(name, iteration)
    started = utc_now()
    outcome = train_recipe(
        recipe,
        train_file=run.dataset.path("train"),
        atomic_numbers=[29],
        work_dir=cdir,
        budget=TrainingBudget(epochs=budget.epochs, max_seconds=budget.max_train_seconds),
        progress=lambda done, total, rec: _train_progress(run, name, iteration, done, total, rec),
        device=run.campaign.compute.device,
        threads=run.campaign.compute.torch_threads,
        cancel=run.stop.event,
    )
    run.record(
        event="training",
        iteration=iteration,
        candidate=name,
        status=outcome.status,
        reason=outcome.cause,
        recipe_hash=recipe.digest(),
        train_hash=run.dataset.hash("train"),
        started_at=started,
        finished_at=utc_now(),
        duration_s=outcome.wall_s,
        detail={
            "curve": [e.model_dump() for e in outcome.curve],
            "log": outcome.log_path.as_uri(),
            "model": outcome.model_path.as_uri() if outcome.model_path else None,
        },
    )
    run.stop.check()
    if outcome.model_path is None:
        return None, None, f"training {outcome.status}: {outcome.cause}"
    started = utc_now()
    t0 = time.monotonic()
    try:
        result = run.scorecard.evaluate(
            outcome.model_path,
            baseline_model_path=baseline_model or outcome.model_path,
            out_dir=cdir,
            progress=progress,
        )
    except (CampaignStopped, ScorerUnavailable):
        raise  # not the candidate's doing: the campaign ends with it
    except Exception as exc:  # a model the scorecard cannot run is a failed candidate
        run.record(
            event="evaluation",
            iteration=iteration,
            candidate=name,
            status="failed",
            reason=f"{type(exc).__name__}: {exc}",
            started_at=started,
            finished_at=utc_now(),
        )
        return outcome.model_path, None, f"scoring failed: {type(exc).__name__}: {exc}"
    (cdir / "result.json").write_text(result.model_dump_json(indent=2))
    run.record(
        event="evaluation",
        iteration=iteration,
        candidate=name,
        status="feasible" if result.feasible else "infeasible",
        metrics=result.metrics,
        feasible=result.feasible,
        violation=result.violation,
        composite=result.composite,
        spec_hash=result.spec_hash,
        test_hash=result.test_hash,
        started_at=started,
        finished_at=utc_now(),
        duration_s=time.monotonic() - t0,
        detail={
            "scorecard": result.spec_name,
            "constraints": [c.model_dump() for c in result.constraints],
            "hardware": result.hardware,
            "timings_s": result.timings_s,
            "md_replicas": result.details.get("md_replicas", []),
        },
    )
    return outcome.model_path, result, None


def _train_progress(
    run: _Run, candidate: str, iteration: int, done: int, total: int, record: EpochRecord
) -> None:
    """Every epoch is shown and recorded with its loss; a stop kills the trainer itself."""
    run.reporter.stage(candidate, "train", done, total)
    run.record(
        event="progress",
        iteration=iteration,
        candidate=candidate,
        status="train",
        detail={
            "stage": "train",
            "done": done,
            "total": total,
            "loss": record.loss,
            "valid": record.valid,
        },
    )


def _record_decision(
    run: _Run,
    iteration: int,
    recipe: Recipe,
    proposal: Proposal,
    patch: dict[str, Any],
    result: ScoreResult | None,
    decision: Decision,
) -> None:
    name = f"it{iteration:03d}"
    run.record(
        event="decision",
        iteration=iteration,
        candidate=name,
        agent=run.agent_name,
        hypothesis=proposal.hypothesis,
        patch=patch or None,
        recipe_hash=recipe.digest(),
        metrics=result.metrics if result else None,
        feasible=result.feasible if result else None,
        violation=result.violation if result else None,
        composite=result.composite if result else None,
        decision=decision.verdict,
        reason=decision.reason,
        spec_hash=run.scorecard.spec_hash,
        test_hash=run.scorecard.test_hash,
    )
    verdict = decision.verdict if result is not None or iteration == 0 else "FAILED"
    run.history.append(
        HistoryEntry(
            iteration=iteration,
            hypothesis=proposal.hypothesis,
            patch=patch,
            recipe=recipe,
            verdict=verdict,
            reason=decision.reason,
            result=result,
        )
    )
    row = IterationRow.build(iteration, proposal.hypothesis, patch, result, decision)
    run.rows.append(row)
    run.reporter.decision(row)


def _write_summary(outcome: CampaignOutcome) -> None:
    layout = outcome.layout
    summary = {
        "campaign_dir": str(layout.root),
        "best_iteration": outcome.best_iteration,
        "best_model": str(layout.best_model),
        "best_feasible": outcome.best_result.feasible,
        "best_composite": outcome.best_result.composite,
        "ledger": str(layout.ledger),
        "results_tsv": str(layout.results_tsv),
        "wall_s": round(outcome.wall_s, 1),
        "iterations": [r.model_dump() for r in outcome.rows],
    }
    layout.summary.write_text(json.dumps(summary, indent=2, default=str))
