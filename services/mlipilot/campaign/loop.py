"""The campaign loop: propose, train, score, decide, record — one iteration at a time.

Every step is written to the ledger before the next begins. A candidate that fails (training
crash, NaN loss, time-out, scoring error) is a recorded REVERT with its cause; the campaign
goes on. Only a baseline that cannot be trained or scored stops the campaign, since every
later decision and the throughput yardstick depend on it.

The same loop runs for ``mlipilot run`` (in one process, scorecard in process) and inside the
orchestrator service (scorecard over gRPC, stoppable by a cancel or a shutdown). It also
resumes a campaign that was killed: it then replays what the ledger records (``resume.py``)
and goes on from there.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from mlipilot import faults
from mlipilot.agents import make_agent
from mlipilot.agents.base import (
    Agent,
    AgentCost,
    AgentFailed,
    AgentGaveUp,
    AgentUnreachable,
    CampaignState,
    HistoryEntry,
    Proposal,
    TrainingSummary,
)
from mlipilot.atomic_files import replaced_atomically
from mlipilot.campaign.candidates import (
    CandidateJob,
    Evaluated,
    Event,
    Finished,
    ProgramTasks,
    Progress,
    RecipeTasks,
    TaskFor,
    Trained,
    candidate_name,
    rank,
    run_candidates,
)
from mlipilot.campaign.decision import (
    Decision,
    SeedRun,
    decide,
    decide_over_seeds,
    repeat_seeds,
)
from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.reporting import IterationRow, NullReporter, Reporter
from mlipilot.campaign.resume import PriorRun, read_prior_run
from mlipilot.campaign.validation_stage import ValidationRecord, validate_candidate
from mlipilot.code_mode.diffs import CodeEditError
from mlipilot.code_mode.program_files import TEMPLATE, program_digest, recipe_job
from mlipilot.code_mode.repo import ProgramRepo
from mlipilot.config import Campaign
from mlipilot.data.campaign_data import ensure_campaign_data
from mlipilot.data.dataset import Dataset, file_sha256
from mlipilot.errors import MlipilotError, format_validation_error
from mlipilot.ledger import Ledger, LedgerEvent, check_chain, read_events
from mlipilot.ledger.events import TrainingDetail
from mlipilot.ledger.history import token_totals
from mlipilot.model_files import write_mace_file
from mlipilot.recipe import Recipe, RecipeError
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.scorecard import Scorecard, Scorer, hardware
from mlipilot.scoring.spec import ScorecardSpec, load_spec
from mlipilot.stopping import CampaignStopped, StopRequest
from mlipilot.training.mace_args import batch_fits, training_key
from mlipilot.training.tasks import LocalTrainer, Trainer
from mlipilot.training.trainer import TrainingBudget

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
    validation: ValidationRecord | None = None  # of the best model; None: not validated


@dataclass
class _Incumbent:
    iteration: int
    name: str  # its candidate: it000, it003, it003-2, ...
    recipe: Recipe
    result: ScoreResult
    model: Path


@dataclass
class _Trained:
    """What one training of a recipe gave: reused when a later proposal trains the same."""

    candidate: str
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
    trainer: Trainer
    task_for: TaskFor  # recipe or code mode: what a candidate's training runs
    uses_ray: bool = False
    prior: PriorRun = field(default_factory=PriorRun)  # what the ledger had when resumed
    history: list[HistoryEntry] = field(default_factory=list)
    rows: list[IterationRow] = field(default_factory=list)
    trained: dict[str, _Trained] = field(default_factory=dict)  # by training_key
    _progress_marks: dict[tuple[str, str], int] = field(default_factory=dict)
    tokens_spent: int | None = None  # LLM tokens so far, this run and any before a resume
    agent_failed: set[int] = field(default_factory=set)  # iterations the agent failed
    program: ProgramRepo | None = None  # code mode: the training program's repository
    program_base: dict[str, str] = field(default_factory=dict)  # candidate -> commit tried on

    @property
    def per_iteration(self) -> int:
        return self.campaign.budget.candidates_per_iteration

    def record(self, **fields: Any) -> int:
        return self.ledger.append(LedgerEvent(campaign=self.layout.root.name, **fields))

    def release_compute(self) -> None:
        self.trainer.close()
        if self.uses_ray:
            from mlipilot import ray_runtime

            ray_runtime.release()

    def handle(self, event: Event) -> None:
        """What a candidate's worker reported, shown and recorded (in this thread only)."""
        if isinstance(event, Progress):
            self._progress(event)
        elif isinstance(event, Trained):
            self._training(event)
        elif isinstance(event, Evaluated):
            self._evaluation(event)

    def _progress(self, p: Progress) -> None:
        self.reporter.stage(p.job.name, p.stage, p.done, p.total)
        detail: dict[str, Any] = {"stage": p.stage, "done": p.done, "total": p.total}
        if p.record is not None:  # every epoch, with its loss
            detail |= {"loss": p.record.loss, "valid": p.record.valid}
        else:  # other stages: about every tenth of the way
            tenth = p.done * 10 // max(p.total, 1)
            if self._progress_marks.get((p.job.name, p.stage)) == tenth:
                return
            self._progress_marks[(p.job.name, p.stage)] = tenth
        self.record(
            event="progress",
            iteration=p.job.iteration,
            candidate=p.job.name,
            status=p.stage,
            detail=detail,
        )
        # Kill points for the resume tests: the candidate's worker is mid-training or mid-MD.
        faults.reached({"train": "training", "md": "md"}.get(p.stage, p.stage), p.job.iteration)

    def _training(self, t: Trained) -> None:
        outcome = t.trained.outcome
        overhead = _seconds_between(t.trained.dispatched_at, t.trained.started_at)
        self.record(
            event="training",
            iteration=t.job.iteration,
            candidate=t.job.name,
            status=outcome.status,
            reason=outcome.cause,
            recipe_hash=t.job.recipe.digest(),
            train_hash=self.dataset.hash("train"),
            started_at=t.trained.started_at,
            finished_at=t.trained.finished_at,
            duration_s=outcome.wall_s,
            detail={
                "curve": [e.model_dump() for e in outcome.curve],
                "log": outcome.log_path.as_uri(),
                "model": outcome.model_path.as_uri() if outcome.model_path else None,
                "dispatched_at": t.trained.dispatched_at,
                "dispatch_overhead_s": overhead,
                **t.trained.detail,
            },
        )

    def _evaluation(self, e: Evaluated) -> None:
        common = {
            "iteration": e.job.iteration,
            "candidate": e.job.name,
            "started_at": e.started_at,
            "finished_at": e.finished_at,
            "duration_s": e.duration_s,
        }
        result = e.result
        if result is None:
            self.record(event="evaluation", status="failed", reason=e.failure, **common)
            return
        self.record(
            event="evaluation",
            status="feasible" if result.feasible else "infeasible",
            metrics=result.metrics,
            feasible=result.feasible,
            violation=result.violation,
            composite=result.composite,
            spec_hash=result.spec_hash,
            test_hash=result.test_hash,
            detail={
                "scorecard": result.spec_name,
                "constraints": [c.model_dump() for c in result.constraints],
                "hardware": result.hardware,
                "timings_s": result.timings_s,
                "md_replicas": result.details.get("md_replicas", []),
            },
            **common,
        )


