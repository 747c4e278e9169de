from mlipilot.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scorecard(_message.Message):
    __slots__ = ("name", "version", "description", "sha256", "spec_yaml")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    description: str
    sha256: str
    spec_yaml: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., description: _Optional[str] = ..., sha256: _Optional[str] = ..., spec_yaml: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("scorecard", "scorecard_sha256", "model_uri", "baseline_model_uri", "test_set_uri", "test_set_sha256", "artifacts_uri", "candidate")
    SCORECARD_FIELD_NUMBER: _ClassVar[int]
    SCORECARD_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MODEL_URI_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_URI_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_URI_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    scorecard: str
    scorecard_sha256: str
    model_uri: str
    baseline_model_uri: str
    test_set_uri: str
    test_set_sha256: str
    artifacts_uri: str
    candidate: str
    def __init__(self, scorecard: _Optional[str] = ..., scorecard_sha256: _Optional[str] = ..., model_uri: _Optional[str] = ..., baseline_model_uri: _Optional[str] = ..., test_set_uri: _Optional[str] = ..., test_set_sha256: _Optional[str] = ..., artifacts_uri: _Optional[str] = ..., candidate: _Optional[str] = ...) -> None: ...

class EvaluateEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: EvaluationProgress
    result: _common_pb2.ScoreResult
    def __init__(self, progress: _Optional[_Union[EvaluationProgress, _Mapping]] = ..., result: _Optional[_Union[_common_pb2.ScoreResult, _Mapping]] = ...) -> None: ...

class EvaluationProgress(_message.Message):
    __slots__ = ("stage", "done", "total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class ListScorecardsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListScorecardsResponse(_message.Message):
    __slots__ = ("scorecards",)
    SCORECARDS_FIELD_NUMBER: _ClassVar[int]
    scorecards: _containers.RepeatedCompositeFieldContainer[Scorecard]
    def __init__(self, scorecards: _Optional[_Iterable[_Union[Scorecard, _Mapping]]] = ...) -> None: ...

class GetScorecardRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
