"""Open Inference Protocol v2 (KServe / Triton REST), JSON and binary tensor data."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, Path, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from .. import __version__
from ..errors import ServiceUnavailable, UnknownModel
from ..runtime.manifest import DTYPES
from ..tenants import Tenant
from .codec import HEADER_LENGTH, OUTPUT_NAME, decode_v2, encode_v2
from .deps import (
    RequestObservation,
    Services,
    authenticate,
    authorize_model,
    bearer,
    defense_context,
    enforce_rate_limit,
    get_services,
    read_body,
)
from .schemas import (
    ERROR_RESPONSES,
    V2InferenceRequest,
    V2InferenceResponse,
    V2ModelMetadata,
    V2ServerMetadata,
    V2TensorMetadata,
)

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

MODEL_PATH = Path(description="Model name.", examples=["digits"])
EXTENSIONS = ["binary_tensor_data"]


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name="dynanoise", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", summary="Liveness")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: models loaded and tenant store reachable",
    responses={503: ERROR_RESPONSES[503]},
)
def ready(services: Services = Depends(get_services)) -> dict[str, bool]:
    if not services.store.ping():
        raise ServiceUnavailable("tenant store unreachable")
    return {"ready": True}


@router.get(
    "/models/{model}", response_model=V2ModelMetadata, responses={404: ERROR_RESPONSES[404]}
)
def model_metadata(
    model: str = MODEL_PATH, services: Services = Depends(get_services)
) -> V2ModelMetadata:
    m = services.registry.get(model).manifest
    return V2ModelMetadata(
        name=m.name,
        versions=[m.version],
        platform="onnxruntime_onnx",
        inputs=[
            V2TensorMetadata(name=m.input.name, datatype=DTYPES[m.input.dtype], shape=m.input.shape)
        ],
        outputs=[V2TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(m.labels)])],
        parameters={"labels": m.labels, "defense": "dynanoise"},
    )


@router.get("/models/{model}/ready", responses={404: ERROR_RESPONSES[404]})
def model_ready(
    model: str = MODEL_PATH, services: Services = Depends(get_services)
) -> dict[str, bool]:
    services.registry.get(model)
    return {"ready": True}


def _self_contained_schema(model: type[BaseModel]) -> dict[str, Any]:
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


_INFER_DOC = {
    "response_model": V2InferenceResponse,
    "responses": ERROR_RESPONSES,
    "summary": "Defended inference",
    "description": (
        "Open Inference Protocol v2 infer. Output tensor `probabilities` (FP32, [batch, classes]) "
        "holds the defended probabilities. Supports the binary tensor data extension both ways "
        "(`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`/`binary_data_output`)."
    ),
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _self_contained_schema(V2InferenceRequest)}},
        }
    },
}


@router.post("/models/{model}/infer", **_INFER_DOC)  # type: ignore[arg-type]
def infer(
    request: Request,
    model: str = MODEL_PATH,
    body: bytes = Depends(read_body),
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    services: Services = Depends(get_services),
) -> Response:
    return serve_infer(
        services,
        model,
        None,
        body,
        request.headers.get(HEADER_LENGTH),
        partial(authenticate, services, credentials),
    )


@router.post("/models/{model}/versions/{version}/infer", **_INFER_DOC)  # type: ignore[arg-type]
def infer_version(
    request: Request,
    version: str,
    model: str = MODEL_PATH,
    body: bytes = Depends(read_body),
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    services: Services = Depends(get_services),
) -> Response:
    return serve_infer(
        services,
        model,
        version,
        body,
        request.headers.get(HEADER_LENGTH),
        partial(authenticate, services, credentials),
    )


def serve_infer(
    services: Services,
    model: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
    identify: Callable[[], Tenant],
) -> Response:
    """The v2 infer handler proper; ``identify`` returns the caller's tenant or raises."""
    with RequestObservation(services.metrics, "v2") as observation:
        tenant = identify()
        observation.tenant = tenant.name
        enforce_rate_limit(services, tenant)
        classifier = authorize_model(services, tenant, model)
        observation.model = classifier.name
        manifest = classifier.manifest
        if version is not None and version != manifest.version:
            raise UnknownModel(f"model {model!r} has no version {version!r}")
        decoded = decode_v2(
            body,
            header_length,
            manifest.input.name,
            services.settings.max_batch,
        )
        batch = classifier.validate(decoded.batch)
        probabilities = services.predictor.predict(classifier, defense_context(tenant), batch)
        content, headers = encode_v2(manifest.name, manifest.version, decoded, probabilities)
    if headers:
        return Response(content, media_type="application/octet-stream", headers=headers)
    return Response(content, media_type="application/json")