def _seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


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
    # As parsed, paths resolved: what a resume runs again, wherever the file was.
    layout.campaign_json.write_text(campaign.model_dump_json(indent=2))
    shutil.copyfile(campaign.scorecard, layout.root / "scorecard.yaml")
    Ledger(layout.ledger).close()
    return layout


def resume_campaign(
    run_dir: Path,
    *,
    reporter: Reporter | None = None,
    agent: Agent | None = None,
    scorer_factory: ScorerFactory = local_scorer,
    stop: StopRequest | None = None,
) -> CampaignOutcome:
    """Go on with the unfinished campaign in ``run_dir`` (killed, interrupted, failed)."""
    layout = RunLayout(Path(run_dir).resolve())
    if not layout.ledger.is_file():
        raise MlipilotError(f"{run_dir}: no ledger.sqlite there, so no campaign to resume")
    check_chain(layout.ledger)  # a ledger changed behind the writer's back is not extended
    campaign = recorded_campaign(layout)
    return run_in_layout(
        campaign,
        layout,
        reporter=reporter,
        agent=agent,
        scorer_factory=scorer_factory,
        stop=stop,
        resume=True,
    )


def recorded_campaign(layout: RunLayout) -> Campaign:
    """The campaign as it was started in ``layout``, judged by the scorecard copied there."""
    path = layout.campaign_json
    try:
        campaign = Campaign.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise MlipilotError(f"{path}: cannot read the campaign as run: {exc}") from exc
    except ValueError as exc:
        raise MlipilotError(format_validation_error(exc, str(path))) from exc
    return campaign.model_copy(update={"scorecard": layout.root / "scorecard.yaml"})


