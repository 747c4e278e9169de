from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConstraintOutcome(_message.Message):
    __slots__ = ("metric", "value", "op", "threshold", "unit", "relative_margin", "normalized_violation")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_MARGIN_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_VIOLATION_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    op: str
    threshold: float
    unit: str
    relative_margin: float
    normalized_violation: float
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., op: _Optional[str] = ..., threshold: _Optional[float] = ..., unit: _Optional[str] = ..., relative_margin: _Optional[float] = ..., normalized_violation: _Optional[float] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("scorecard", "scorecard_sha256", "test_set_sha256", "metrics", "constraints", "feasible", "total_violation", "composite", "hardware", "stage_seconds", "details")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class HardwareEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StageSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCORECARD_FIELD_NUMBER: _ClassVar[int]
    SCORECARD_SHA256_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_VIOLATION_FIELD_NUMBER: _ClassVar[int]
    COMPOSITE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    STAGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    scorecard: str
    scorecard_sha256: str
    test_set_sha256: str
    metrics: _containers.ScalarMap[str, float]
    constraints: _containers.RepeatedCompositeFieldContainer[ConstraintOutcome]
    feasible: bool
    total_violation: float
    composite: float
    hardware: _containers.ScalarMap[str, str]
    stage_seconds: _containers.ScalarMap[str, float]
    details: _struct_pb2.Struct
    def __init__(self, scorecard: _Optional[str] = ..., scorecard_sha256: _Optional[str] = ..., test_set_sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., constraints: _Optional[_Iterable[_Union[ConstraintOutcome, _Mapping]]] = ..., feasible: _Optional[bool] = ..., total_violation: _Optional[float] = ..., composite: _Optional[float] = ..., hardware: _Optional[_Mapping[str, str]] = ..., stage_seconds: _Optional[_Mapping[str, float]] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
