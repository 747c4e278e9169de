"""The campaign loop: propose, train, score, decide, record — one iteration at a time.

Every step is written to the ledger before the next begins. A candidate that fails (training
crash, NaN loss, time-out, scoring error) is a recorded REVERT with its cause; the campaign
goes on. Only a baseline that cannot be trained or scored stops the campaign, since every
later decision and the throughput yardstick depend on it.

The same loop runs for ``mlipilot run`` (in one process, scorecard in process) and inside the
orchestrator service (scorecard over gRPC, stoppable by a cancel or a shutdown). It also
resumes a campaign that was killed: it then replays what the ledger records (``resume.py``)
and goes on from there.

Its parts: ``recorder.py`` writes every ledger row, ``agent_session.py`` talks to the agent,
``selection.py`` chooses winners, ``run_folder.py`` keeps the run folder, ``modes.py`` holds
what recipe and code mode do differently, and ``candidates.py`` trains and scores side by
side. This module wires them and runs the iterations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlipilot import faults
from mlipilot.agents import make_agent
from mlipilot.agents.base import Agent, HistoryEntry, Proposal
from mlipilot.campaign.agent_session import AgentSession
from mlipilot.campaign.asynchronous import AsyncScheduler
from mlipilot.campaign.candidates import CandidateJob, Finished, TaskFor, Workers
from mlipilot.campaign.decision import Decision, decide
from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.modes import CampaignMode, campaign_mode
from mlipilot.campaign.recorder import Recorder
from mlipilot.campaign.reporting import IterationRow, NullReporter, Reporter
from mlipilot.campaign.resume import PriorRun, read_prior_run
from mlipilot.campaign.run_folder import (
    CampaignOutcome,
    create_run,
    fresh_work_dir,
    recorded_campaign,
    sole_writer,
    training_split,
)
from mlipilot.campaign.selection import (
    Incumbent,
    PastTraining,
    Trainings,
    best_of,
    decide_candidates,
    plan_candidates,
    plan_repeats,
    would_accept,
)
from mlipilot.campaign.validation_stage import ValidationRecord, validate_candidate
from mlipilot.config import Campaign
from mlipilot.data.campaign_data import ensure_campaign_data
from mlipilot.data.dataset import Dataset
from mlipilot.errors import MlipilotError
from mlipilot.ledger import Ledger, LedgerEvent, check_chain, read_events
from mlipilot.model_files import write_mace_file
from mlipilot.scoring.scorecard import Scorecard, Scorer, hardware
from mlipilot.scoring.spec import ScorecardSpec, load_spec
from mlipilot.stopping import CampaignStopped, StopRequest
from mlipilot.training.mace_args import untrainable
from mlipilot.training.tasks import LocalTrainer, Trainer
from mlipilot.training.trainer import TrainingBudget

__all__ = [  # CampaignOutcome lives in run_folder.py; callers of the loop find it here too
    "CampaignOutcome",
    "ScorerFactory",
    "local_scorer",
    "resume_campaign",
    "run_campaign",
    "run_in_layout",
]

# Builds the scorer for a campaign: (spec, spec sha256, dataset) -> Scorer.
ScorerFactory = Callable[[ScorecardSpec, str, Dataset], Scorer]


def local_scorer(spec: ScorecardSpec, spec_hash: str, dataset: Dataset) -> Scorer:
    return Scorecard(spec, spec_hash, dataset.load("test"), dataset.hash("test"))


@dataclass
class _Run:
    """One run of a campaign (a fresh start or a resume): its parts, wired."""

    campaign: Campaign
    layout: RunLayout
    dataset: Dataset
    recorder: Recorder
    session: AgentSession
    mode: CampaignMode
    workers: Workers
    reporter: Reporter
    stop: StopRequest
    prior: PriorRun
    trained: Trainings = field(default_factory=dict)
    rows: list[IterationRow] = field(default_factory=list)

    @property
    def per_iteration(self) -> int:
        return self.campaign.budget.candidates_per_iteration

    def key(self, job: CandidateJob) -> str:
        return self.mode.key(job.recipe, job.proposal, job.base_commit, self.campaign.budget.epochs)


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


def run_in_layout(
    campaign: Campaign,
    layout: RunLayout,
    *,
    reporter: Reporter | None = None,
    agent: Agent | None = None,
    scorer_factory: ScorerFactory = local_scorer,
    stop: StopRequest | None = None,
    resume: bool = False,
    trainer: Trainer | None = None,
) -> CampaignOutcome:
    """Run ``campaign`` into ``layout``; every step goes to its ledger, also how it ended.

    With ``resume``, what the ledger already records is replayed rather than done again.
    ``trainer``: one to use instead of the campaign's own (``benchmarks/cluster_sim.py``'s
    simulated GPUs).
    """
    reporter = reporter or NullReporter()
    stop = stop or StopRequest()
    start = time.monotonic()
    run: _Run | None = None
    with (
        sole_writer(layout),
        _torch_threads(campaign.compute.torch_threads),
        Ledger(layout.ledger) as ledger,
    ):
        prior = read_prior_run(layout.root, read_events(layout.ledger)) if resume else PriorRun()
        recorder = Recorder(ledger, layout.root.name, reporter, prior)
        try:
            run = _start(campaign, layout, recorder, agent, scorer_factory, stop, trainer)
            if campaign.budget.scheduler == "async":
                incumbent = _run_asynchronously(run)
            else:
                incumbent = _run_iterations(run)
            validation = _validate(run, incumbent.iteration, incumbent.name, incumbent.model)
        except BaseException as exc:  # the ledger says how a campaign ended, whatever ended it
            if isinstance(exc, CampaignStopped):
                status: str = exc.status
            else:
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            recorder.finished(start, status, str(exc) or repr(exc))
            ledger.export_tsv(layout.results_tsv)
            raise
        finally:
            if run is not None:
                run.workers.close()
        ledger.export_tsv(layout.results_tsv)
        wall = time.monotonic() - start
        result = incumbent.result
        recorder.finished(
            start,
            "finished",
            f"best is iteration {incumbent.iteration}: {result.short()}",
            composite=result.composite,
            feasible=result.feasible,
            violation=result.violation,
        )
    outcome = CampaignOutcome(layout, run.rows, incumbent.iteration, result, wall, validation)
    outcome.write_summary()
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


def _start(
    campaign: Campaign,
    layout: RunLayout,
    recorder: Recorder,
    agent: Agent | None,
    scorer_factory: ScorerFactory,
    stop: StopRequest,
    trainer: Trainer | None,
) -> _Run:
    """Data, scorer, trainers and agent ready, and the campaign's start (or resume) recorded."""
    prior = recorder.prior
    spec, spec_hash = load_spec(campaign.scorecard)
    dataset = ensure_campaign_data(campaign.data, progress=recorder.reporter.note)
    if prior.started is not None:
        _check_same_inputs(layout, prior.started, spec_hash, dataset)
    scorer = scorer_factory(spec, spec_hash, dataset)
    agent = agent or make_agent(campaign.agent)
    recorder.agent_name, recorder.train_hash = agent.name, dataset.hash("train")
    resumed = prior.started is not None
    mode = campaign_mode(campaign, layout.code, resumed, prior.program_base)
    train = dataset.contents("train")
    tasks = mode.task_for(
        training_split(layout, dataset),
        train.atomic_numbers,
        campaign.compute.torch_threads,
    )
    session = AgentSession(
        agent,
        campaign,
        spec,
        dataset.n_frames("train"),
        train.has_stress,
        mode,
        recorder,
        recorder.reporter,
    )
    if trainer is not None:
        workers = Workers(trainer, tasks, scorer)
    else:
        workers = _workers(campaign, layout, scorer, tasks, stop)
    run = _Run(
        campaign, layout, dataset, recorder, session, mode, workers, recorder.reporter, stop, prior
    )
    run.reporter.campaign_started(campaign, layout, agent.name)
    inputs = {
        "agent": agent.name,
        "spec_hash": spec_hash,
        "train_hash": dataset.hash("train"),
        "test_hash": dataset.hash("test"),
    }
    if resumed:
        again = ", ".join(prior.in_flight) or "none"
        recorder.record(
            event="campaign_resumed",
            reason=f"resumed after {len(prior.decided)} decisions; trained again: {again}",
            detail={
                "decided": sorted(prior.decided),
                "train_again": prior.in_flight,
                "hardware": hardware(),
            },
            **inputs,
        )
    else:
        recorder.record(
            event="campaign_started",
            recipe=campaign.baseline.model_dump(),
            detail={
                "campaign": campaign.model_dump(mode="json"),
                "hardware": hardware(),
                **mode.started_detail(),
            },
            **inputs,
        )
    return run


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