def run_in_layout(
    campaign: Campaign,
    layout: RunLayout,
    *,
    reporter: Reporter | None = None,
    agent: Agent | None = None,
    scorer_factory: ScorerFactory = local_scorer,
    stop: StopRequest | None = None,
    resume: bool = False,
) -> CampaignOutcome:
    """Run ``campaign`` into ``layout``; every step goes to its ledger, also how it ended.

    With ``resume``, what the ledger already records is replayed rather than done again.
    """
    reporter = reporter or NullReporter()
    stop = stop or StopRequest()
    start = time.monotonic()
    run: _Run | None = None
    with (
        _sole_writer(layout),
        _torch_threads(campaign.compute.torch_threads),
        Ledger(layout.ledger) as ledger,
    ):
        prior = read_prior_run(layout.root, read_events(layout.ledger)) if resume else PriorRun()
        try:
            run, agent = _start(
                campaign, layout, ledger, reporter, agent, scorer_factory, stop, prior
            )
            incumbent = _run_iterations(run, agent)
            validation = _validate(run, incumbent.iteration, incumbent.name, incumbent.model)
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
        finally:
            if run is not None:
                run.release_compute()
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
    outcome = CampaignOutcome(
        layout, run.rows, incumbent.iteration, incumbent.result, wall, validation
    )
    _write_summary(outcome)
    reporter.campaign_finished(outcome)
    return outcome


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's thread count for the campaign (``compute.torch_threads``), put back afterwards: it
    is process-wide, and the throughput stage of whatever runs next depends on it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _sole_writer(layout: RunLayout) -> Iterator[None]:
    """An exclusive lock on the run folder while this process writes its campaign.

    A second writer (``--resume`` of a campaign still running, two orchestrators on one
    volume) is refused rather than interleaved. The kernel drops the lock when its holder
    dies, even by SIGKILL, so a killed campaign can always be resumed.
    """
    path = layout.root / "writer.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise MlipilotError(
                f"{layout.root}: the campaign is being run by another process (pid {holder}); "
                "stop that one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _start(
    campaign: Campaign,
    layout: RunLayout,
    ledger: Ledger,
    reporter: Reporter,
    agent: Agent | None,
    scorer_factory: ScorerFactory,
    stop: StopRequest,
    prior: PriorRun,
) -> tuple[_Run, Agent]:
    """Data, scorer, trainers and agent ready, and the campaign's start (or resume) recorded."""
    spec, spec_hash = load_spec(campaign.scorecard)
    dataset = ensure_campaign_data(campaign.data, progress=reporter.note)
    if prior.started is not None:
        _check_same_inputs(layout, prior.started, spec_hash, dataset)
    scorecard = scorer_factory(spec, spec_hash, dataset)
    agent = agent or make_agent(campaign.agent)
    program = _program_repo(campaign, layout, prior) if campaign.mode == "code" else None
    trainer, uses_ray = _trainer(campaign, layout, scorecard, stop)
    run = _Run(
        campaign,
        layout,
        ledger,
        scorecard,
        dataset,
        reporter,
        agent.name,
        stop,
        trainer,
        _task_for(campaign, layout, dataset, program),
        uses_ray,
        prior,
        program=program,
        program_base=dict(prior.program_base),
    )
    reporter.campaign_started(campaign, layout, agent.name)
    inputs = {
        "agent": agent.name,
        "spec_hash": spec_hash,
        "train_hash": dataset.hash("train"),
        "test_hash": dataset.hash("test"),
    }
    if prior.started is not None:
        run.record(
            event="campaign_resumed",
            reason=_resume_reason(prior),
            detail={
                "decided": sorted(prior.decided),
                "train_again": prior.in_flight,
                "hardware": hardware(),
            },
            **inputs,
        )
        return run, agent
    run.record(
        event="campaign_started",
        recipe=campaign.baseline.model_dump(),
        detail={
            "campaign": campaign.model_dump(mode="json"),
            "hardware": hardware(),
            **({"program_commit": program.head()} if program is not None else {}),
        },
        **inputs,
    )
    return run, agent


def _program_repo(campaign: Campaign, layout: RunLayout, prior: PriorRun) -> ProgramRepo:
    """Code mode: the campaign's copy of the baseline training program, under git (the one it
    has, when resumed)."""
    try:
        recipe_job(campaign.baseline)
    except RecipeError as exc:
        raise MlipilotError(f"baseline: {exc}") from exc
    if prior.started is not None and layout.code.exists():
        return ProgramRepo.open(layout.code, campaign.editable)
    return ProgramRepo.create(layout.code, TEMPLATE, campaign.editable)


def _check_same_inputs(
    layout: RunLayout, started: LedgerEvent, spec_hash: str, dataset: Dataset
) -> None:
    """Refuse to resume against a scorecard or data that differ from what the campaign began
    with: its earlier results would not be comparable with the new ones."""
    now = {"scorecard": spec_hash, "train": dataset.hash("train"), "test": dataset.hash("test")}
    then = {"scorecard": started.spec_hash, "train": started.train_hash, "test": started.test_hash}
    changed = [f"{k} sha256 was {then[k]}, is now {now[k]}" for k in now if now[k] != then[k]]
    if changed:
        raise MlipilotError(
            f"{layout.root}: cannot resume, the inputs changed since the campaign started: "
            + "; ".join(changed)
        )


def _resume_reason(prior: PriorRun) -> str:
    again = ", ".join(prior.in_flight) or "none"
    return f"resumed after {len(prior.decided)} decisions; trained again: {again}"


def _task_for(
    campaign: Campaign, layout: RunLayout, dataset: Dataset, program: ProgramRepo | None
) -> TaskFor:
    """Recipe mode trains with mace_run_train; code mode trains each candidate's program in the
    sandbox (here, or on the actor's node)."""
    train_file = _training_split(layout, dataset)
    threads = campaign.compute.torch_threads
    if program is not None:
        return ProgramTasks(program, train_file, threads)
    return RecipeTasks(train_file, dataset.atomic_numbers("train"), threads)


