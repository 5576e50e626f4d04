"""v1 REST: model listing. Prediction (`POST /v1/models/{model}/predict`) is in
`service.api.inference`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path

from ..serving import Services
from .deps import get_services
from .schemas import ERROR_RESPONSES, ModelInfo

router = APIRouter(prefix="/v1", tags=["v1"])

MODEL_PATH = Path(description="Model name, as listed by GET /v1/models.", examples=["digits"])


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
