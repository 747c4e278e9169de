"""A campaign's history, built once from its ledger's events: what resume, the report, the RPC
readers and the benchmarks ask of a ledger, answered in one place.

Rows are grouped by candidate (``it003``, ``it003-2``; rows written before candidates were
named fall back to ``it{iteration:03d}``). Where a candidate has several rows of a kind, the
last counts: a training killed and run again is judged by its last attempt, and a scoring
belongs to the training before it (a new training row drops the scoring of the one before).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlipilot.ledger.events import (
    AgentCallDetail,
    EvaluationDetail,
    LedgerEvent,
    StartedDetail,
)
from mlipilot.scoring.result import ConstraintOutcome, ScoreResult


def candidate_of(event: LedgerEvent) -> str:
    """The candidate a row belongs to: ``it003``, or ``it003-2`` with several per iteration.

    Rows written before candidates were named fall back to ``it{iteration:03d}``.
    """
    if event.candidate:
        return event.candidate
    return f"it{event.iteration or 0:03d}"


def _names_a_candidate(event: LedgerEvent) -> bool:
    return bool(event.candidate) or event.iteration is not None


def ending(events: Iterable[LedgerEvent]) -> LedgerEvent | None:
    """How the campaign's latest run ended: its last ``campaign_finished`` row, unless a
    ``campaign_resumed`` row came after it (then it is running again, or was killed)."""
    for event in reversed(list(events)):
        if event.event == "campaign_finished":
            return event
        if event.event == "campaign_resumed":
            return None
    return None


def score_result(evaluation: LedgerEvent) -> ScoreResult:
    """The scorecard result an ``evaluation`` row records."""
    detail = evaluation.details(EvaluationDetail)
    return ScoreResult(
        spec_name=detail.scorecard,
        spec_hash=evaluation.spec_hash or "",
        test_hash=evaluation.test_hash or "",
        metrics=evaluation.metrics or {},
        constraints=[ConstraintOutcome.model_validate(c) for c in detail.constraints],
        feasible=bool(evaluation.feasible),
        violation=evaluation.violation or 0.0,
        composite=evaluation.composite or 0.0,
        hardware=detail.hardware,
        timings_s=detail.timings_s,
        details={"md_replicas": detail.md_replicas},
    )


@dataclass(frozen=True)
class CampaignHistory:
    events: list[LedgerEvent]
    started: LedgerEvent | None
    ending: LedgerEvent | None  # None: unfinished (running, or killed)
    proposals: dict[str, LedgerEvent]  # the last proposal row of each candidate
    trainings: dict[str, LedgerEvent]  # the last training row of each candidate
    evaluations: dict[str, LedgerEvent]  # the scoring of that training, where recorded
    decisions: list[LedgerEvent]  # in ledger order, one per candidate
    agent_calls: list[LedgerEvent] = field(default_factory=list)  # LLM conversations
    validations: list[LedgerEvent] = field(default_factory=list)
    repeats: list[LedgerEvent] = field(default_factory=list)  # seed repeats dispatched

    @classmethod
    def of(cls, events: Iterable[LedgerEvent]) -> CampaignHistory:
        events = list(events)
        proposals: dict[str, LedgerEvent] = {}
        trainings: dict[str, LedgerEvent] = {}
        evaluations: dict[str, LedgerEvent] = {}
        for e in events:
            if not _names_a_candidate(e):
                continue
            name = candidate_of(e)
            if e.event == "proposal":
                proposals[name] = e
            elif e.event == "training":
                trainings[name] = e
                evaluations.pop(name, None)  # the attempt before it was never finished
            elif e.event == "evaluation":
                evaluations[name] = e
        return cls(
            events=events,
            started=next((e for e in events if e.event == "campaign_started"), None),
            ending=ending(events),
            proposals=proposals,
            trainings=trainings,
            evaluations=evaluations,
            decisions=[e for e in events if e.event == "decision" and e.iteration is not None],
            agent_calls=[e for e in events if e.event == "agent_call"],
            validations=[e for e in events if e.event == "validation"],
            repeats=[e for e in events if e.event == "repeat"],
        )

    def scored(self) -> dict[str, LedgerEvent]:
        """The evaluations that produced a result (a failed scoring has no metrics)."""
        return {name: e for name, e in self.evaluations.items() if e.metrics is not None}

    def setting(self, *keys: str) -> Any:
        """A value from the campaign as recorded at the start, e.g. ``("budget", "epochs")``."""
        if self.started is None:
            return None
        return self.started.details(StartedDetail).setting(*keys)

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) LLM tokens of every conversation, failed ones too."""
        return token_totals(self.agent_calls)

    def tokens_by_candidate(self) -> dict[str, int]:
        """Tokens spent on each candidate's proposal (all its conversations)."""
        return tokens_by_candidate(self.agent_calls)


def token_totals(calls: Iterable[LedgerEvent]) -> tuple[int, int]:
    """(prompt, completion) tokens of these ``agent_call`` rows together."""
    details = [c.details(AgentCallDetail) for c in calls]
    return sum(d.prompt_tokens for d in details), sum(d.completion_tokens for d in details)


def tokens_by_candidate(calls: Iterable[LedgerEvent]) -> dict[str, int]:
    """Tokens spent on each candidate's proposal (all its conversations, failed ones too)."""
    spent: dict[str, int] = {}
    for call in calls:
        name = candidate_of(call)
        spent[name] = spent.get(name, 0) + call.details(AgentCallDetail).total_tokens
    return spent