def _trainer(
    campaign: Campaign, layout: RunLayout, scorer: Scorer, stop: StopRequest
) -> tuple[Trainer, bool]:
    """Trainers here (one candidate at a time), or Ray actors with MD as Ray tasks."""
    compute = campaign.compute
    if not compute.uses_ray(campaign.budget.candidates_per_iteration):
        return LocalTrainer(compute.device, stop), False
    from mlipilot import ray_runtime
    from mlipilot.scoring.ray_md import RayReplicaRunner
    from mlipilot.training.ray_trainer import RayTrainerPool

    ray_runtime.acquire(compute.ray_address)
    try:
        pool = RayTrainerPool(layout.root.name, compute.trainer)
    except BaseException:
        ray_runtime.release()
        raise
    if isinstance(scorer, Scorecard):  # scored here: fan its MD replicas out to Ray
        scorer.md_runner = RayReplicaRunner(compute.md)
    return pool, True


def _training_split(layout: RunLayout, dataset: Dataset) -> Path:
    """The training split, copied into the run folder (checked against its hash): what every
    trainer reads. On a cluster the Ray pods mount the runs volume only, never the data
    volume that holds the test split."""
    dest = layout.train_split
    if not dest.is_file() or file_sha256(dest) != dataset.hash("train"):
        with replaced_atomically(dest) as tmp:
            shutil.copyfile(dataset.path("train"), tmp)
    return dest


def _run_iterations(run: _Run, agent: Agent) -> _Incumbent:
    incumbent = _run_baseline(run)
    baseline_model = incumbent.model
    for iteration in range(1, run.campaign.budget.iterations + 1):
        run.stop.check()
        if iteration not in run.prior.iterations_started:
            run.record(
                event="iteration_started",
                iteration=iteration,
                detail={
                    "iterations_budget": run.campaign.budget.iterations,
                    "candidates": run.per_iteration,
                },
            )
        # Recorded proposals are replayed, never asked for again (nor paid for again).
        proposals = run.prior.proposals.get(iteration) or _ask_agent_batch(
            run, agent, iteration, incumbent
        )
        if not proposals:
            if iteration in run.agent_failed:
                continue  # recorded as an agent failure; the campaign goes on
            break
        incumbent = _try_candidates(run, iteration, proposals, incumbent, baseline_model)
        faults.reached("after_decision", iteration)
    return incumbent


def _check_fits_data(run: _Run, recipe: Recipe) -> None:
    """Refuse (as an invalid patch) a recipe that cannot train on this campaign's data."""
    why = batch_fits(recipe, run.dataset.n_frames("train"))
    if why is not None:
        raise RecipeError(why)


def _check_proposal(run: _Run, recipe: Recipe, proposal: Proposal) -> None:
    """Refuse (as an invalid patch, told to the agent) what cannot be trained: a recipe too big
    for the data; in code mode a knob the program lacks, or a diff that cannot apply."""
    _check_fits_data(run, recipe)
    if run.program is None:
        if proposal.diff is not None:
            raise RecipeError("a diff of the program needs `mode: code` in the campaign file")
        return
    recipe_job(recipe)
    if proposal.diff is not None:
        run.program.check(proposal.diff)


def _program_after(run: _Run, diff: str | None, base: str | None) -> str | None:
    """Code mode: the digest of the program at commit ``base`` with ``diff`` applied."""
    if run.program is None:
        return None
    with tempfile.TemporaryDirectory(prefix="mlipilot-program-") as tmp:
        copy = run.program.materialize(diff, Path(tmp) / "program", base)
        return program_digest({p: (copy / p).read_text() for p in run.campaign.editable})


def _base(run: _Run, name: str) -> str | None:
    """Code mode: the commit candidate ``name`` applies its diff to: recorded with its
    proposal (also before a resume), else ``main`` now."""
    if run.program is None:
        return None
    return run.program_base.setdefault(name, run.program.head())


def _key(run: _Run, recipe: Recipe, proposal: Proposal, base: str | None) -> str:
    """What identifies a training: the recipe's flags, and in code mode the program too."""
    key = training_key(recipe, run.campaign.budget.epochs)
    program = _program_after(run, proposal.diff, base)
    return key if program is None else f"{key}:{program}"


def _run_baseline(run: _Run) -> _Incumbent:
    recipe = run.campaign.baseline
    why = batch_fits(recipe, run.dataset.n_frames("train"))
    if why is not None:
        raise MlipilotError(f"baseline: {why}")
    proposal = Proposal(hypothesis="baseline recipe from the campaign file", patch={"-": "-"})
    if 0 not in run.prior.iterations_started:
        run.record(
            event="iteration_started",
            iteration=0,
            candidate="it000",
            detail={"iterations_budget": run.campaign.budget.iterations, "candidates": 1},
        )
    job = CandidateJob(
        0, 0, "it000", recipe, proposal, run.layout.candidate(0), _base(run, "it000")
    )
    _record_proposals(run, [(job, None)])
    [done] = _train_and_score(run, [job], baseline_model=None)
    run.trained[_key(run, recipe, proposal, job.base_commit)] = _Trained(
        "it000", done.model, done.result, done.failure
    )
    decision = decide(done.result, None, failure=done.failure)
    _record_decision(run, job, {}, done.result, decision)
    if done.result is None or done.model is None:
        raise MlipilotError(f"the baseline could not be trained and scored: {done.failure}")
    write_mace_file(done.model, run.layout.best_model)
    return _Incumbent(0, "it000", recipe, done.result, done.model)


