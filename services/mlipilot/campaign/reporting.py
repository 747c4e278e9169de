"""What the loop tells the outside world while it runs, and one row per iteration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from mlipilot.campaign.decision import Decision
from mlipilot.scoring.result import ScoreResult

if TYPE_CHECKING:
    from mlipilot.campaign.layout import RunLayout
    from mlipilot.campaign.run_folder import CampaignOutcome
    from mlipilot.config import Campaign


class IterationRow(BaseModel):
    iteration: int
    candidate: str = ""  # it003, or it003-2 with several candidates per iteration
    hypothesis: str
    changed: dict[str, Any]
    metrics: dict[str, float]
    feasible: bool | None
    composite: float | None
    violation: float | None
    verdict: str
    reason: str
    prompt_tokens: int | None = None  # LLM agents: what the proposal cost
    completion_tokens: int | None = None
    spread: float | None = None  # noise-aware acceptance: the seed spread the gain had to beat

    @classmethod
    def build(
        cls,
        iteration: int,
        hypothesis: str,
        patch: dict[str, Any],
        result: ScoreResult | None,
        decision: Decision,
        candidate: str = "",
    ) -> IterationRow:
        return cls(
            iteration=iteration,
            candidate=candidate or f"it{iteration:03d}",
            hypothesis=hypothesis,
            changed=patch,
            metrics=result.metrics if result else {},
            feasible=result.feasible if result else None,
            composite=result.composite if result else None,
            violation=result.violation if result else None,
            verdict=decision.verdict,
            reason=decision.reason,
        )


class Reporter(Protocol):
    def campaign_started(self, campaign: Campaign, layout: RunLayout, agent: str) -> None: ...
    def stage(self, candidate: str, stage: str, done: int, total: int) -> None: ...
    def decision(self, row: IterationRow) -> None: ...
    def note(self, message: str) -> None: ...
    def campaign_finished(self, outcome: CampaignOutcome) -> None: ...


class NullReporter:
    """For tests and library use: the ledger has everything anyway."""

    def campaign_started(self, campaign: Campaign, layout: RunLayout, agent: str) -> None:
        pass

    def stage(self, candidate: str, stage: str, done: int, total: int) -> None:
        pass

    def decision(self, row: IterationRow) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def campaign_finished(self, outcome: CampaignOutcome) -> None:
        pass
