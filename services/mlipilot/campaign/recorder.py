"""The campaign's one ledger writer: every row the loop records is written here.

The loop and the agent session say what happened; the recorder turns it into ledger rows (and
console stages), skipping what a resumed campaign's ledger already holds, so a replay never
writes a row twice. Workers never call it: their events reach it through the calling thread
(``candidates.CandidatePool``), which keeps one writer and one order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlipilot import faults
from mlipilot.agents.base import AgentCost, TrainingSummary
from mlipilot.campaign.candidates import CandidateJob, Evaluated, Event, Progress, Trained
from mlipilot.campaign.decision import Decision
from mlipilot.campaign.reporting import Reporter
from mlipilot.campaign.resume import PriorRun
from mlipilot.ledger import Ledger, LedgerEvent
from mlipilot.ledger.events import TrainingDetail
from mlipilot.ledger.history import token_totals
from mlipilot.scoring.result import ScoreResult


@dataclass
class Recorder:
    ledger: Ledger
    campaign: str  # the run folder's name: every row's campaign
    reporter: Reporter
    prior: PriorRun = field(default_factory=PriorRun)  # what the ledger had when resumed
    agent_name: str = ""
    train_hash: str = ""
    _progress_marks: dict[tuple[str, str], int] = field(default_factory=dict)

    def record(self, **fields: Any) -> int:
        return self.ledger.append(LedgerEvent(campaign=self.campaign, **fields))

    def finished(self, started: float, status: str, reason: str, **fields: Any) -> None:
        """How the campaign ended (``campaign_finished``), however it ended."""
        self.record(
            event="campaign_finished",
            status=status,
            reason=reason,
            duration_s=time.monotonic() - started,
            **fields,
        )

    # --- what workers report, in the calling thread --------------------------------------

    def handle(self, event: Event) -> None:
        """What a candidate's worker reported, shown and recorded."""
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
            train_hash=self.train_hash,
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
                # scorecard v2's pushed-pair curve: the evidence for its verdict, when measured
                **(
                    {"short_range": result.details["short_range"]}
                    if "short_range" in result.details
                    else {}
                ),
            },
            **common,
        )

    # --- the loop's steps -----------------------------------------------------------------

    def iteration_started(self, iteration: int, iterations: int, candidates: int) -> None:
        if iteration in self.prior.iterations_started:
            return
        self.record(
            event="iteration_started",
            iteration=iteration,
            candidate="it000" if iteration == 0 else None,
            detail={"iterations_budget": iterations, "candidates": candidates},
        )

    def proposals(self, jobs: list[tuple[CandidateJob, str | None, dict[str, Any]]]) -> None:
        """Proposal rows in one transaction (a resume finds all or none), each with the
        candidate it duplicates (if any) and its mode's detail (code mode: diff, base)."""
        events = [
            LedgerEvent(
                campaign=self.campaign,
                event="proposal",
                iteration=job.iteration,
                candidate=job.name,
                agent=self.agent_name,
                hypothesis=job.proposal.hypothesis,
                patch=None if job.iteration == 0 else job.proposal.patch,
                recipe=job.recipe.model_dump(),
                recipe_hash=job.recipe.digest(),
                status="duplicate" if duplicate_of else None,
                detail=_proposal_detail(duplicate_of, extra),
            )
            for job, duplicate_of, extra in jobs
            if job.name not in self.prior.proposed
        ]
        if events:
            self.ledger.append_all(events)

    def repeats(self, repeats: list[tuple[CandidateJob, str, str]]) -> None:
        """``repeat`` rows (one transaction) for the seed repeats about to train, as (job,
        side, repeat of): a resumed campaign knows them, and does not ask for them again."""
        events = [
            LedgerEvent(
                campaign=self.campaign,
                event="repeat",
                iteration=job.iteration,
                candidate=job.name,
                agent=self.agent_name,
                recipe=job.recipe.model_dump(),
                recipe_hash=job.recipe.digest(),
                detail={"repeat_of": of, "side": side, "seed": job.recipe.seed},
            )
            for job, side, of in repeats
            if job.name not in self.prior.repeated
        ]
        if events:
            self.ledger.append_all(events)

    def decision(
        self,
        job: CandidateJob,
        patch: dict[str, Any],
        result: ScoreResult | None,
        decision: Decision,
        noise: dict[str, Any] | None,
        hashes: tuple[str, str],
        against: str | None = None,
    ) -> int:
        """The decision's row id: written now, or the one a resumed campaign recorded.
        ``hashes``: the scorecard's and its test split's sha256; ``against``: the incumbent
        it was decided against."""
        if job.name in self.prior.decided:
            return self.prior.decision_rows.get(job.name, 0)
        spec_hash, test_hash = hashes
        row_id = self.record(
            event="decision",
            iteration=job.iteration,
            candidate=job.name,
            agent=self.agent_name,
            hypothesis=job.proposal.hypothesis,
            patch=patch or None,
            recipe_hash=job.recipe.digest(),
            metrics=result.metrics if result else None,
            feasible=result.feasible if result else None,
            violation=result.violation if result else None,
            composite=result.composite if result else None,
            decision=decision.verdict,
            reason=decision.reason,
            spec_hash=spec_hash,
            test_hash=test_hash,
            detail=_decision_detail(noise, against),
        )
        faults.reached("decision", job.iteration)  # recorded; the incumbent not yet copied
        return row_id

    def agent_call(
        self,
        iteration: int,
        candidate: str,
        status: str,
        cost: AgentCost,
        reason: str | None = None,
    ) -> None:
        """One conversation with an LLM agent: every message and the tokens of every call."""
        self.record(
            event="agent_call",
            iteration=iteration,
            candidate=candidate,
            agent=self.agent_name,
            status=status,
            reason=reason,
            duration_s=cost.duration_s,
            detail={**cost.model_dump(), "total_tokens": cost.total_tokens},
        )

    def agent_failure(
        self, iteration: int, status: str, reason: str, detail: dict[str, Any] | None = None
    ) -> None:
        self.record(
            event="agent_failure",
            iteration=iteration,
            agent=self.agent_name,
            status=status,
            reason=reason,
            detail=detail,
        )

    # --- what the ledger holds ------------------------------------------------------------

    def tokens_spent(self) -> int:
        """LLM tokens the campaign's ``agent_call`` rows record (also those before a resume)."""
        return sum(token_totals(self.ledger.events("agent_call")))

    def training_summary(self, candidate: str) -> TrainingSummary | None:
        """How the candidate's training went, from its ledger row (also one a resume replays);
        None for a candidate answered from another's training (a duplicate) or never trained."""
        rows = self.ledger.events("training", candidate=candidate)
        if not rows:
            return None
        last = rows[-1]  # a training killed and run again: the last attempt counts
        curve = last.details(TrainingDetail).curve
        return TrainingSummary.from_curve(
            last.status or "?", curve, float(last.duration_s or 0.0), cause=last.reason
        )


def _proposal_detail(duplicate_of: str | None, extra: dict[str, Any]) -> dict | None:
    detail = {"duplicate_of": duplicate_of} if duplicate_of else {}
    return (detail | extra) or None


def _decision_detail(noise: dict[str, Any] | None, against: str | None) -> dict | None:
    detail = {"noise": noise, "incumbent": against}
    return {k: v for k, v in detail.items() if v is not None} or None


def _seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