def _ask_agent_batch(run: _Run, agent: Agent, iteration: int, inc: _Incumbent) -> list[Proposal]:
    """Up to ``candidates_per_iteration`` proposals, each told about those before it."""
    proposals: list[Proposal] = []
    pending: list[Recipe] = []
    for _ in range(run.per_iteration):
        proposal = _ask_agent(run, agent, iteration, inc, pending)
        if proposal is None:
            break
        proposals.append(proposal)
        pending.append(inc.recipe.patched(proposal.patch))
    return proposals


def _ask_agent(
    run: _Run, agent: Agent, iteration: int, inc: _Incumbent, pending: list[Recipe]
) -> Proposal | None:
    """A validated proposal, or None when the agent gives up or fails; refusals are recorded,
    and so is every conversation with an LLM agent (``agent_call``: messages and tokens)."""
    if _token_budget_spent(run, agent, iteration):
        return None
    candidate = candidate_name(iteration, len(pending), run.per_iteration)
    last_error = None
    # Code mode: the incumbent's program, read once for every attempt (it cannot change here).
    program = run.program.files() if run.program is not None else None
    for attempt in range(run.campaign.budget.agent_retries + 1):
        state = CampaignState(
            iteration=iteration,
            iterations_total=run.campaign.budget.iterations,
            spec=run.scorecard.spec,
            baseline=run.campaign.baseline,
            incumbent=inc.recipe,
            incumbent_result=inc.result,
            history=run.history,
            pending=pending,
            last_error=last_error,
            train_frames=run.dataset.n_frames("train"),
            program=program,
            program_sha256=program_digest(program) if program is not None else None,
        )
        try:
            proposal = agent.propose(state)
            _record_agent_call(run, agent, iteration, candidate, "proposed", proposal.cost)
            faults.reached("agent", iteration)
            _check_proposal(run, inc.recipe.patched(proposal.patch), proposal)
            return proposal
        except AgentGaveUp as exc:  # AgentFailed: this iteration only, the campaign goes on
            failed = isinstance(exc, AgentFailed)
            status = "failed" if failed else "gave_up"
            _record_agent_call(run, agent, iteration, candidate, status, exc.cost, str(exc))
            run.record(
                event="agent_failure",
                iteration=iteration,
                agent=agent.name,
                status=status,
                reason=str(exc),
            )
            if failed:
                run.reporter.note(f"iteration {iteration}: agent {agent.name} failed: {exc}")
                run.agent_failed.add(iteration)
            else:
                run.reporter.note(f"agent {agent.name} gave up: {exc}")
            return None
        except AgentUnreachable as exc:
            # The server is gone: the campaign stops (resumable), but the calls answered
            # before the break cost tokens, which the budget and the report must count.
            _record_agent_call(run, agent, iteration, candidate, "server_error", exc.cost, str(exc))
            raise
        except (RecipeError, CodeEditError) as exc:
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


def _tokens_spent(run: _Run) -> int:
    """LLM tokens the campaign's ``agent_call`` rows record (also those before a resume)."""
    if run.tokens_spent is None:
        rows = run.ledger.events("agent_call")
        run.tokens_spent = sum(token_totals(rows))
    return run.tokens_spent


def _token_budget_spent(run: _Run, agent: Agent, iteration: int) -> bool:
    """True (and recorded) when the campaign's LLM token budget is used up: stop asking."""
    budget = run.campaign.budget.agent_tokens
    if budget is None or _tokens_spent(run) < budget:
        return False
    reason = f"the campaign's token budget is spent: {_tokens_spent(run)} of {budget} tokens"
    run.record(
        event="agent_failure",
        iteration=iteration,
        agent=agent.name,
        status="token_budget",
        reason=reason,
    )
    run.reporter.note(reason)
    return True


def _record_agent_call(
    run: _Run,
    agent: Agent,
    iteration: int,
    candidate: str,
    status: str,
    cost: AgentCost | None,
    reason: str | None = None,
) -> None:
    """One conversation with an LLM agent: every message and the tokens of every call."""
    if cost is None:
        return
    run.tokens_spent = _tokens_spent(run) + cost.total_tokens
    run.record(
        event="agent_call",
        iteration=iteration,
        candidate=candidate,
        agent=agent.name,
        status=status,
        reason=reason,
        duration_s=cost.duration_s,
        detail={**cost.model_dump(), "total_tokens": cost.total_tokens},
    )


