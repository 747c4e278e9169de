import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from mlipilot.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Artifact(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_UNSPECIFIED: _ClassVar[Artifact]
    ARTIFACT_REPORT: _ClassVar[Artifact]
    ARTIFACT_BEST_MODEL: _ClassVar[Artifact]
    ARTIFACT_LEDGER: _ClassVar[Artifact]

class CampaignStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAMPAIGN_STATUS_UNSPECIFIED: _ClassVar[CampaignStatus]
    CAMPAIGN_STATUS_RUNNING: _ClassVar[CampaignStatus]
    CAMPAIGN_STATUS_FINISHED: _ClassVar[CampaignStatus]
    CAMPAIGN_STATUS_FAILED: _ClassVar[CampaignStatus]
    CAMPAIGN_STATUS_CANCELLED: _ClassVar[CampaignStatus]
    CAMPAIGN_STATUS_INTERRUPTED: _ClassVar[CampaignStatus]

class AgentFailureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_FAILURE_KIND_UNSPECIFIED: _ClassVar[AgentFailureKind]
    AGENT_FAILURE_KIND_INVALID_PATCH: _ClassVar[AgentFailureKind]
    AGENT_FAILURE_KIND_GAVE_UP: _ClassVar[AgentFailureKind]
    AGENT_FAILURE_KIND_FAILED: _ClassVar[AgentFailureKind]
    AGENT_FAILURE_KIND_TOKEN_BUDGET: _ClassVar[AgentFailureKind]

class TrainingStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_STATUS_UNSPECIFIED: _ClassVar[TrainingStatus]
    TRAINING_STATUS_OK: _ClassVar[TrainingStatus]
    TRAINING_STATUS_FAILED: _ClassVar[TrainingStatus]
    TRAINING_STATUS_TIMEOUT: _ClassVar[TrainingStatus]
    TRAINING_STATUS_CANCELLED: _ClassVar[TrainingStatus]

class EvaluationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVALUATION_STATUS_UNSPECIFIED: _ClassVar[EvaluationStatus]
    EVALUATION_STATUS_FEASIBLE: _ClassVar[EvaluationStatus]
    EVALUATION_STATUS_INFEASIBLE: _ClassVar[EvaluationStatus]
    EVALUATION_STATUS_FAILED: _ClassVar[EvaluationStatus]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_BASELINE: _ClassVar[Verdict]
    VERDICT_ACCEPT: _ClassVar[Verdict]
    VERDICT_REVERT: _ClassVar[Verdict]
ARTIFACT_UNSPECIFIED: Artifact
ARTIFACT_REPORT: Artifact
ARTIFACT_BEST_MODEL: Artifact
ARTIFACT_LEDGER: Artifact
CAMPAIGN_STATUS_UNSPECIFIED: CampaignStatus
CAMPAIGN_STATUS_RUNNING: CampaignStatus
CAMPAIGN_STATUS_FINISHED: CampaignStatus
CAMPAIGN_STATUS_FAILED: CampaignStatus
CAMPAIGN_STATUS_CANCELLED: CampaignStatus
CAMPAIGN_STATUS_INTERRUPTED: CampaignStatus
AGENT_FAILURE_KIND_UNSPECIFIED: AgentFailureKind
AGENT_FAILURE_KIND_INVALID_PATCH: AgentFailureKind
AGENT_FAILURE_KIND_GAVE_UP: AgentFailureKind
AGENT_FAILURE_KIND_FAILED: AgentFailureKind
AGENT_FAILURE_KIND_TOKEN_BUDGET: AgentFailureKind
TRAINING_STATUS_UNSPECIFIED: TrainingStatus
TRAINING_STATUS_OK: TrainingStatus
TRAINING_STATUS_FAILED: TrainingStatus
TRAINING_STATUS_TIMEOUT: TrainingStatus
TRAINING_STATUS_CANCELLED: TrainingStatus
EVALUATION_STATUS_UNSPECIFIED: EvaluationStatus
EVALUATION_STATUS_FEASIBLE: EvaluationStatus
EVALUATION_STATUS_INFEASIBLE: EvaluationStatus
EVALUATION_STATUS_FAILED: EvaluationStatus
VERDICT_UNSPECIFIED: Verdict
VERDICT_BASELINE: Verdict
VERDICT_ACCEPT: Verdict
VERDICT_REVERT: Verdict

class Campaign(_message.Message):
    __slots__ = ("id", "name", "status", "status_reason", "created_time", "finished_time", "agent", "iterations_decided", "iterations_budget", "incumbent_iteration", "incumbent_result", "run_uri", "last_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_DECIDED_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_BUDGET_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_ITERATION_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_RESULT_FIELD_NUMBER: _ClassVar[int]
    RUN_URI_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    status: CampaignStatus
    status_reason: str
    created_time: _timestamp_pb2.Timestamp
    finished_time: _timestamp_pb2.Timestamp
    agent: str
    iterations_decided: int
    iterations_budget: int
    incumbent_iteration: int
    incumbent_result: _common_pb2.ScoreResult
    run_uri: str
    last_sequence: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[_Union[CampaignStatus, str]] = ..., status_reason: _Optional[str] = ..., created_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent: _Optional[str] = ..., iterations_decided: _Optional[int] = ..., iterations_budget: _Optional[int] = ..., incumbent_iteration: _Optional[int] = ..., incumbent_result: _Optional[_Union[_common_pb2.ScoreResult, _Mapping]] = ..., run_uri: _Optional[str] = ..., last_sequence: _Optional[int] = ...) -> None: ...

class CreateCampaignRequest(_message.Message):
    __slots__ = ("campaign_yaml", "source_name", "base_dir")
    CAMPAIGN_YAML_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    campaign_yaml: str
    source_name: str
    base_dir: str
    def __init__(self, campaign_yaml: _Optional[str] = ..., source_name: _Optional[str] = ..., base_dir: _Optional[str] = ...) -> None: ...

class GetCampaignRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListCampaignsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCampaignsResponse(_message.Message):
    __slots__ = ("campaigns",)
    CAMPAIGNS_FIELD_NUMBER: _ClassVar[int]
    campaigns: _containers.RepeatedCompositeFieldContainer[Campaign]
    def __init__(self, campaigns: _Optional[_Iterable[_Union[Campaign, _Mapping]]] = ...) -> None: ...

class WatchCampaignRequest(_message.Message):
    __slots__ = ("id", "after_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_sequence: int
    def __init__(self, id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class CancelCampaignRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("id", "artifact")
    ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    id: str
    artifact: Artifact
    def __init__(self, id: _Optional[str] = ..., artifact: _Optional[_Union[Artifact, str]] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("name", "total_bytes", "sha256", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    total_bytes: int
    sha256: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class CampaignEvent(_message.Message):
    __slots__ = ("sequence", "time", "campaign_id", "iteration", "candidate", "campaign_started", "iteration_started", "proposal", "agent_failure", "training_progress", "training_finished", "scorecard_progress", "result", "decision", "campaign_finished", "campaign_resumed", "agent_call", "seed_repeat", "validation")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_STARTED_FIELD_NUMBER: _ClassVar[int]
    ITERATION_STARTED_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_FAILURE_FIELD_NUMBER: _ClassVar[int]
    TRAINING_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FINISHED_FIELD_NUMBER: _ClassVar[int]
    SCORECARD_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_RESUMED_FIELD_NUMBER: _ClassVar[int]
    AGENT_CALL_FIELD_NUMBER: _ClassVar[int]
    SEED_REPEAT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    campaign_id: str
    iteration: int
    candidate: str
    campaign_started: CampaignStarted
    iteration_started: IterationStarted
    proposal: ProposalMade
    agent_failure: AgentFailure
    training_progress: TrainingProgress
    training_finished: TrainingFinished
    scorecard_progress: ScorecardProgress
    result: EvaluationFinished
    decision: DecisionMade
    campaign_finished: CampaignFinished
    campaign_resumed: CampaignResumed
    agent_call: AgentCall
    seed_repeat: SeedRepeat
    validation: ValidationFinished
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., campaign_id: _Optional[str] = ..., iteration: _Optional[int] = ..., candidate: _Optional[str] = ..., campaign_started: _Optional[_Union[CampaignStarted, _Mapping]] = ..., iteration_started: _Optional[_Union[IterationStarted, _Mapping]] = ..., proposal: _Optional[_Union[ProposalMade, _Mapping]] = ..., agent_failure: _Optional[_Union[AgentFailure, _Mapping]] = ..., training_progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., training_finished: _Optional[_Union[TrainingFinished, _Mapping]] = ..., scorecard_progress: _Optional[_Union[ScorecardProgress, _Mapping]] = ..., result: _Optional[_Union[EvaluationFinished, _Mapping]] = ..., decision: _Optional[_Union[DecisionMade, _Mapping]] = ..., campaign_finished: _Optional[_Union[CampaignFinished, _Mapping]] = ..., campaign_resumed: _Optional[_Union[CampaignResumed, _Mapping]] = ..., agent_call: _Optional[_Union[AgentCall, _Mapping]] = ..., seed_repeat: _Optional[_Union[SeedRepeat, _Mapping]] = ..., validation: _Optional[_Union[ValidationFinished, _Mapping]] = ...) -> None: ...

class CampaignStarted(_message.Message):
    __slots__ = ("agent", "scorecard_sha256", "train_set_sha256", "test_set_sha256", "baseline_recipe")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    SCORECARD_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SET_SHA256_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_SHA256_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RECIPE_FIELD_NUMBER: _ClassVar[int]
    agent: str
    scorecard_sha256: str
    train_set_sha256: str
    test_set_sha256: str
    baseline_recipe: _struct_pb2.Struct
    def __init__(self, agent: _Optional[str] = ..., scorecard_sha256: _Optional[str] = ..., train_set_sha256: _Optional[str] = ..., test_set_sha256: _Optional[str] = ..., baseline_recipe: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class CampaignResumed(_message.Message):
    __slots__ = ("agent", "decided", "train_again", "reason")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_AGAIN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent: str
    decided: _containers.RepeatedScalarFieldContainer[str]
    train_again: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, agent: _Optional[str] = ..., decided: _Optional[_Iterable[str]] = ..., train_again: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class IterationStarted(_message.Message):
    __slots__ = ("iterations_budget",)
    ITERATIONS_BUDGET_FIELD_NUMBER: _ClassVar[int]
    iterations_budget: int
    def __init__(self, iterations_budget: _Optional[int] = ...) -> None: ...

class ProposalMade(_message.Message):
    __slots__ = ("agent", "hypothesis", "patch", "recipe", "recipe_sha256", "duplicate")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    agent: str
    hypothesis: str
    patch: _struct_pb2.Struct
    recipe: _struct_pb2.Struct
    recipe_sha256: str
    duplicate: bool
    def __init__(self, agent: _Optional[str] = ..., hypothesis: _Optional[str] = ..., patch: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recipe: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recipe_sha256: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class AgentFailure(_message.Message):
    __slots__ = ("agent", "kind", "reason")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent: str
    kind: AgentFailureKind
    reason: str
    def __init__(self, agent: _Optional[str] = ..., kind: _Optional[_Union[AgentFailureKind, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class AgentCall(_message.Message):
    __slots__ = ("agent", "model", "status", "prompt_tokens", "completion_tokens", "requests", "messages", "duration_seconds", "reason")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    agent: str
    model: str
    status: str
    prompt_tokens: int
    completion_tokens: int
    requests: int
    messages: int
    duration_seconds: float
    reason: str
    def __init__(self, agent: _Optional[str] = ..., model: _Optional[str] = ..., status: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., requests: _Optional[int] = ..., messages: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class SeedRepeat(_message.Message):
    __slots__ = ("repeat_of", "side", "seed")
    REPEAT_OF_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    repeat_of: str
    side: str
    seed: int
    def __init__(self, repeat_of: _Optional[str] = ..., side: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class ValidationFinished(_message.Message):
    __slots__ = ("status", "reason", "suite", "suite_sha256", "passed", "total", "failed", "result_uri")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    SUITE_SHA256_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RESULT_URI_FIELD_NUMBER: _ClassVar[int]
    status: str
    reason: str
    suite: str
    suite_sha256: str
    passed: int
    total: int
    failed: _containers.RepeatedScalarFieldContainer[str]
    result_uri: str
    def __init__(self, status: _Optional[str] = ..., reason: _Optional[str] = ..., suite: _Optional[str] = ..., suite_sha256: _Optional[str] = ..., passed: _Optional[int] = ..., total: _Optional[int] = ..., failed: _Optional[_Iterable[str]] = ..., result_uri: _Optional[str] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("epoch", "epochs_budget", "loss", "validation")
    class ValidationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_BUDGET_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    epochs_budget: int
    loss: float
    validation: _containers.ScalarMap[str, float]
    def __init__(self, epoch: _Optional[int] = ..., epochs_budget: _Optional[int] = ..., loss: _Optional[float] = ..., validation: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrainingFinished(_message.Message):
    __slots__ = ("status", "cause", "duration_seconds", "model_uri", "log_uri")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    LOG_URI_FIELD_NUMBER: _ClassVar[int]
    status: TrainingStatus
    cause: str
    duration_seconds: float
    model_uri: str
    log_uri: str
    def __init__(self, status: _Optional[_Union[TrainingStatus, str]] = ..., cause: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., model_uri: _Optional[str] = ..., log_uri: _Optional[str] = ...) -> None: ...

class ScorecardProgress(_message.Message):
    __slots__ = ("stage", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class EvaluationFinished(_message.Message):
    __slots__ = ("status", "reason", "duration_seconds", "result")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    status: EvaluationStatus
    reason: str
    duration_seconds: float
    result: _common_pb2.ScoreResult
    def __init__(self, status: _Optional[_Union[EvaluationStatus, str]] = ..., reason: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., result: _Optional[_Union[_common_pb2.ScoreResult, _Mapping]] = ...) -> None: ...

class DecisionMade(_message.Message):
    __slots__ = ("verdict", "reason", "hypothesis", "patch", "recipe_sha256", "feasible", "total_violation", "composite", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HYPOTHESIS_FIELD_NUMBER: _ClassVar[int]
    PATCH_FIELD_NUMBER: _ClassVar[int]
    RECIPE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VIOLATION_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    verdict: Verdict
    reason: str
    hypothesis: str
    patch: _struct_pb2.Struct
    recipe_sha256: str
    feasible: bool
    total_violation: float
    composite: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, verdict: _Optional[_Union[Verdict, str]] = ..., reason: _Optional[str] = ..., hypothesis: _Optional[str] = ..., patch: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., recipe_sha256: _Optional[str] = ..., feasible: _Optional[bool] = ..., total_violation: _Optional[float] = ..., composite: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class CampaignFinished(_message.Message):
    __slots__ = ("status", "reason", "duration_seconds", "feasible", "composite")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    status: CampaignStatus
    reason: str
    duration_seconds: float
    feasible: bool
    composite: float
    def __init__(self, status: _Optional[_Union[CampaignStatus, str]] = ..., reason: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., feasible: _Optional[bool] = ..., composite: _Optional[float] = ...) -> None: ...
