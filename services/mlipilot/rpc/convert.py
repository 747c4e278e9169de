"""Between the project's pydantic models (ledger events, score results) and mlipilot.v1 messages.

One place for the mapping, so the servers, the clients and the tests agree on it. The ledger
is the source of every campaign event: a ``CampaignEvent`` is one ledger row, its sequence
number the row id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from mlipilot.ledger import LedgerEvent, score_result
from mlipilot.ledger.events import (
    AgentCallDetail,
    IterationDetail,
    ProgressDetail,
    RepeatDetail,
    ResumedDetail,
    TrainingDetail,
    ValidationDetail,
)
from mlipilot.scoring.result import ConstraintOutcome, ScoreResult
from mlipilot.v1 import common_pb2, orchestrator_pb2

_TRAINING = orchestrator_pb2.DESCRIPTOR.enum_types_by_name["TrainingStatus"]
_EVALUATION = orchestrator_pb2.DESCRIPTOR.enum_types_by_name["EvaluationStatus"]
_VERDICT = orchestrator_pb2.DESCRIPTOR.enum_types_by_name["Verdict"]
_AGENT_FAILURE = orchestrator_pb2.DESCRIPTOR.enum_types_by_name["AgentFailureKind"]

STATUS_BY_NAME = {
    "running": orchestrator_pb2.CAMPAIGN_STATUS_RUNNING,
    "finished": orchestrator_pb2.CAMPAIGN_STATUS_FINISHED,
    "failed": orchestrator_pb2.CAMPAIGN_STATUS_FAILED,
    "cancelled": orchestrator_pb2.CAMPAIGN_STATUS_CANCELLED,
    "interrupted": orchestrator_pb2.CAMPAIGN_STATUS_INTERRUPTED,
}


def _enum(enum: Any, prefix: str, value: str | None) -> int:
    """A ledger string ("ok", "ACCEPT") as its proto enum number; unknown: UNSPECIFIED (0)."""
    found = enum.values_by_name.get(f"{prefix}_{(value or '').upper()}")
    return found.number if found is not None else 0


def label(enum: Any, value: int) -> str:
    """An enum number as the ledger's word: ``Verdict.VERDICT_ACCEPT`` -> ``accept``."""
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    return enum.Name(value).removeprefix(prefix).lower()


def status_name(status: int) -> str:
    """``CAMPAIGN_STATUS_FINISHED`` -> ``finished``."""
    return label(orchestrator_pb2.CampaignStatus, status)


def struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    if data:
        out.update(_plain(data))
    return out