def _try_candidates(
    run: _Run,
    iteration: int,
    proposals: list[Proposal],
    inc: _Incumbent,
    baseline_model: Path,
) -> _Incumbent:
    """Train and score the iteration's candidates side by side; the best may replace ``inc``.

    The best is the first of ``rank`` (feasible first, then lower composite or violation, then
    the earlier proposal); only it can be accepted, by the same rule as a lone candidate.
    Every candidate gets its own decision row. With noise-aware acceptance on, a best that the
    rule would accept is judged again over seeds (``_judge_over_seeds``).
    """
    jobs, to_train, same_as = [], [], {}
    keys: dict[str, str] = {}
    for index, proposal in enumerate(proposals):
        name = candidate_name(iteration, index, run.per_iteration)
        recipe = inc.recipe.patched(proposal.patch)
        base = _base(run, name)
        job = CandidateJob(
            iteration, index, name, recipe, proposal, run.layout.candidate_dir(name), base
        )
        jobs.append(job)
        key = keys[name] = _key(run, recipe, proposal, base)
        first = next((j for j in to_train if keys[j.name] == key), None)
        if key in run.trained or first is not None:
            same_as[name] = run.trained[key].candidate if key in run.trained else first.name
        else:
            to_train.append(job)
    # All of the iteration's proposals in one transaction: a resume finds all or none.
    # A duplicate (the same training ran, or runs now) is answered without retraining.
    _record_proposals(run, [(job, same_as.get(job.name)) for job in jobs])
    done = {f.job.name: f for f in _train_and_score(run, to_train, baseline_model)}
    for job in to_train:
        f = done[job.name]
        run.trained[keys[job.name]] = _Trained(job.name, f.model, f.result, f.failure)
    finished = []
    for job in jobs:
        if job.name in done:
            finished.append(done[job.name])
        else:
            prior = run.trained[keys[job.name]]
            finished.append(Finished(job, prior.model, prior.result, prior.failure))
    ranked = rank(finished)
    best = ranked[0] if ranked else None
    min_improvement = run.campaign.min_improvement
    over_seeds: tuple[Decision, dict[str, Any]] | None = None
    if best is not None and run.campaign.noise_seeds > 1:
        alone = decide(best.result, inc.result, min_improvement=min_improvement)
        if alone.verdict == "ACCEPT":  # only a would-be accept costs extra trainings
            over_seeds = _judge_over_seeds(run, iteration, best, inc, baseline_model)
    new_incumbent = inc
    for f in finished:
        decision = decide(f.result, inc.result, failure=f.failure, min_improvement=min_improvement)
        noise = None
        if best is not None and f is not best and decision.verdict == "ACCEPT":
            reason = f"{best.job.name} ranked first this iteration; alone: {decision.reason}"
            decision = Decision(verdict="REVERT", reason=reason)
        elif f is best and over_seeds is not None:
            decision, noise = over_seeds
        if f.job.name in same_as:
            reason = f"same training as {same_as[f.job.name]}, not retrained; {decision.reason}"
            decision = Decision(verdict=decision.verdict, reason=reason)
        _record_decision(run, f.job, f.job.proposal.patch, f.result, decision, noise)
        if decision.verdict == "ACCEPT" and f.model is not None and f.result is not None:
            write_mace_file(f.model, run.layout.best_model)
            new_incumbent = _Incumbent(iteration, f.job.name, f.job.recipe, f.result, f.model)
            if run.campaign.validation.accepts:
                _validate(run, iteration, f.job.name, f.model)
    return new_incumbent


def _validate(run: _Run, iteration: int, name: str, model: Path) -> ValidationRecord | None:
    """The campaign's validation of candidate ``name`` (validation_stage.py), recorded once:
    a resumed campaign reads it back. None when the campaign validates nothing."""
    if run.campaign.validation.suite is None:
        return None
    done = run.ledger.events("validation", candidate=name)
    if done:
        return ValidationRecord.from_event(done[-1])
    record = validate_candidate(
        run.campaign.validation,
        name,
        model,
        run.layout.candidate_dir(name),
        run.stop,
        run.reporter.note,
    )
    run.record(
        event="validation",
        iteration=iteration,
        candidate=name,
        status=record.status,
        reason=record.reason,
        detail=record.detail,
    )
    run.reporter.note(f"{name} validation: {record.reason}")
    return record


class _Side(NamedTuple):
    """One side of a comparison over seeds: what its repeats train (in code mode, the diff on
    its base commit) and the result it already has."""

    label: str  # "candidate" or "incumbent"
    name: str
    recipe: Recipe
    diff: str | None
    base: str | None
    result: ScoreResult | None
    failure: str | None


