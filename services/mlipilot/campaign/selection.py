"""Choosing winners: which candidates train, and which one (if any) replaces the incumbent.

Pure functions over what was trained: no ledger, no trainer. The loop trains what a plan
says to train, then asks for the decisions. A proposal whose training already ran (the same
recipe, and in code mode the same program) is answered from that training, not retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mlipilot.agents.base import Proposal
from mlipilot.campaign.candidates import CandidateJob, Finished, candidate_name, rank
from mlipilot.campaign.decision import Decision, SeedRun, decide, decide_over_seeds, repeat_seeds
from mlipilot.campaign.layout import RunLayout
from mlipilot.campaign.modes import CampaignMode
from mlipilot.recipe import Recipe
from mlipilot.scoring.result import ScoreResult


@dataclass
class Incumbent:
    iteration: int
    name: str  # its candidate: it000, it003, it003-2, ...
    recipe: Recipe
    result: ScoreResult
    model: Path


@dataclass(frozen=True)
class PastTraining:
    """What one training gave: reused when a later proposal trains the same."""

    candidate: str
    model: Path | None
    result: ScoreResult | None
    failure: str | None

    @classmethod
    def of(cls, f: Finished) -> PastTraining:
        return cls(f.job.name, f.model, f.result, f.failure)


# Every training of the campaign so far, by training key (``CampaignMode.key``).
Trainings = dict[str, PastTraining]


@dataclass
class CandidatePlan:
    """An iteration's candidates, and which of them must train."""

    jobs: list[CandidateJob]
    keys: dict[str, str]  # candidate -> training key
    to_train: list[CandidateJob]
    same_as: dict[str, str]  # candidate -> the one whose training answers it (a duplicate)

    def finished(self, done: dict[str, Finished], trained: Trainings) -> list[Finished]:
        """Every candidate's outcome, in proposal order; ``done``'s are remembered."""
        for job in self.to_train:
            trained[self.keys[job.name]] = PastTraining.of(done[job.name])
        out = []
        for job in self.jobs:
            if job.name in done:
                out.append(done[job.name])
            else:
                past = trained[self.keys[job.name]]
                out.append(Finished(job, past.model, past.result, past.failure))
        return out


def plan_candidates(
    iteration: int,
    proposals: list[Proposal],
    per_iteration: int,
    incumbent: Recipe,
    layout: RunLayout,
    mode: CampaignMode,
    epochs: int,
    trained: Trainings,
) -> CandidatePlan:
    plan = CandidatePlan([], {}, [], {})
    first_of: dict[str, CandidateJob] = {}  # training key -> the job that trains it now
    for index, proposal in enumerate(proposals):
        name = candidate_name(iteration, index, per_iteration)
        recipe = incumbent.patched(proposal.patch)
        base = mode.base(name)
        job = CandidateJob(
            iteration, index, name, recipe, proposal, layout.candidate_dir(name), base
        )
        plan.jobs.append(job)
        key = plan.keys[name] = mode.key(recipe, proposal, base, epochs)
        if key in trained:
            plan.same_as[name] = trained[key].candidate
        elif key in first_of:
            plan.same_as[name] = first_of[key].name
        else:
            first_of[key] = job
            plan.to_train.append(job)
    return plan


def would_accept(best: Finished, incumbent: ScoreResult, min_improvement: float) -> bool:
    """Whether the rule alone accepts ``best``: only then is it judged again over seeds."""
    return decide(best.result, incumbent, min_improvement=min_improvement).verdict == "ACCEPT"


def decide_candidates(
    finished: list[Finished],
    incumbent: ScoreResult,
    min_improvement: float,
    same_as: dict[str, str],
    over_seeds: tuple[Decision, dict[str, Any]] | None = None,
) -> list[tuple[Finished, Decision, dict[str, Any] | None]]:
    """Every candidate's decision (and comparison over seeds, if any), in proposal order.

    The best is the first of ``rank`` (feasible first, then lower composite or violation, then
    the earlier proposal); only it can be accepted, by the same rule as a lone candidate, or by
    ``over_seeds`` when noise-aware acceptance judged it again.
    """
    best = best_of(finished)
    out = []
    for f in finished:
        decision = decide(f.result, incumbent, failure=f.failure, min_improvement=min_improvement)
        noise = None
        if best is not None and f is not best and decision.verdict == "ACCEPT":
            reason = f"{best.job.name} ranked first this iteration; alone: {decision.reason}"
            decision = Decision(verdict="REVERT", reason=reason)
        elif f is best and over_seeds is not None:
            decision, noise = over_seeds
        if f.job.name in same_as:
            reason = f"same training as {same_as[f.job.name]}, not retrained; {decision.reason}"
            decision = Decision(verdict=decision.verdict, reason=reason)
        out.append((f, decision, noise))
    return out


def best_of(finished: list[Finished]) -> Finished | None:
    ranked = rank(finished)
    return ranked[0] if ranked else None


# --- noise-aware acceptance: the would-be winner and the incumbent over seeds -----------------


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


@dataclass
class RepeatPlan:
    """The seed repeats a comparison over seeds needs, and which of them must train now.

    Each side's recipe is trained again with seeds ``seed + 1``, ``seed + 2``, ... as
    ``<candidate>.seed<n>`` (e.g. ``it003.seed2``, ``it000.seed2``). A repeat whose training
    ran before (the incumbent's, while it stays incumbent, or any candidate with the same
    training key) is reused, not retrained.
    """

    sides: list[_Side]
    keys: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # side -> (seed, key)
    to_train: dict[str, CandidateJob] = field(default_factory=dict)  # training key -> repeat
    repeats: list[tuple[CandidateJob, str, str]] = field(default_factory=list)  # job, side, of

    def key_of(self, name: str) -> str:
        return next(key for key, job in self.to_train.items() if job.name == name)

    def judge(
        self, trained: Trainings, k: float, min_improvement: float
    ) -> tuple[Decision, dict[str, Any]]:
        runs: dict[str, list[SeedRun]] = {}
        for side in self.sides:
            runs[side.label] = [SeedRun(side.recipe.seed, side.name, side.result, side.failure)]
            for seed, key in self.keys[side.label]:
                done = trained[key]
                runs[side.label].append(SeedRun(seed, done.candidate, done.result, done.failure))
        return decide_over_seeds(
            runs["candidate"], runs["incumbent"], k=k, min_improvement=min_improvement
        )


def plan_repeats(
    iteration: int,
    best: Finished,
    incumbent: Incumbent,
    seeds: int,
    layout: RunLayout,
    mode: CampaignMode,
    epochs: int,
    trained: Trainings,
) -> RepeatPlan:
    plan = RepeatPlan(
        [
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
                incumbent.name,
                incumbent.recipe,
                None,
                mode.incumbent_base(),
                incumbent.result,
                None,
            ),
        ]
    )
    for side in plan.sides:
        plan.keys[side.label] = []
        for index, seed in enumerate(repeat_seeds(side.recipe.seed, seeds)[1:], start=1):
            repeated = side.recipe.patched({"seed": seed})
            name = f"{side.name}.seed{seed}"
            proposal = Proposal(
                hypothesis=f"seed repeat of {side.name}", patch={"seed": seed}, diff=side.diff
            )
            key = mode.key(repeated, proposal, side.base, epochs)
            plan.keys[side.label].append((seed, key))
            if key in trained or key in plan.to_train:
                continue
            job = CandidateJob(
                iteration, index, name, repeated, proposal, layout.candidate_dir(name), side.base
            )
            plan.to_train[key] = job
            plan.repeats.append((job, side.label, side.name))
    return plan