def _workers(
    campaign: Campaign, layout: RunLayout, scorer: Scorer, tasks: TaskFor, stop: StopRequest
) -> Workers:
    """Trainers here (one candidate at a time), or Ray actors with MD as Ray tasks."""
    compute = campaign.compute
    if not compute.uses_ray(campaign.budget.side_by_side):
        return Workers(LocalTrainer(compute.device, stop), tasks, scorer)
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
    return Workers(pool, tasks, scorer, on_ray=True)


def _run_iterations(run: _Run) -> Incumbent:
    incumbent = _run_baseline(run)
    baseline_model = incumbent.model
    budget = run.campaign.budget
    for iteration in range(1, budget.iterations + 1):
        run.stop.check()
        run.recorder.iteration_started(iteration, budget.iterations, run.per_iteration)
        # Recorded proposals are replayed, never asked for again (nor paid for again).
        proposals = run.prior.proposals.get(iteration) or run.session.ask_batch(
            iteration, incumbent.recipe, incumbent.result
        )
        if not proposals:
            if iteration in run.session.failed:
                continue  # recorded as an agent failure; the campaign goes on
            break
        incumbent = _try_candidates(run, iteration, proposals, incumbent, baseline_model)
        faults.reached("after_decision", iteration)
    return incumbent


def _run_asynchronously(run: _Run) -> Incumbent:
    """The baseline, then candidates kept in flight and decided one by one (asynchronous.py)."""
    incumbent = _run_baseline(run)
    budget = run.campaign.budget
    assert budget.max_in_flight is not None  # the campaign file's validation saw to it
    training = TrainingBudget(epochs=budget.epochs, max_seconds=budget.max_train_seconds)

    def decided(
        f: Finished, decision: Decision, against: str, noise: dict[str, Any] | None
    ) -> None:
        _decided(run, f, f.job.proposal.patch, decision, noise, against=against)
        faults.reached("after_decision", f.job.iteration)

    scheduler = AsyncScheduler(
        iterations=budget.iterations,
        max_in_flight=budget.max_in_flight,
        asks_in_flight=budget.asks_in_flight,
        noise=run.campaign.noise,
        epochs=budget.epochs,
        min_improvement=run.campaign.min_improvement,
        layout=run.layout,
        mode=run.mode,
        session=run.session,
        recorder=run.recorder,
        prior=run.prior,
        trained=run.trained,
        pool=run.workers.pool(training, incumbent.model, run.stop, run.recorder.handle),
        stop=run.stop,
        decided=decided,
        accepted=lambda f: _accepted(run, f),
    )
    return scheduler.run(incumbent)


