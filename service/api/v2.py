"""Open Inference Protocol v2 (KServe / Triton REST): server and model metadata, health.

Inference (`/v2/models/{model}[/versions/{v}]/infer`) is in `service.api.inference`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query

from .. import __version__
from ..errors import ServiceUnavailable
from ..protocol import MANIFEST_TO_V2, OUTPUT_NAME
from ..serving import Services
from .deps import get_services
from .schemas import V2_ERROR_RESPONSES, V2ModelMetadata, V2ServerMetadata, V2TensorMetadata

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

MODEL_PATH = Path(description="Model name.", examples=["digits"])
EXTENSIONS = ["binary_tensor_data"]


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name="dynanoise", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    # async: answered on the event loop, never queued behind threads that wait on
    # the database (or on anything else).
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: models loaded and tenant store reachable",
    responses={503: V2_ERROR_RESPONSES[503]},
)
def ready(
    allow_stale: bool = Query(
        False,
        description="Also ready while the tenant store has been unreachable for less than "
        "DYNANOISE_STALE_TENANT_GRACE_SECONDS (known tenants are served from the cache): "
        "the Kubernetes probe, so that a database blip does not take every pod out of the "
        "Service at once. A lost or replaced SQLite file is never ready.",
    ),
    services: Services = Depends(get_services),
) -> dict[str, bool]:
    store = services.store
    if store.ping():
        return {"ready": True}
    if allow_stale and store.within_stale_grace() and store.file_intact():
        return {"ready": True}
    raise ServiceUnavailable("tenant store unreachable")


@router.get(
    "/models/{model}", response_model=V2ModelMetadata, responses={404: V2_ERROR_RESPONSES[404]}
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
            V2TensorMetadata(
                name=m.input.name, datatype=MANIFEST_TO_V2[m.input.dtype], shape=m.input.shape
            )
        ],
        outputs=[V2TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(m.labels)])],
        parameters={"labels": m.labels, "defense": "dynanoise"},
    )


@router.get("/models/{model}/ready", responses={404: V2_ERROR_RESPONSES[404]})
def model_ready(
    model: str = MODEL_PATH, services: Services = Depends(get_services)
) -> dict[str, bool]:
    services.registry.get(model)
    return {"ready": True}
