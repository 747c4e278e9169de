"""The one interface every agent implements: read a compact state, propose a patch.

The LLM agent, the rule-based researcher, random search, Optuna and replay all see the same
``CampaignState`` and answer with the same ``Proposal``; the orchestrator validates the patch,
so an agent can be wrong without breaking the campaign.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from mlipilot.errors import MlipilotError
from mlipilot.recipe import Recipe
from mlipilot.scoring.result import ScoreResult
from mlipilot.scoring.spec import ScorecardSpec
from mlipilot.training.mace_args import untrainable


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
    patch: dict[str, Any] = Field(default_factory=dict)
    # Code mode: a unified diff of the editable files, applied to the incumbent's program.
    diff: str | None = Field(None, min_length=1)
    # How the proposal was obtained (LLM agents): recorded by the loop, not part of the patch.
    cost: AgentCost | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _changes_something(self) -> Proposal:
        if not self.patch and self.diff is None:
            raise ValueError("a proposal needs a recipe patch, a diff of the program, or both")
        return self


class TrainingSummary(BaseModel):
    """How a candidate's training went, in a few numbers: what a researcher reads off the curve.

    Built from the trainer's per-epoch records (train loss and mace's validation errors on the
    train split's held-out part, never the test split).
    """

    status: str  # ok | failed | timeout | cancelled
    cause: str | None = None
    seconds: float
    epochs: int  # epochs logged (the evaluation before training not counted)
    first_loss: float | None = None
    last_loss: float | None = None
    best_loss: float | None = None
    best_epoch: int | None = None
    # The last few epochs' loss relative to the one before them: < 0 still falling.
    recent_loss_change: float | None = None
    first_valid: dict[str, float] = {}
    last_valid: dict[str, float] = {}

    @classmethod
    def from_curve(
        cls, status: str, curve: list[dict[str, Any]], seconds: float, cause: str | None = None
    ) -> TrainingSummary:
        epochs = [e for e in curve if int(e.get("epoch", -1)) >= 0]
        losses = [(int(e["epoch"]), float(e["loss"])) for e in epochs]
        summary = cls(status=status, cause=cause, seconds=seconds, epochs=len(epochs))
        if losses:
            best = min(losses, key=lambda el: el[1])
            summary.first_loss, summary.last_loss = losses[0][1], losses[-1][1]
            summary.best_epoch, summary.best_loss = best
            window = losses[-RECENT_EPOCHS - 1 :]
            if len(window) > 1 and window[0][1] > 0:
                summary.recent_loss_change = window[-1][1] / window[0][1] - 1.0
        valid = [e for e in curve if e.get("valid")]
        if valid:
            summary.first_valid, summary.last_valid = (
                dict(valid[0]["valid"]),
                dict(valid[-1]["valid"]),
            )
        return summary


RECENT_EPOCHS = 3  # the tail of the loss curve that says "still falling" or "flat"


class HistoryEntry(BaseModel):
    """One tried candidate, as an agent sees it (no paths, no test data)."""

    iteration: int
    hypothesis: str
    patch: dict[str, Any]
    recipe: Recipe
    verdict: str  # ACCEPT | REVERT | BASELINE | FAILED
    reason: str
    result: ScoreResult | None
    training: TrainingSummary | None = None  # absent when no training ran (or none recorded)
    # Code mode: the candidate's diff and the digest of the program it trained with.
    diff: str | None = None
    program_sha256: str | None = None


class CampaignState(BaseModel):
    iteration: int
    iterations_total: int
    spec: ScorecardSpec
    baseline: Recipe
    incumbent: Recipe
    incumbent_result: ScoreResult | None
    history: list[HistoryEntry]
    # Recipes proposed and not yet decided: this iteration's earlier candidates (several per
    # iteration), or every candidate in flight (asynchronous campaigns).
    pending: list[Recipe] = []
    slot: int = 0  # the candidate's place among its iteration's proposals (0: the first)
    # Asynchronous campaigns that ask several proposals at once: how many others are being
    # asked from this same state (they cannot be shown as pending); ``slot`` says which this is.
    asked_alongside: int = 0
    last_error: str | None = None  # why the previous proposal was refused, if it was
    # Frames of the train split (a count, no data): a batch larger than what training sees
    # cannot train, and an agent that checks its own proposals can say so at once.
    train_frames: int | None = None
    train_stress: bool = True  # every train frame has a stress label (loss=stress needs it)
    # Code mode: the editable files of the incumbent's training program (path -> text).
    program: dict[str, str] | None = None
    program_sha256: str | None = None  # their digest (code_mode.program_files.program_digest)
    _tried: set[tuple[str, str | None]] | None = PrivateAttr(default=None)

    def untrainable(self, recipe: Recipe) -> str | None:
        """Why ``recipe`` cannot train on the campaign's data (a batch the frames cannot
        fill, a stress loss without stress labels), or None; None too when the data is not
        known."""
        if self.train_frames is None:
            return None
        return untrainable(recipe, self.train_frames, self.train_stress)

    def tried(self, recipe: Recipe, program_sha256: str | None = None) -> bool:
        """Tried before, or proposed and not yet decided. In code mode a candidate is a
        recipe and a program (default: the incumbent's)."""
        program = program_sha256 or self.program_sha256
        if self._tried is None:  # built once per state: agents ask for every draw they make
            self._tried = {(h.recipe.digest(), h.program_sha256) for h in self.history}
        if (recipe.digest(), program) in self._tried:
            return True
        return program == self.program_sha256 and recipe in self.pending


class Agent(Protocol):
    name: str

    def propose(self, state: CampaignState) -> Proposal: ...


def answers_concurrently(agent: Agent) -> bool:
    """Whether ``agent`` may be asked for several proposals at once, from several threads. An
    LLM agent may: each proposal is its own conversation with a server that answers requests
    side by side. The built-in searchers keep state between proposals (Optuna's trials) and
    answer in milliseconds, so they are asked one at a time."""
    return bool(getattr(agent, "concurrent", False))


class AgentGaveUp(Exception):
    """The agent has nothing left to propose; the campaign ends early."""

    def __init__(self, message: str, cost: AgentCost | None = None) -> None:
        super().__init__(message)
        self.cost = cost


class AgentUnreachable(MlipilotError):
    """The agent's model server is gone (after retries): the campaign stops, resumable.

    ``cost`` holds the conversation up to the break, so tokens already spent are recorded.
    """

    cost: AgentCost | None = None


class AgentFailed(AgentGaveUp):
    """No valid proposal this time (bounded retries spent, token limit reached): the iteration
    is recorded as an agent failure and the campaign goes on with the next one."""