def _run_baseline(run: _Run) -> Incumbent:
    recipe = run.campaign.baseline
    why = untrainable(recipe, run.session.train_frames, run.session.train_stress)
    if why is not None:
        raise MlipilotError(f"baseline: {why}")
    proposal = Proposal(hypothesis="baseline recipe from the campaign file", patch={"-": "-"})
    run.recorder.iteration_started(0, run.campaign.budget.iterations, 1)
    job = CandidateJob(
        0, 0, "it000", recipe, proposal, run.layout.candidate(0), run.mode.base("it000")
    )
    run.recorder.proposals([(job, None, run.mode.proposal_detail(job))])
    [done] = _train_and_score(run, [job], baseline_model=None)
    run.trained[run.key(job)] = PastTraining.of(done)
    _decided(run, done, {}, decide(done.result, None, failure=done.failure))
    if done.result is None or done.model is None:
        raise MlipilotError(f"the baseline could not be trained and scored: {done.failure}")
    write_mace_file(done.model, run.layout.best_model)
    return Incumbent(0, "it000", recipe, done.result, done.model)


def _try_candidates(
    run: _Run,
    iteration: int,
    proposals: list[Proposal],
    inc: Incumbent,
    baseline_model: Path,
) -> Incumbent:
    """Train and score the iteration's candidates side by side; the best may replace ``inc``
    (``selection.decide_candidates``). Every candidate gets its own decision row. With
    noise-aware acceptance on, a best that the rule would accept is judged again over seeds."""
    campaign = run.campaign
    plan = plan_candidates(
        iteration,
        proposals,
        run.per_iteration,
        inc.recipe,
        run.layout,
        run.mode,
        campaign.budget.epochs,
        run.trained,
    )
    # All of the iteration's proposals in one transaction: a resume finds all or none.
    # A duplicate (the same training ran, or runs now) is answered without retraining.
    run.recorder.proposals(
        [
            (
                job,
                plan.same_as.get(job.name),
                run.mode.proposal_detail(job) | {"incumbent": inc.name},
            )
            for job in plan.jobs
        ]
    )
    done = {f.job.name: f for f in _train_and_score(run, plan.to_train, baseline_model)}
    finished = plan.finished(done, run.trained)
    best = best_of(finished)
    over_seeds = None
    if (
        best is not None
        and campaign.noise_seeds > 1
        and would_accept(best, inc.result, campaign.min_improvement)
    ):  # only a would-be accept costs extra trainings
        over_seeds = _judge_over_seeds(run, iteration, best, inc, baseline_model)
    new_incumbent = inc
    decided = decide_candidates(
        finished, inc.result, campaign.min_improvement, plan.same_as, over_seeds
    )
    for f, decision, noise in decided:
        _decided(run, f, f.job.proposal.patch, decision, noise, against=inc.name)
        if decision.verdict == "ACCEPT" and f.model is not None and f.result is not None:
            new_incumbent = _accepted(run, f)
    return new_incumbent


