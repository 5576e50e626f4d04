"""v1 REST: POST /v1/models/{model}/predict, plus model listing."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from fastapi import APIRouter, Depends, Path, Response, Security
from fastapi.security import HTTPAuthorizationCredentials

from ..tenants import Tenant
from .codec import decode_v1, encode_v1
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
from .schemas import ERROR_RESPONSES, ModelInfo, V1PredictRequest, V1PredictResponse

router = APIRouter(prefix="/v1", tags=["v1"])

MODEL_PATH = Path(description="Model name, as listed by GET /v1/models.", examples=["digits"])


@router.post(
    "/models/{model}/predict",
    response_model=V1PredictResponse,
    responses=ERROR_RESPONSES,
    summary="Defended prediction",
    description=(
        "Runs the batch through the model and the tenant's DynaNoise defense. Returns "
        "defended probabilities only; raw logits never leave the service."
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": V1PredictRequest.model_json_schema()}},
        }
    },
)
def predict(
    model: str = MODEL_PATH,
    body: bytes = Depends(read_body),
    credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    services: Services = Depends(get_services),
) -> Response:
    return serve_predict(services, model, body, partial(authenticate, services, credentials))


def serve_predict(
    services: Services, model: str, body: bytes, identify: Callable[[], Tenant]
) -> Response:
    """The v1 predict handler proper; ``identify`` returns the caller's tenant or raises."""
    with RequestObservation(services.metrics, "v1") as observation:
        tenant = identify()
        observation.tenant = tenant.name
        enforce_rate_limit(services, tenant)
        classifier = authorize_model(services, tenant, model)
        observation.model = classifier.name
        batch = classifier.validate(decode_v1(body, services.settings.max_batch))
        probabilities = services.predictor.predict(classifier, defense_context(tenant), batch)
        manifest = classifier.manifest
        content = encode_v1(manifest.name, manifest.version, manifest.labels, probabilities)
    return Response(content, media_type="application/json")


@router.get("/models", response_model=list[ModelInfo], summary="Models served")
def list_models(services: Services = Depends(get_services)) -> list[ModelInfo]:
    return [model_info(services, name) for name in services.registry.names()]


@router.get("/models/{model}", response_model=ModelInfo, responses={404: ERROR_RESPONSES[404]})
def get_model(model: str = MODEL_PATH, services: Services = Depends(get_services)) -> ModelInfo:
    return model_info(services, model)


def model_info(services: Services, name: str) -> ModelInfo:
    m = services.registry.get(name).manifest
    return ModelInfo(
        name=m.name,
        version=m.version,
        description=m.description,
        input_name=m.input.name,
        input_shape=m.input.shape,
        input_dtype=m.input.dtype,
        labels=m.labels,
    )