def _judge_over_seeds(
    run: _Run, iteration: int, best: Finished, inc: _Incumbent, baseline_model: Path
) -> tuple[Decision, dict[str, Any]]:
    """The would-be winner and the incumbent, each over ``noise.seeds`` training seeds.

    Each side's recipe is trained again with seeds ``seed + 1``, ``seed + 2``, ... as
    ``<candidate>.seed<n>`` (e.g. ``it003.seed2``, ``it000.seed2``), through the same trainers
    and scorecard as candidates. A repeat whose training ran before (the incumbent's, while it
    stays incumbent, or any candidate with the same training key) is reused, not retrained.
    """
    noise = run.campaign.noise
    assert noise is not None
    sides = [
        _Side(
            "candidate",
            best.job.name,
            best.job.recipe,
            best.job.proposal.diff,
            best.job.base_commit,
            best.result,
            best.failure,
        ),
        # Code mode: the incumbent's program is main's (its own diff is committed there).
        _Side(
            "incumbent",
            inc.name,
            inc.recipe,
            None,
            run.program and run.program.head(),
            inc.result,
            None,
        ),
    ]
    planned: dict[str, CandidateJob] = {}  # training key -> repeat to train now
    keys: dict[str, list[tuple[int, str]]] = {}  # side -> (seed, training key) per repeat
    repeats: list[tuple[CandidateJob, str, str]] = []  # (job, side, repeat of)
    for side in sides:
        keys[side.label] = []
        for index, seed in enumerate(repeat_seeds(side.recipe.seed, noise.seeds)[1:], start=1):
            repeated = side.recipe.patched({"seed": seed})
            job_name = f"{side.name}.seed{seed}"
            proposal = Proposal(
                hypothesis=f"seed repeat of {side.name}", patch={"seed": seed}, diff=side.diff
            )
            key = _key(run, repeated, proposal, side.base)
            keys[side.label].append((seed, key))
            if key in run.trained or key in planned:
                continue
            job = CandidateJob(
                iteration,
                index,
                job_name,
                repeated,
                proposal,
                run.layout.candidate_dir(job_name),
                side.base,
            )
            planned[key] = job
            repeats.append((job, side.label, side.name))
    _record_repeats(run, repeats)
    key_of = {job.name: key for key, job in planned.items()}
    jobs = list(planned.values())
    # In process, one training at a time (as candidates are); on Ray, side by side.
    batches = ([jobs] if jobs else []) if run.uses_ray else [[job] for job in jobs]
    for batch in batches:
        for f in _train_and_score(run, batch, baseline_model):
            run.trained[key_of[f.job.name]] = _Trained(f.job.name, f.model, f.result, f.failure)
    runs: dict[str, list[SeedRun]] = {}
    for side in sides:
        runs[side.label] = [SeedRun(side.recipe.seed, side.name, side.result, side.failure)]
        for seed, key in keys[side.label]:
            done = run.trained[key]
            runs[side.label].append(SeedRun(seed, done.candidate, done.result, done.failure))
    return decide_over_seeds(
        runs["candidate"],
        runs["incumbent"],
        k=noise.k,
        min_improvement=run.campaign.min_improvement,
    )


def _record_repeats(run: _Run, repeats: list[tuple[CandidateJob, str, str]]) -> None:
    """``repeat`` rows (one transaction) for the seed repeats about to train: a resumed
    campaign knows them, and does not ask for them again."""
    events = [
        LedgerEvent(
            campaign=run.layout.root.name,
            event="repeat",
            iteration=job.iteration,
            candidate=job.name,
            agent=run.agent_name,
            recipe=job.recipe.model_dump(),
            recipe_hash=job.recipe.digest(),
            detail={"repeat_of": of, "side": side, "seed": job.recipe.seed},
        )
        for job, side, of in repeats
        if job.name not in run.prior.repeated
    ]
    if events:
        run.ledger.append_all(events)


def _record_proposals(run: _Run, jobs: list[tuple[CandidateJob, str | None]]) -> None:
    """Proposal rows, each with the candidate it duplicates (if any), in one transaction."""
    events = [
        LedgerEvent(
            campaign=run.layout.root.name,
            event="proposal",
            iteration=job.iteration,
            candidate=job.name,
            agent=run.agent_name,
            hypothesis=job.proposal.hypothesis,
            patch=None if job.iteration == 0 else job.proposal.patch,
            recipe=job.recipe.model_dump(),
            recipe_hash=job.recipe.digest(),
            status="duplicate" if duplicate_of else None,
            detail=_proposal_detail(run, job, duplicate_of),
        )
        for job, duplicate_of in jobs
        if job.name not in run.prior.proposed
    ]
    if events:
        run.ledger.append_all(events)


def _proposal_detail(run: _Run, job: CandidateJob, duplicate_of: str | None) -> dict | None:
    """The duplicate a proposal repeats; in code mode its diff and the commit it applies to."""
    detail: dict[str, Any] = {"duplicate_of": duplicate_of} if duplicate_of else {}
    if run.program is not None:
        detail.update(diff=job.proposal.diff, base_commit=job.base_commit)
    return detail or None


def _train_and_score(
    run: _Run, jobs: list[CandidateJob], baseline_model: Path | None
) -> list[Finished]:
    """Each job's outcome: from the ledger when a resumed campaign has it, else trained and
    scored now (all of them side by side)."""
    known = {j.name: run.prior.known[j.name] for j in jobs if j.name in run.prior.known}
    to_run = [j for j in jobs if j.name not in known]
    for job in to_run:
        if run.prior.dispatched(job.name) and job.work_dir.exists():
            _set_aside(job.work_dir)  # killed mid-way: keep its logs, start clean
        job.work_dir.mkdir(parents=True, exist_ok=True)
        (job.work_dir / "recipe.yaml").write_text(
            yaml.safe_dump(job.recipe.model_dump(), sort_keys=True)
        )
    budget = run.campaign.budget
    ran = {}
    if to_run:
        finished = run_candidates(
            to_run,
            trainer=run.trainer,
            task_for=run.task_for,
            scorer=run.scorecard,
            budget=TrainingBudget(epochs=budget.epochs, max_seconds=budget.max_train_seconds),
            baseline_model=baseline_model,
            stop=run.stop,
            handle=run.handle,
        )
        ran = {f.job.name: f for f in finished}
    return [
        Finished(j, known[j.name].model, known[j.name].result, known[j.name].failure)
        if j.name in known
        else ran[j.name]
        for j in jobs
    ]


