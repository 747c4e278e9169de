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


class AgentCost(BaseModel):
    """What asking a model for one proposal cost, and every message to and from it.

    An LLM agent attaches it to its answer (a ``Proposal`` or an ``AgentGaveUp``); the loop
    writes it to the ledger as an ``agent_call`` row. Agents without a model leave it out.
    """

    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # chat-completion calls answered (retried HTTP attempts not counted)
    duration_s: float = 0.0
    transcript: list[dict[str, Any]] = []  # the conversation as sent and received
    calls: list[dict[str, Any]] = []  # per call: tokens, seconds, HTTP attempts, finish reason

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Proposal(BaseModel):
    hypothesis: str = Field(min_length=1)
    patch: dict[str, Any] = Field(min_length=1)
    # How the proposal was obtained (LLM agents): recorded by the loop, not part of the patch.
    cost: AgentCost | None = Field(default=None, exclude=True, repr=False)


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

    def __init__(self, message: str, cost: AgentCost | None = None) -> None:
        super().__init__(message)
        self.cost = cost


class AgentFailed(AgentGaveUp):
    """No valid proposal this time (bounded retries spent, token limit reached): the iteration
    is recorded as an agent failure and the campaign goes on with the next one."""