def _accepted(run: _Run, f: Finished) -> Incumbent:
    """An accepted candidate as the incumbent: its model is best.model, and it is validated
    now when the campaign validates every accept."""
    assert f.model is not None and f.result is not None
    write_mace_file(f.model, run.layout.best_model)
    if run.campaign.validation.accepts:
        _validate(run, f.job.iteration, f.job.name, f.model)
    return Incumbent(f.job.iteration, f.job.name, f.job.recipe, f.result, f.model)


def _judge_over_seeds(
    run: _Run, iteration: int, best: Finished, inc: Incumbent, baseline_model: Path
) -> tuple[Decision, dict[str, Any]]:
    """The would-be winner and the incumbent, each over ``noise.seeds`` training seeds
    (``selection.RepeatPlan``), through the same trainers and scorecard as candidates."""
    noise = run.campaign.noise
    assert noise is not None
    plan = plan_repeats(
        iteration,
        best,
        inc,
        noise.seeds,
        run.layout,
        run.mode,
        run.campaign.budget.epochs,
        run.trained,
    )
    run.recorder.repeats(plan.repeats)
    jobs = list(plan.to_train.values())
    # In process, one training at a time (as candidates are); on Ray, side by side.
    batches = ([jobs] if jobs else []) if run.workers.on_ray else [[job] for job in jobs]
    for batch in batches:
        for f in _train_and_score(run, batch, baseline_model):
            run.trained[plan.key_of(f.job.name)] = PastTraining.of(f)
    return plan.judge(run.trained, noise.k, run.campaign.min_improvement)


def _train_and_score(
    run: _Run, jobs: list[CandidateJob], baseline_model: Path | None
) -> list[Finished]:
    """Each job's outcome: from the ledger when a resumed campaign has it, else trained and
    scored now (all of them side by side)."""
    known = {j.name: run.prior.known[j.name] for j in jobs if j.name in run.prior.known}
    to_run = [j for j in jobs if j.name not in known]
    for job in to_run:
        fresh_work_dir(job, dispatched_before=run.prior.dispatched(job.name))
    budget = run.campaign.budget
    ran = {}
    if to_run:
        training = TrainingBudget(epochs=budget.epochs, max_seconds=budget.max_train_seconds)
        finished = run.workers.run(to_run, training, baseline_model, run.stop, run.recorder.handle)
        ran = {f.job.name: f for f in finished}
    return [
        Finished(j, known[j.name].model, known[j.name].result, known[j.name].failure)
        if j.name in known
        else ran[j.name]
        for j in jobs
    ]


def _decided(
    run: _Run,
    f: Finished,
    patch: dict[str, Any],
    decision: Decision,
    noise: dict[str, Any] | None = None,
    against: str | None = None,
) -> None:
    """A decision recorded (unless a resumed campaign recorded it already), its edit kept as
    its mode keeps edits, what the agent sees of it next, and the table's line."""
    job, result = f.job, f.result
    hashes = (run.workers.scorer.spec_hash, run.workers.scorer.test_hash)
    row_id = run.recorder.decision(job, patch, result, decision, noise, hashes, against)
    run.mode.decided(job, decision, row_id)
    verdict = decision.verdict if result is not None or job.iteration == 0 else "FAILED"
    run.session.history.append(
        HistoryEntry(
            iteration=job.iteration,
            hypothesis=job.proposal.hypothesis,
            patch=patch,
            recipe=job.recipe,
            verdict=verdict,
            reason=decision.reason,
            result=result,
            training=run.recorder.training_summary(job.name),
            diff=job.proposal.diff,
            program_sha256=run.mode.program_after(job.proposal.diff, job.base_commit),
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


def _validate(run: _Run, iteration: int, name: str, model: Path) -> ValidationRecord | None:
    """The campaign's validation of candidate ``name`` (validation_stage.py), recorded once:
    a resumed campaign reads it back. None when the campaign validates nothing."""
    if run.campaign.validation.suite is None:
        return None
    done = run.recorder.ledger.events("validation", candidate=name)
    if done:
        return ValidationRecord.from_event(done[-1])
    record = validate_candidate(
        run.campaign.validation,
        name,
        model,
        run.layout.candidate_dir(name),
        run.stop,
        run.reporter.note,
        # On Ray, the suite's groups go there too, each the size of an MD task.
        ray_resources=run.campaign.compute.md if run.workers.on_ray else None,
    )
    run.recorder.record(
        event="validation",
        iteration=iteration,
        candidate=name,
        status=record.status,
        reason=record.reason,
        detail=record.detail,
    )
    run.reporter.note(f"{name} validation: {record.reason}")
    return record