def _set_aside(work_dir: Path) -> None:
    """``it002`` -> ``it002.interrupted`` (``.interrupted-2``, ... when that exists)."""
    target = work_dir.with_name(f"{work_dir.name}.interrupted")
    n = 1
    while target.exists():
        n += 1
        target = work_dir.with_name(f"{work_dir.name}.interrupted-{n}")
    work_dir.rename(target)


def _record_decision(
    run: _Run,
    job: CandidateJob,
    patch: dict[str, Any],
    result: ScoreResult | None,
    decision: Decision,
    noise: dict[str, Any] | None = None,
) -> None:
    """The decision's row (unless a resumed campaign recorded it already), what the agent
    sees of it next, and the table's line. ``noise``: the comparison over seeds, if any."""
    if job.name not in run.prior.decided:
        row_id = run.record(
            event="decision",
            iteration=job.iteration,
            candidate=job.name,
            agent=run.agent_name,
            hypothesis=job.proposal.hypothesis,
            patch=patch or None,
            recipe_hash=job.recipe.digest(),
            metrics=result.metrics if result else None,
            feasible=result.feasible if result else None,
            violation=result.violation if result else None,
            composite=result.composite if result else None,
            decision=decision.verdict,
            reason=decision.reason,
            spec_hash=run.scorecard.spec_hash,
            test_hash=run.scorecard.test_hash,
            detail={"noise": noise} if noise is not None else None,
        )
        faults.reached("decision", job.iteration)  # recorded; the incumbent not yet copied
    else:
        row_id = run.prior.decision_rows.get(job.name, 0)
    # Also for a decision replayed on resume: one killed before its commit gets it now.
    diff = job.proposal.diff
    if run.program is not None and diff is not None and job.name not in run.program.candidates():
        _commit_program(run, job, decision, row_id)
    verdict = decision.verdict if result is not None or job.iteration == 0 else "FAILED"
    run.history.append(
        HistoryEntry(
            iteration=job.iteration,
            hypothesis=job.proposal.hypothesis,
            patch=patch,
            recipe=job.recipe,
            verdict=verdict,
            reason=decision.reason,
            result=result,
            training=_training_summary(run, job.name),
            diff=job.proposal.diff,
            program_sha256=_program_after(run, job.proposal.diff, job.base_commit),
        )
    )
    row = IterationRow.build(
        job.iteration, job.proposal.hypothesis, patch, result, decision, candidate=job.name
    )
    if noise is not None:
        row = row.model_copy(update={"spread": noise.get("spread")})
    if job.proposal.cost is not None:  # an LLM agent's proposal: what asking for it cost
        cost = job.proposal.cost
        row = row.model_copy(
            update={
                "prompt_tokens": cost.prompt_tokens,
                "completion_tokens": cost.completion_tokens,
            }
        )
    run.rows.append(row)
    run.reporter.decision(row)


def _commit_program(run: _Run, job: CandidateJob, decision: Decision, row_id: int) -> None:
    """An accepted edit becomes a commit on main; any other is kept on ``reverted/<name>``.
    The message is the hypothesis; trailers name the candidate and its decision's ledger row."""
    assert run.program is not None and job.proposal.diff is not None
    trailers = {"Candidate": job.name, "Verdict": decision.verdict, "Ledger-Row": str(row_id)}
    message = job.proposal.hypothesis
    if decision.verdict == "ACCEPT":
        run.program.accept(job.proposal.diff, message, trailers)
    else:  # off the commit it was tried on: main may have moved on in the same iteration
        run.program.keep_reverted(
            job.proposal.diff, f"reverted/{job.name}", message, trailers, base=job.base_commit
        )


def _training_summary(run: _Run, candidate: str) -> TrainingSummary | None:
    """How the candidate's training went, from its ledger row (also one a resume replays);
    None for a candidate answered from another's training (a duplicate) or never trained."""
    rows = run.ledger.events("training", candidate=candidate)
    if not rows:
        return None
    last = rows[-1]  # a training killed and run again: the last attempt counts
    curve = last.details(TrainingDetail).curve
    return TrainingSummary.from_curve(
        last.status or "?", curve, float(last.duration_s or 0.0), cause=last.reason
    )


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
        "validation": _validation_summary(outcome.validation),
        "iterations": [r.model_dump() for r in outcome.rows],
    }
    layout.summary.write_text(json.dumps(summary, indent=2, default=str))


def _validation_summary(record: ValidationRecord | None) -> dict[str, Any]:
    """The best model's validation for scripts: what was checked and how it went."""
    if record is None:
        return {"status": "not validated", "reason": "the campaign names no validation suite"}
    fields = ("suite", "version", "sha256", "passed", "total", "failed", "result")
    return {
        "status": record.status,
        "reason": record.reason,
        **{k: record.detail[k] for k in fields if k in record.detail},
    }
