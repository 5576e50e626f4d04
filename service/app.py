"""create_app(settings): wire settings, models, tenant store, metrics and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import admin, health, v1, v2
from .api.deps import Services
from .api.errors import install_error_handlers
from .api.fastpath import FastInferenceRoutes
from .api.middleware import GuardMiddleware
from .inference import Predictor
from .metrics import ServiceMetrics
from .runtime import ModelRegistry
from .settings import Settings
from .tenants import TenantStore

logger = logging.getLogger("dynanoise")

DESCRIPTION = """
Inference service that puts the **DynaNoise** membership-inference defense in front of
ONNX classifiers. Every answer is `softmax((z + e) / T)` with Gaussian logit noise `e`
whose variance grows with the query's confidence; raw logits never leave the service.

Authenticate with `Authorization: Bearer <tenant API key>`. Tenants, keys and defense
parameters are managed under `/admin/tenants` with the admin token.
"""


def build_services(settings: Settings) -> Services:
    """Load every model and open (and migrate) the tenant store. Raises on a broken model."""
    registry = ModelRegistry.load(settings.models_dir, intra_op_threads=settings.onnx_threads)
    store = TenantStore(
        settings.database_url,
        cache_ttl_seconds=settings.tenant_cache_seconds,
        stale_grace_seconds=settings.stale_tenant_grace_seconds,
    )
    store.migrate()
    metrics = ServiceMetrics()
    predictor = Predictor(
        metrics,
        batching_max_delay_ms=settings.batching_max_delay_ms,
        batching_max_batch=settings.batching_max_batch,
    )
    return Services(settings, registry, store, metrics, predictor)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    services = services if services is not None else build_services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logger.info("serving models %s", ", ".join(services.registry.names()))
        yield
        services.store.close()

    app = FastAPI(
        title="dynanoise",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(FastInferenceRoutes)  # inside GuardMiddleware: added first
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes)
    for router in (v1.router, v2.router, admin.router, health.router):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings from DYNANOISE_* variables."""
    return create_app(Settings())
