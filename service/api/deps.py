"""Shared request dependencies: the service container, bearer auth, body reading,
and the per-request metrics observation."""

from __future__ import annotations

import hmac
import time
from dataclasses import InitVar, dataclass, field
from types import TracebackType

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import DynanoiseError, Forbidden, ServiceUnavailable, Unauthorized
from ..inference import DefenseContext, Predictor
from ..metrics import UNKNOWN, ServiceMetrics
from ..ratelimit import RateLimiter
from ..runtime import ModelRegistry, OnnxClassifier
from ..settings import Settings
from ..tenants import StoreUnavailable, Tenant, TenantStore
from .codec import decompress

bearer = HTTPBearer(auto_error=False, description="Tenant API key: `Authorization: Bearer dn_...`")
admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="The DYNANOISE_ADMIN_TOKEN value."
)


@dataclass
class Services:
    """Everything a request handler needs, built once by create_app.

    The rate limiter shares the tenant store's database unless one is passed in.
    """

    settings: Settings
    registry: ModelRegistry
    store: TenantStore
    metrics: ServiceMetrics
    predictor: Predictor
    rate_limiter: RateLimiter = field(init=False)
    limiter: InitVar[RateLimiter | None] = None

    def __post_init__(self, limiter: RateLimiter | None) -> None:
        self.rate_limiter = (
            limiter
            if limiter is not None
            else RateLimiter(
                self.store.engine, burst_seconds=self.settings.rate_limit_burst_seconds
            )
        )


async def get_services(request: Request) -> Services:
    # async: FastAPI would run a plain function in the thread pool, a hop per request.
    services: Services = request.app.state.services
    return services


async def read_body(request: Request) -> bytes:
    """The raw body (size already capped by GuardMiddleware), decompressed if needed."""
    body = await request.body()
    limit = request.app.state.services.settings.max_body_bytes
    return decompress(body, request.headers.get("content-encoding"), limit)


def authenticate(services: Services, credentials: HTTPAuthorizationCredentials | None) -> Tenant:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    try:
        tenant = services.store.authenticate(credentials.credentials)
    except StoreUnavailable:
        raise ServiceUnavailable("tenant store unavailable, retry later") from None
    if tenant is None:
        raise Unauthorized("invalid API key")
    return tenant


def enforce_rate_limit(services: Services, tenant: Tenant) -> None:
    """429 (RateLimited) when the tenant is over its rate; free for tenants without one."""
    services.rate_limiter.enforce(tenant)


def authorize_model(services: Services, tenant: Tenant, model_name: str) -> OnnxClassifier:
    model = services.registry.get(model_name)
    if not tenant.allows(model.name):
        raise Forbidden(f"this API key may not use model {model_name!r}")
    return model


def defense_context(tenant: Tenant) -> DefenseContext:
    return DefenseContext(tenant.name, tenant.params, tenant.noise_secret)


def check_admin(services: Services, credentials: HTTPAuthorizationCredentials | None) -> None:
    token = services.settings.admin_token
    if token is None or not token.get_secret_value():
        raise Forbidden("the admin API is disabled: set DYNANOISE_ADMIN_TOKEN to enable it")
    if credentials is None or not hmac.compare_digest(
        credentials.credentials.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("invalid admin token")


class RequestObservation:
    """Times a request and counts it by status code, labelled by the tenant and model
    once they are known (UNKNOWN before that)."""

    def __init__(self, metrics: ServiceMetrics, endpoint: str) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self.tenant = UNKNOWN
        self.model = UNKNOWN
        self._started = time.perf_counter()

    def __enter__(self) -> RequestObservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            code = 200
        elif isinstance(exc, DynanoiseError):
            code = exc.status_code
        else:
            code = 500
        self._metrics.observe_request(
            self.model, self.tenant, self._endpoint, code, time.perf_counter() - self._started
        )
