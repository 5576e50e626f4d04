"""The Open Inference Protocol's model repository extension under /v2/repository,
guarded by the admin bearer token: list the models directory, (re)load a model from
it, unload one. The registry (`service.runtime.registry`) does the work; a model
that cannot be loaded is refused with its one-line reason (422, `InvalidModel`)
while the version already served, if any, keeps serving."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..runtime.registry import ModelState
from .admin import require_admin
from .deps import Services, get_services
from .schemas import V2_ERROR_RESPONSES

router = APIRouter(
    prefix="/v2/repository",
    tags=["v2 model repository (admin)"],
    dependencies=[Depends(require_admin)],
    responses={s: V2_ERROR_RESPONSES[s] for s in (400, 401, 403, 413)},
)

MODEL_PATH = Path(description="Model name: the directory `<models_dir>/<name>/`.")


def _error(status: int, description: str) -> dict[str, Any]:
    return {**V2_ERROR_RESPONSES[status], "description": description}


_NO_SUCH_MODEL = _error(404, "No model of this name in the repository (or served, to unload).")
_UNWRITABLE = _error(
    409,
    "The models directory is read-only: the marker that other processes follow "
    "cannot be written or removed.",
)
_BROKEN = _error(
    422, "The model cannot be served: its one-line reason (the old version, if any, keeps serving)."
)


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="Only the models that are ready.")


class RepositoryModel(BaseModel):
    name: str
    version: str | None = Field(description="The version served (null when none is).")
    state: ModelState
    reason: str = Field(description="Why the model is not served, or not in its latest form.")


class RepositoryChangeRequest(BaseModel):
    parameters: dict[str, Any] | None = Field(None, description="Accepted and ignored.")


class ModelLoaded(BaseModel):
    name: str
    load: bool = True


class ModelUnloaded(BaseModel):
    name: str
    unload: bool = True


@router.post("/index", response_model=list[RepositoryModel], summary="Models in the repository")
async def index(
    body: RepositoryIndexRequest | None = Body(None),
    services: Services = Depends(get_services),
) -> list[RepositoryModel]:
    entries = await run_in_threadpool(services.registry.index)
    return [
        RepositoryModel(name=e.name, version=e.version, state=e.state, reason=e.reason)
        for e in entries
        if not (body is not None and body.ready and e.state is not ModelState.READY)
    ]


@router.post(
    "/models/{model}/load",
    response_model=ModelLoaded,
    summary="(Re)load a model from its directory",
    responses={404: _NO_SUCH_MODEL, 409: _UNWRITABLE, 422: _BROKEN},
)
async def load(
    model: str = MODEL_PATH,
    request: RepositoryChangeRequest | None = Body(None),
    services: Services = Depends(get_services),
) -> ModelLoaded:
    await run_in_threadpool(services.registry.load_model, model)
    return ModelLoaded(name=model)


@router.post(
    "/models/{model}/unload",
    response_model=ModelUnloaded,
    summary="Stop serving a model",
    responses={404: _NO_SUCH_MODEL, 409: _UNWRITABLE},
)
async def unload(
    model: str = MODEL_PATH,
    request: RepositoryChangeRequest | None = Body(None),
    services: Services = Depends(get_services),
) -> ModelUnloaded:
    await run_in_threadpool(services.registry.unload_model, model)
    return ModelUnloaded(name=model)
