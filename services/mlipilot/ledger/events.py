"""What one ledger row says: the fixed columns (``LedgerEvent``) and, per kind of event, the
typed content of its ``detail`` JSON.

The writer (``campaign/loop.py``) fills ``detail`` from these models, and every reader goes
through them too (``event.details(TrainingDetail)``), so what a key means is written here once.
The column stays JSON: a ledger written before a field existed reads with that field's default,
a value that does not parse as its type (a hand-edited row, an old format) reads as the default
too rather than breaking a report, and keys a later version adds are kept as they are.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EventKind = Literal[
    "campaign_started",
    "campaign_resumed",  # a later process took over an unfinished campaign (--resume, restart)
    "iteration_started",
    "proposal",
    "repeat",  # noise-aware acceptance: a recipe trained again with another seed (detail)
    "agent_failure",
    "agent_call",  # one conversation with an LLM agent: its messages and tokens (detail)
    "progress",  # training epochs and scorecard stages, so a watcher sees work in flight
    "training",
    "evaluation",
    "decision",
    "validation",  # the best (or an accepted) model checked on physics the scorecard never sees
    "campaign_finished",
]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Detail(BaseModel):
    """The ``detail`` of one kind of row; ``KINDS`` are the events that carry it."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    model_config = ConfigDict(extra="allow")  # keys a later version adds are kept

    @field_validator("*", mode="wrap")
    @classmethod
    def _default_when_unreadable(cls, value: Any, handler: Any, info: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            return cls.model_fields[info.field_name].get_default(call_default_factory=True)


D = TypeVar("D", bound=Detail)


class StartedDetail(Detail):
    KINDS = ("campaign_started",)
    campaign: dict[str, Any] = {}  # the campaign file as validated (JSON mode)
    hardware: dict[str, Any] = {}
    program_commit: str | None = None  # code mode: the baseline program's commit

    def setting(self, *keys: str) -> Any:
        """A value of the campaign as recorded, e.g. ``("budget", "epochs")``; None if absent."""
        node: Any = self.campaign
        for key in keys:
            if not isinstance(node, dict):
                return None
            node = node.get(key)
        return node


class ResumedDetail(Detail):
    KINDS = ("campaign_resumed",)
    decided: list[str] = []  # candidates whose decisions the earlier run recorded
    train_again: list[str] = []  # candidates that were in flight
    hardware: dict[str, Any] = {}


class IterationDetail(Detail):
    KINDS = ("iteration_started",)
    iterations_budget: int = 0
    candidates: int = 1  # proposals asked for in this iteration


class ProposalDetail(Detail):
    KINDS = ("proposal",)
    duplicate_of: str | None = None  # answered from this earlier candidate's training
    diff: str | None = None  # code mode: the edit
    base_commit: str | None = None  # code mode: the program commit it applies to
    incumbent: str | None = None  # the incumbent it was proposed from (its candidate name)


class RepeatDetail(Detail):
    KINDS = ("repeat",)
    repeat_of: str = ""  # the candidate whose recipe is trained again
    side: str = ""  # "challenger" or "incumbent"
    seed: int = 0


class AgentFailureDetail(Detail):
    KINDS = ("agent_failure",)
    attempt: int | None = None


class AgentCallDetail(Detail):
    """One conversation with an LLM agent (``agents.base.AgentCost``)."""

    KINDS = ("agent_call",)
    model: str = ""
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)
    requests: int = Field(0, ge=0)  # chat completions answered
    duration_s: float = 0.0
    transcript: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ProgressDetail(Detail):
    KINDS = ("progress",)
    stage: str = ""  # train, md, ...
    done: int = 0
    total: int = 0
    loss: float | None = None  # train: the epoch's loss
    valid: dict[str, float] | None = None  # train: mace's validation errors


class TrainingDetail(Detail):
    KINDS = ("training",)
    curve: list[dict[str, Any]] = []  # per epoch (training.trainer.EpochRecord)
    log: str | None = None  # file URI
    model: str | None = None  # file URI of the model package
    dispatched_at: str | None = None
    dispatch_overhead_s: float | None = None


class EvaluationDetail(Detail):
    KINDS = ("evaluation",)
    scorecard: str = ""  # the spec's name
    constraints: list[dict[str, Any]] = []  # scoring.result.ConstraintOutcome
    hardware: dict[str, Any] = {}
    timings_s: dict[str, float] = {}
    md_replicas: list[Any] = []
    short_range: dict[str, list[float]] | None = None  # scorecard v2's probe: distances, energies


class DecisionDetail(Detail):
    KINDS = ("decision",)
    noise: dict[str, Any] | None = None  # noise-aware acceptance (campaign/decision.py)
    incumbent: str | None = None  # the incumbent it was decided against (its candidate name)


class ValidationDetail(Detail):
    KINDS = ("validation",)
    suite: str = ""
    version: int = 0
    sha256: str = ""
    passed: int = 0
    total: int = 0
    failed: list[str] = []
    checks: list[dict[str, Any]] = []  # metric, value, reference, tolerance, passed
    result: str = ""  # validation.json's URI
    page: str = ""  # validation.html's URI
    wall_s: float = 0.0


class NoDetail(Detail):
    KINDS = ("campaign_finished",)


DETAILS: dict[str, type[Detail]] = {
    kind: model
    for model in (
        StartedDetail,
        ResumedDetail,
        IterationDetail,
        ProposalDetail,
        RepeatDetail,
        AgentFailureDetail,
        AgentCallDetail,
        ProgressDetail,
        TrainingDetail,
        EvaluationDetail,
        DecisionDetail,
        ValidationDetail,
        NoDetail,
    )
    for kind in model.KINDS
}


class LedgerEvent(BaseModel):
    """One row: the columns a person can query, and ``detail`` (read it with ``details``)."""

    id: int | None = None
    ts: str = Field(default_factory=utc_now)
    campaign: str
    iteration: int | None = None
    candidate: str | None = None
    event: EventKind
    agent: str | None = None
    hypothesis: str | None = None
    patch: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None
    recipe_hash: str | None = None
    status: str | None = None
    metrics: dict[str, float] | None = None
    feasible: bool | None = None
    violation: float | None = None
    composite: float | None = None
    decision: str | None = None
    reason: str | None = None
    spec_hash: str | None = None
    train_hash: str | None = None
    test_hash: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    detail: dict[str, Any] | None = None

    def details(self, model: type[D]) -> D:
        """``detail`` as ``model``, the one for this row's kind (a mismatch is a bug)."""
        if self.event not in model.KINDS:
            raise TypeError(f"a {self.event} row has no {model.__name__}")
        return model.model_validate(self.detail or {})
