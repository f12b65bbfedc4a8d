from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]

class PayloadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_KIND_UNSPECIFIED: _ClassVar[PayloadKind]
    PAYLOAD_KIND_RESIDUAL_ROWS: _ClassVar[PayloadKind]
    PAYLOAD_KIND_PROJECTIONS: _ClassVar[PayloadKind]

class PromptRows(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_ROWS_UNSPECIFIED: _ClassVar[PromptRows]
    PROMPT_ROWS_NONE: _ClassVar[PromptRows]
    PROMPT_ROWS_LAST: _ClassVar[PromptRows]
    PROMPT_ROWS_ALL: _ClassVar[PromptRows]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
PAYLOAD_KIND_UNSPECIFIED: PayloadKind
PAYLOAD_KIND_RESIDUAL_ROWS: PayloadKind
PAYLOAD_KIND_PROJECTIONS: PayloadKind
PROMPT_ROWS_UNSPECIFIED: PromptRows
PROMPT_ROWS_NONE: PromptRows
PROMPT_ROWS_LAST: PromptRows
PROMPT_ROWS_ALL: PromptRows

class Tensor(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("generation_id", "model_fingerprint", "prompt_length", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    model_fingerprint: str
    prompt_length: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, generation_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., prompt_length: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ActivationChunk(_message.Message):
    __slots__ = ("generation_id", "layer", "kind", "positions", "payload", "token_ids")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    layer: int
    kind: PayloadKind
    positions: _containers.RepeatedScalarFieldContainer[int]
    payload: Tensor
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, generation_id: _Optional[str] = ..., layer: _Optional[int] = ..., kind: _Optional[_Union[PayloadKind, str]] = ..., positions: _Optional[_Iterable[int]] = ..., payload: _Optional[_Union[Tensor, _Mapping]] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Close(_message.Message):
    __slots__ = ("generation_id", "prompt_text", "response_text", "dropped_chunks", "abort_reason", "token_texts", "token_texts_start")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TEXT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TEXTS_START_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    prompt_text: str
    response_text: str
    dropped_chunks: int
    abort_reason: str
    token_texts: _containers.RepeatedScalarFieldContainer[str]
    token_texts_start: int
    def __init__(self, generation_id: _Optional[str] = ..., prompt_text: _Optional[str] = ..., response_text: _Optional[str] = ..., dropped_chunks: _Optional[int] = ..., abort_reason: _Optional[str] = ..., token_texts: _Optional[_Iterable[str]] = ..., token_texts_start: _Optional[int] = ...) -> None: ...

class MonitorRequest(_message.Message):
    __slots__ = ("open", "chunk", "close")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    open: Open
    chunk: ActivationChunk
    close: Close
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., chunk: _Optional[_Union[ActivationChunk, _Mapping]] = ..., close: _Optional[_Union[Close, _Mapping]] = ...) -> None: ...

class ScoreUpdate(_message.Message):
    __slots__ = ("generation_id", "layer", "positions", "probe_ids", "scores", "aggregates")
    class AggregatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    PROBE_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    layer: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    probe_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: Tensor
    aggregates: _containers.ScalarMap[str, float]
    def __init__(self, generation_id: _Optional[str] = ..., layer: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., probe_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Union[Tensor, _Mapping]] = ..., aggregates: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("generation_id", "probe_id", "behaviour", "score", "threshold", "early", "incident_id", "position", "bundle_version", "time_unix")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROBE_ID_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EARLY_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    probe_id: str
    behaviour: str
    score: float
    threshold: float
    early: bool
    incident_id: int
    position: int
    bundle_version: str
    time_unix: float
    def __init__(self, generation_id: _Optional[str] = ..., probe_id: _Optional[str] = ..., behaviour: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., early: _Optional[bool] = ..., incident_id: _Optional[int] = ..., position: _Optional[int] = ..., bundle_version: _Optional[str] = ..., time_unix: _Optional[float] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("probe_id", "behaviour", "score", "threshold", "flagged", "n_tokens", "aggregation", "token_selection", "uncertain", "incident_id", "member")
    PROBE_ID_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    N_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SELECTION_FIELD_NUMBER: _ClassVar[int]
    UNCERTAIN_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    probe_id: str
    behaviour: str
    score: float
    threshold: float
    flagged: bool
    n_tokens: int
    aggregation: str
    token_selection: str
    uncertain: bool
    incident_id: int
    member: str
    def __init__(self, probe_id: _Optional[str] = ..., behaviour: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., flagged: _Optional[bool] = ..., n_tokens: _Optional[int] = ..., aggregation: _Optional[str] = ..., token_selection: _Optional[str] = ..., uncertain: _Optional[bool] = ..., incident_id: _Optional[int] = ..., member: _Optional[str] = ...) -> None: ...

class GenerationSummary(_message.Message):
    __slots__ = ("generation_id", "status", "results", "alerts", "tokens_scored", "dropped_chunks", "rejected_chunks")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SCORED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    status: str
    results: _containers.RepeatedCompositeFieldContainer[ProbeResult]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    tokens_scored: int
    dropped_chunks: int
    rejected_chunks: int
    def __init__(self, generation_id: _Optional[str] = ..., status: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ProbeResult, _Mapping]]] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., tokens_scored: _Optional[int] = ..., dropped_chunks: _Optional[int] = ..., rejected_chunks: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("generation_id", "code", "code_name", "message", "layer")
    GENERATION_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    generation_id: str
    code: int
    code_name: str
    message: str
    layer: int
    def __init__(self, generation_id: _Optional[str] = ..., code: _Optional[int] = ..., code_name: _Optional[str] = ..., message: _Optional[str] = ..., layer: _Optional[int] = ...) -> None: ...

class MonitorResponse(_message.Message):
    __slots__ = ("score", "alert", "summary", "error")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    score: ScoreUpdate
    alert: Alert
    summary: GenerationSummary
    error: Error
    def __init__(self, score: _Optional[_Union[ScoreUpdate, _Mapping]] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ..., summary: _Optional[_Union[GenerationSummary, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class LayerPayload(_message.Message):
    __slots__ = ("layer", "kind", "payload")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    layer: int
    kind: PayloadKind
    payload: Tensor
    def __init__(self, layer: _Optional[int] = ..., kind: _Optional[_Union[PayloadKind, str]] = ..., payload: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("model_fingerprint", "prompt_length", "layers", "probe_ids", "token_ids")
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROBE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    model_fingerprint: str
    prompt_length: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerPayload]
    probe_ids: _containers.RepeatedScalarFieldContainer[str]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_fingerprint: _Optional[str] = ..., prompt_length: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerPayload, _Mapping]]] = ..., probe_ids: _Optional[_Iterable[str]] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ProbeScores(_message.Message):
    __slots__ = ("result", "positions", "token_scores")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SCORES_FIELD_NUMBER: _ClassVar[int]
    result: ProbeResult
    positions: _containers.RepeatedScalarFieldContainer[int]
    token_scores: Tensor
    def __init__(self, result: _Optional[_Union[ProbeResult, _Mapping]] = ..., positions: _Optional[_Iterable[int]] = ..., token_scores: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("probes",)
    PROBES_FIELD_NUMBER: _ClassVar[int]
    probes: _containers.RepeatedCompositeFieldContainer[ProbeScores]
    def __init__(self, probes: _Optional[_Iterable[_Union[ProbeScores, _Mapping]]] = ...) -> None: ...

class ListProbesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProbeInfo(_message.Message):
    __slots__ = ("id", "behaviour", "kind", "layer", "token_selection", "aggregation", "window", "alpha", "threshold", "version", "model_fingerprint", "description", "weights_sha256", "uncertain_from", "layers", "family")
    ID_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SELECTION_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    UNCERTAIN_FROM_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    id: str
    behaviour: str
    kind: str
    layer: int
    token_selection: str
    aggregation: str
    window: int
    alpha: float
    threshold: float
    version: str
    model_fingerprint: str
    description: str
    weights_sha256: str
    uncertain_from: float
    layers: _containers.RepeatedScalarFieldContainer[int]
    family: str
    def __init__(self, id: _Optional[str] = ..., behaviour: _Optional[str] = ..., kind: _Optional[str] = ..., layer: _Optional[int] = ..., token_selection: _Optional[str] = ..., aggregation: _Optional[str] = ..., window: _Optional[int] = ..., alpha: _Optional[float] = ..., threshold: _Optional[float] = ..., version: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., description: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., uncertain_from: _Optional[float] = ..., layers: _Optional[_Iterable[int]] = ..., family: _Optional[str] = ...) -> None: ...

class FamilyInfo(_message.Message):
    __slots__ = ("id", "behaviour", "member_ids", "member_types", "threshold", "uncertain_from", "version", "model_fingerprint")
    ID_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_FIELD_NUMBER: _ClassVar[int]
    MEMBER_IDS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_TYPES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNCERTAIN_FROM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    behaviour: str
    member_ids: _containers.RepeatedScalarFieldContainer[str]
    member_types: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    uncertain_from: float
    version: str
    model_fingerprint: str
    def __init__(self, id: _Optional[str] = ..., behaviour: _Optional[str] = ..., member_ids: _Optional[_Iterable[str]] = ..., member_types: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., uncertain_from: _Optional[float] = ..., version: _Optional[str] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class LayerPlan(_message.Message):
    __slots__ = ("layer", "probe_ids", "projection", "rows_required", "prompt_rows")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PROBE_IDS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    ROWS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ROWS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    probe_ids: _containers.RepeatedScalarFieldContainer[str]
    projection: Tensor
    rows_required: bool
    prompt_rows: PromptRows
    def __init__(self, layer: _Optional[int] = ..., probe_ids: _Optional[_Iterable[str]] = ..., projection: _Optional[_Union[Tensor, _Mapping]] = ..., rows_required: _Optional[bool] = ..., prompt_rows: _Optional[_Union[PromptRows, str]] = ...) -> None: ...

class ListProbesResponse(_message.Message):
    __slots__ = ("model_id", "model_fingerprint", "d_model", "probes", "layers", "plans", "max_message_bytes", "families")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    D_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    PLANS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_fingerprint: str
    d_model: int
    probes: _containers.RepeatedCompositeFieldContainer[ProbeInfo]
    layers: _containers.RepeatedScalarFieldContainer[int]
    plans: _containers.RepeatedCompositeFieldContainer[LayerPlan]
    max_message_bytes: int
    families: _containers.RepeatedCompositeFieldContainer[FamilyInfo]
    def __init__(self, model_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., d_model: _Optional[int] = ..., probes: _Optional[_Iterable[_Union[ProbeInfo, _Mapping]]] = ..., layers: _Optional[_Iterable[int]] = ..., plans: _Optional[_Iterable[_Union[LayerPlan, _Mapping]]] = ..., max_message_bytes: _Optional[int] = ..., families: _Optional[_Iterable[_Union[FamilyInfo, _Mapping]]] = ...) -> None: ...