def _plain(value: Any) -> Any:
    """JSON-like data a Struct accepts: tuples as lists, other objects as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def from_struct(value: struct_pb2.Struct) -> dict[str, Any]:
    return {k: _unwrap(v) for k, v in value.fields.items()}


def _unwrap(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [_unwrap(v) for v in value.list_value.values]
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def timestamp(iso: str | None) -> timestamp_pb2.Timestamp | None:
    if not iso:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.fromisoformat(iso))
    return ts


def score_result_to_proto(result: ScoreResult) -> common_pb2.ScoreResult:
    return common_pb2.ScoreResult(
        scorecard=result.spec_name,
        scorecard_sha256=result.spec_hash,
        test_set_sha256=result.test_hash,
        metrics=result.metrics,
        constraints=[_constraint_to_proto(c) for c in result.constraints],
        feasible=result.feasible,
        total_violation=result.violation,
        composite=result.composite,
        hardware={k: str(v) for k, v in result.hardware.items()},
        stage_seconds=result.timings_s,
        details=struct(result.details),
    )


def _constraint_to_proto(c: ConstraintOutcome) -> common_pb2.ConstraintOutcome:
    return common_pb2.ConstraintOutcome(
        metric=c.metric,
        value=c.value,
        op=c.op,
        threshold=c.threshold,
        unit=c.unit,
        relative_margin=c.margin,
        normalized_violation=c.violation,
    )


def score_result_from_proto(msg: common_pb2.ScoreResult) -> ScoreResult:
    return ScoreResult(
        spec_name=msg.scorecard,
        spec_hash=msg.scorecard_sha256,
        test_hash=msg.test_set_sha256,
        metrics=dict(msg.metrics),
        constraints=[
            ConstraintOutcome(
                metric=c.metric,
                value=c.value,
                op=c.op,  # type: ignore[arg-type]  # "<=" or ">=", as the server wrote it
                threshold=c.threshold,
                unit=c.unit,
                margin=c.relative_margin,
                violation=c.normalized_violation,
            )
            for c in msg.constraints
        ],
        feasible=msg.feasible,
        violation=msg.total_violation,
        composite=msg.composite,
        hardware=dict(msg.hardware),
        timings_s=dict(msg.stage_seconds),
        details=from_struct(msg.details),
    )


def _finite(metrics: Mapping[str, float] | None) -> dict[str, float]:
    return dict(metrics or {})


def event_to_proto(e: LedgerEvent, campaign_id: str) -> orchestrator_pb2.CampaignEvent:
    """One ledger row as a typed campaign event."""
    assert e.id is not None, "only events read back from a ledger have a sequence number"
    msg = orchestrator_pb2.CampaignEvent(
        sequence=e.id, campaign_id=campaign_id, candidate=e.candidate or ""
    )
    ts = timestamp(e.ts)
    if ts is not None:
        msg.time.CopyFrom(ts)
    if e.iteration is not None:
        msg.iteration = e.iteration
    if e.event == "campaign_started":
        msg.campaign_started.CopyFrom(
            orchestrator_pb2.CampaignStarted(
                agent=e.agent or "",
                scorecard_sha256=e.spec_hash or "",
                train_set_sha256=e.train_hash or "",
                test_set_sha256=e.test_hash or "",
                baseline_recipe=struct(e.recipe),
            )
        )
    elif e.event == "campaign_resumed":
        resumed = e.details(ResumedDetail)
        msg.campaign_resumed.CopyFrom(
            orchestrator_pb2.CampaignResumed(
                agent=e.agent or "",
                decided=resumed.decided,
                train_again=resumed.train_again,
                reason=e.reason or "",
            )
        )
    elif e.event == "iteration_started":
        msg.iteration_started.iterations_budget = e.details(IterationDetail).iterations_budget
    elif e.event == "proposal":
        msg.proposal.CopyFrom(
            orchestrator_pb2.ProposalMade(
                agent=e.agent or "",
                hypothesis=e.hypothesis or "",
                patch=struct(e.patch),
                recipe=struct(e.recipe),
                recipe_sha256=e.recipe_hash or "",
                duplicate=e.status == "duplicate",
            )
        )
    elif e.event == "agent_failure":
        msg.agent_failure.CopyFrom(
            orchestrator_pb2.AgentFailure(
                agent=e.agent or "",
                kind=_enum(_AGENT_FAILURE, "AGENT_FAILURE_KIND", e.status),
                reason=e.reason or "",
            )
        )
    elif e.event == "agent_call":
        call = e.details(AgentCallDetail)
        msg.agent_call.CopyFrom(
            orchestrator_pb2.AgentCall(
                agent=e.agent or "",
                model=call.model,
                status=e.status or "",
                prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens,
                requests=call.requests,
                messages=len(call.transcript),
                duration_seconds=e.duration_s or 0.0,
                reason=e.reason or "",
            )
        )
    elif e.event == "repeat":
        repeat = e.details(RepeatDetail)
        msg.seed_repeat.CopyFrom(
            orchestrator_pb2.SeedRepeat(
                repeat_of=repeat.repeat_of, side=repeat.side, seed=repeat.seed
            )
        )
    elif e.event == "progress":
        _progress(msg, e)
    elif e.event == "training":
        training = e.details(TrainingDetail)
        msg.training_finished.CopyFrom(
            orchestrator_pb2.TrainingFinished(
                status=_enum(_TRAINING, "TRAINING_STATUS", e.status),
                cause=e.reason or "",
                duration_seconds=e.duration_s or 0.0,
                model_uri=training.model or "",
                log_uri=training.log or "",
            )
        )
    elif e.event == "evaluation":
        msg.result.CopyFrom(_evaluation(e))
    elif e.event == "decision":
        msg.decision.CopyFrom(
            orchestrator_pb2.DecisionMade(
                verdict=_enum(_VERDICT, "VERDICT", e.decision),
                reason=e.reason or "",
                hypothesis=e.hypothesis or "",
                patch=struct(e.patch),
                recipe_sha256=e.recipe_hash or "",
                metrics=_finite(e.metrics),
            )
        )
        _set_optional(msg.decision, e)
    elif e.event == "validation":
        validation = e.details(ValidationDetail)
        msg.validation.CopyFrom(
            orchestrator_pb2.ValidationFinished(
                status=e.status or "",
                reason=e.reason or "",
                suite=validation.suite,
                suite_sha256=validation.sha256,
                passed=validation.passed,
                total=validation.total,
                failed=validation.failed,
                result_uri=validation.result,
            )
        )
    elif e.event == "campaign_finished":
        msg.campaign_finished.CopyFrom(
            orchestrator_pb2.CampaignFinished(
                status=STATUS_BY_NAME.get(e.status or "", 0),
                reason=e.reason or "",
                duration_seconds=e.duration_s or 0.0,
            )
        )
        if e.feasible is not None:
            msg.campaign_finished.feasible = e.feasible
        if e.composite is not None:
            msg.campaign_finished.composite = e.composite
    return msg


def _progress(msg: orchestrator_pb2.CampaignEvent, e: LedgerEvent) -> None:
    progress = e.details(ProgressDetail)
    if progress.stage == "train":
        msg.training_progress.CopyFrom(
            orchestrator_pb2.TrainingProgress(
                epoch=progress.done,
                epochs_budget=progress.total,
                loss=math.nan if progress.loss is None else progress.loss,
                validation=progress.valid or {},
            )
        )
    else:
        msg.scorecard_progress.CopyFrom(
            orchestrator_pb2.ScorecardProgress(
                stage=progress.stage or e.status or "",
                done=progress.done,
                total=progress.total,
            )
        )


def _set_optional(msg: orchestrator_pb2.DecisionMade, e: LedgerEvent) -> None:
    if e.feasible is not None:
        msg.feasible = e.feasible
    if e.violation is not None:
        msg.total_violation = e.violation
    if e.composite is not None:
        msg.composite = e.composite


def _evaluation(e: LedgerEvent) -> orchestrator_pb2.EvaluationFinished:
    out = orchestrator_pb2.EvaluationFinished(
        status=_enum(_EVALUATION, "EVALUATION_STATUS", e.status),
        reason=e.reason or "",
        duration_seconds=e.duration_s or 0.0,
    )
    if e.metrics is not None:  # a failed evaluation has no result
        out.result.CopyFrom(score_result_to_proto(score_result(e)))
    return out
