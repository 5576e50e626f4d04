"""Pydantic schemas of the public protocol, for validation (admin) and for the
OpenAPI documentation (predict/infer bodies are parsed with orjson for speed)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..defense import DefenseParams, NoiseMode, OutputMode, Sensitivity
from ..defense.params import DESCRIPTIONS, RANGES

# ---------------------------------------------------------------- v1

V1_EXAMPLE: dict[str, Any] = {"instances": [[0.0] * 64]}


class V1PredictRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [V1_EXAMPLE]})

    instances: list[Any] = Field(
        description="A batch of inputs, each shaped like the model's input (see GET /v1/models/{model})."
    )


class V1Prediction(BaseModel):
    label: str = Field(description="The defended top-1 class label.")
    probabilities: list[float] = Field(
        description="Defended probabilities, in the model's label order."
    )


class V1PredictResponse(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "digits",
                    "model_version": "1",
                    "predictions": [
                        {
                            "label": "0",
                            "probabilities": [
                                0.19,
                                0.09,
                                0.08,
                                0.09,
                                0.09,
                                0.09,
                                0.1,
                                0.09,
                                0.09,
                                0.09,
                            ],
                        }
                    ],
                }
            ]
        },
    )

    model: str
    model_version: str
    predictions: list[V1Prediction]


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    description: str
    input_name: str
    input_shape: list[int]
    input_dtype: str
    labels: list[str]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class V2ErrorResponse(BaseModel):
    """The Open Inference Protocol's error body; the code is in X-Dynanoise-Error-Code."""

    error: str


_ERROR_DESCRIPTIONS: dict[int | str, str] = {
    400: "Malformed body (not JSON, bad encoding).",
    401: "Missing or invalid API key.",
    403: "The key may not use this model, or its tenant adds no noise (base_variance 0 "
    "without DYNANOISE_ALLOW_CLEAN_OUTPUTS).",
    404: "Unknown model.",
    409: "The tenant's output mode (calibrated_label, coarse) needs a calibration "
    "block in the model's manifest, and this model has none.",
    413: "Body over DYNANOISE_MAX_BODY_BYTES.",
    422: "Wrong shape or dtype, non-finite values, empty batch or batch over DYNANOISE_MAX_BATCH.",
    429: "Rate limit of requests or of input rows exceeded (see Retry-After).",
    503: "Tenant store unavailable.",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in _ERROR_DESCRIPTIONS.items()
}
"""Error responses of v1 and /admin: {"error": {"code", "message"}}."""

V2_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": V2ErrorResponse, "description": description}
    for status, description in _ERROR_DESCRIPTIONS.items()
}
"""Error responses of /v2 routes: {"error": "<message>"} (the protocol's shape)."""

# ---------------------------------------------------------------- v2


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(examples=["FP32"])
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(default=None, description="Row-major values, flat or nested.")


class V2RequestedOutput(BaseModel):
    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Any] | None = None


class V2InferenceRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}
                    ],
                    "outputs": [{"name": "probabilities"}],
                }
            ]
        }
    )

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


class V2InferenceResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# ---------------------------------------------------------------- admin


_DEFAULTS = DefenseParams()


def _parameter(name: str, *, optional: bool = False) -> Any:
    """The Field of defense parameter ``name``: its default (DefenseParams'), its range
    (RANGES) and its description, stated once in service.defense.params. The range is
    published here for the docs; DefenseParams itself enforces it."""
    valid = RANGES.get(name)
    bounds: dict[str, Any] = {}
    if valid is not None:
        bounds["ge" if valid.inclusive else "gt"] = valid.low
        if valid.high is not None:
            bounds["le"] = valid.high
    default = None if optional else getattr(_DEFAULTS, name)
    return Field(default, description=DESCRIPTIONS[name], **bounds)


_REPEATED_QUERIES = (
    "Near-duplicate queries per minute (repeats of a row, exact or "
    "imperceptibly changed); null = no cap."
)


class _DefenseFields(BaseModel):
    base_variance: float = _parameter("base_variance")
    lambda_scale: float = _parameter("lambda_scale")
    temperature: float = _parameter("temperature")
    ensemble_size: int = _parameter("ensemble_size")
    sensitivity: Sensitivity = _parameter("sensitivity")
    noise_mode: NoiseMode = _parameter("noise_mode")
    output_mode: OutputMode = _parameter("output_mode")
    confidence_buckets: int = _parameter("confidence_buckets")
    allowed_models: list[str] | None = Field(
        None, description="Models this tenant may use; null = all."
    )
    rate_limit_per_second: float | None = Field(
        None, gt=0, description="Requests per second; null = unlimited."
    )
    rows_per_second: float | None = Field(
        None,
        gt=0,
        description="Input rows per second, summed over requests (a request of n rows "
        "costs n); a request of more rows than one second's worth is refused; "
        "null = unlimited.",
    )
    repeated_queries_per_minute: float | None = Field(None, gt=0, description=_REPEATED_QUERIES)


class TenantCreate(_DefenseFields):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "clinic-a", "noise_mode": "keyed", "allowed_models": ["digits"]}]
        },
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="Unique tenant name.")


class TenantUpdate(BaseModel):
    """Only the fields sent change."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"base_variance": 0.5, "noise_mode": "keyed"}]},
    )

    base_variance: float | None = _parameter("base_variance", optional=True)
    lambda_scale: float | None = _parameter("lambda_scale", optional=True)
    temperature: float | None = _parameter("temperature", optional=True)
    ensemble_size: int | None = _parameter("ensemble_size", optional=True)
    sensitivity: Sensitivity | None = _parameter("sensitivity", optional=True)
    noise_mode: NoiseMode | None = _parameter("noise_mode", optional=True)
    output_mode: OutputMode | None = _parameter("output_mode", optional=True)
    confidence_buckets: int | None = _parameter("confidence_buckets", optional=True)
    allowed_models: list[str] | None = None
    rate_limit_per_second: float | None = Field(None, gt=0)
    rows_per_second: float | None = Field(None, gt=0)
    repeated_queries_per_minute: float | None = Field(None, gt=0, description=_REPEATED_QUERIES)


class TenantOut(BaseModel):
    """A tenant as the admin API shows it: never the key hash or the noise secret."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    base_variance: float
    lambda_scale: float
    temperature: float
    ensemble_size: int
    sensitivity: Sensitivity
    noise_mode: NoiseMode
    output_mode: OutputMode
    confidence_buckets: int
    allowed_models: list[str] | None
    rate_limit_per_second: float | None
    rows_per_second: float | None
    repeated_queries_per_minute: float | None
    version: int
    created_at: datetime
    updated_at: datetime


class TenantCreated(TenantOut):
    api_key: str = Field(description="Shown once: store it now, it cannot be read back.")


class ApiKey(BaseModel):
    api_key: str = Field(description="Shown once. The previous key stopped working.")


def self_contained_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place: a `$ref` to
    components would dangle for models no route returns (V2RequestedOutput), and
    schema-driven clients (schemathesis) then drop the whole request body."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
