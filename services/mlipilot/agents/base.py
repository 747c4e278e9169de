"""The one interface every agent implements: read a compact state, propose a patch.

The LLM agent (later), the rule-based researcher and the random baseline all see the same
``CampaignState`` and answer with the same ``Proposal``; the orchestrator validates the patch,
so an agent can be wrong without breaking the campaign.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

from mlipilot.recipe import Recipe
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.spec import ScorecardSpec


class Proposal(BaseModel):
    hypothesis: str = Field(min_length=1)
    patch: dict[str, Any] = Field(min_length=1)


class HistoryEntry(BaseModel):
    """One tried candidate, as an agent sees it (no paths, no test data)."""

    iteration: int
    hypothesis: str
    patch: dict[str, Any]
    recipe: Recipe
    verdict: str  # ACCEPT | REVERT | BASELINE | FAILED
    reason: str
    result: ScoreResult | None


class CampaignState(BaseModel):
    iteration: int
    iterations_total: int
    spec: ScorecardSpec
    baseline: Recipe
    incumbent: Recipe
    incumbent_result: ScoreResult | None
    history: list[HistoryEntry]
    # Recipes already proposed this iteration (several candidates per iteration), not yet tried.
    pending: list[Recipe] = []
    last_error: str | None = None  # why the previous proposal was refused, if it was

    def tried(self, recipe: Recipe) -> bool:
        """Tried before, or already proposed for this iteration."""
        return any(h.recipe == recipe for h in self.history) or recipe in self.pending


class Agent(Protocol):
    name: str

    def propose(self, state: CampaignState) -> Proposal: ...


class AgentGaveUp(Exception):
    """The agent has nothing left to propose; the campaign ends early."""
