"""Tenant administration under /admin/tenants, guarded by the admin bearer token.

The store's errors (TenantNotFound, TenantExists, InvalidParameters...) are answered
through the one error table (`service.api.status`), not translated here. Unless
DYNANOISE_ALLOW_CLEAN_OUTPUTS is set, a tenant with base_variance 0 (clean
probabilities) can be neither created nor given new parameters (422)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from starlette.responses import Response

from ..defense import DefenseParams
from ..defense.params import PARAMETER_NAMES
from ..errors import BadInput
from ..tenants import Tenant
from .deps import Services, admin_bearer, check_admin, get_services
from .schemas import ERROR_RESPONSES, ApiKey, TenantCreate, TenantCreated, TenantOut, TenantUpdate


async def require_admin(
    credentials: HTTPAuthorizationCredentials | None = Security(admin_bearer),
    services: Services = Depends(get_services),
) -> None:
    check_admin(services, credentials)


router = APIRouter(
    prefix="/admin/tenants",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={s: ERROR_RESPONSES[s] for s in (400, 401, 403, 413, 422, 503)},
)

# Fields where an explicit null means something (all models / no limit).
_NULLABLE_FIELDS = (
    "allowed_models",
    "rate_limit_per_second",
    "rows_per_second",
    "repeated_queries_per_minute",
)


def tenant_out(tenant: Tenant) -> TenantOut:
    p = tenant.params
    return TenantOut(
        name=tenant.name,
        base_variance=p.base_variance,
        lambda_scale=p.lambda_scale,
        temperature=p.temperature,
        ensemble_size=p.ensemble_size,
        sensitivity=p.sensitivity,
        noise_mode=p.noise_mode,
        output_mode=p.output_mode,
        confidence_buckets=p.confidence_buckets,
        allowed_models=sorted(tenant.allowed_models) if tenant.allowed_models is not None else None,
        rate_limit_per_second=tenant.rate_limit_per_second,
        rows_per_second=tenant.rows_per_second,
        repeated_queries_per_minute=tenant.repeated_queries_per_minute,
        version=tenant.version,
        created_at=tenant.created_at,
        updated_at=tenant.updated_at,
    )


def _check_models(services: Services, models: list[str] | None) -> None:
    unknown = sorted(set(models or ()) - set(services.registry.names()))
    if unknown:
        raise BadInput(f"unknown models in allowed_models: {unknown}")


@router.post(
    "", status_code=201, response_model=TenantCreated, responses={409: ERROR_RESPONSES[422]}
)
async def create_tenant(
    body: TenantCreate, services: Services = Depends(get_services)
) -> TenantCreated:
    _check_models(services, body.allowed_models)
    params = DefenseParams(**body.model_dump(include=set(PARAMETER_NAMES)))
    tenant, key = await run_in_threadpool(
        lambda: services.store.create(
            body.name,
            params,
            body.allowed_models,
            body.rate_limit_per_second,
            body.rows_per_second,
            body.repeated_queries_per_minute,
            allow_clean_outputs=services.settings.allow_clean_outputs,
        )
    )
    return TenantCreated(**tenant_out(tenant).model_dump(), api_key=key)


@router.get("", response_model=list[TenantOut])
async def list_tenants(services: Services = Depends(get_services)) -> list[TenantOut]:
    return [tenant_out(t) for t in await run_in_threadpool(services.store.list)]


@router.get("/{name}", response_model=TenantOut, responses={404: ERROR_RESPONSES[404]})
async def get_tenant(name: str, services: Services = Depends(get_services)) -> TenantOut:
    return tenant_out(await run_in_threadpool(services.store.get, name))


@router.patch("/{name}", response_model=TenantOut, responses={404: ERROR_RESPONSES[404]})
async def update_tenant(
    name: str, body: TenantUpdate, services: Services = Depends(get_services)
) -> TenantOut:
    changes = body.model_dump(exclude_unset=True)
    null_fields = [k for k, v in changes.items() if v is None and k not in _NULLABLE_FIELDS]
    if null_fields:
        raise BadInput(f"fields cannot be null: {null_fields}")
    if "allowed_models" in changes:
        _check_models(services, changes["allowed_models"])
    allow = services.settings.allow_clean_outputs
    tenant = await run_in_threadpool(
        lambda: services.store.update(name, allow_clean_outputs=allow, **changes)
    )
    return tenant_out(tenant)


@router.post("/{name}/rotate-key", response_model=ApiKey, responses={404: ERROR_RESPONSES[404]})
async def rotate_key(name: str, services: Services = Depends(get_services)) -> ApiKey:
    return ApiKey(api_key=await run_in_threadpool(services.store.rotate_key, name))


@router.delete(
    "/{name}", status_code=204, response_class=Response, responses={404: ERROR_RESPONSES[404]}
)
async def delete_tenant(name: str, services: Services = Depends(get_services)) -> Response:
    await run_in_threadpool(services.store.delete, name)
    return Response(status_code=204)
