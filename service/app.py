"""create_app(settings): wire settings, models, tenant store, metrics and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from . import __version__
from .api import admin, repository, v1, v2
from .api.admission import AdmissionLimits, AdmissionMiddleware, ShedReason
from .api.docs import install_docs
from .api.errors import install_error_handlers
from .api.fastpath import FastInferenceRoutes
from .api.inference import inference_router
from .api.middleware import GuardMiddleware
from .api.status import status_code_of
from .metrics import UNKNOWN, ThrottledGauge
from .runtime.registry import RepositoryPoller
from .serving import DataPlane, Services, build_services
from .settings import Settings

logger = logging.getLogger("dynanoise")

DESCRIPTION = """
Inference service that puts the **DynaNoise** membership-inference defense in front of
ONNX classifiers. Every answer is `softmax((z + e) / T)` with Gaussian logit noise `e`
whose variance grows with the query's confidence; raw logits never leave the service.

Authenticate with `Authorization: Bearer <tenant API key>`. Tenants, keys and defense
parameters are managed under `/admin/tenants` with the admin token.
"""


class _ServiceApp(FastAPI):
    """FastAPI with admission control (outermost: it holds or sheds inference requests
    before anything else runs), then the guard (body limit, security headers) and the
    lean inference routes, in front of Starlette's middleware stack: the hot endpoints do
    not pay for its layers (bench/README.md), everything else passes through."""

    max_body_bytes = Settings.model_fields["max_body_bytes"].default
    admission = AdmissionLimits()  # off; create_app sets the settings' limits
    fast_inference_routes = True  # False: FastAPI's own routes only (the tests compare)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if self.fast_inference_routes:
            stack = FastInferenceRoutes(stack)
        stack = GuardMiddleware(
            stack, max_body_bytes=self.max_body_bytes, on_reject=self._count_rejection
        )
        if not self.admission.enabled:
            return stack
        services: Services = self.state.services
        return AdmissionMiddleware(
            stack,
            self.admission,
            on_shed=self._count_shed,
            on_depth=ThrottledGauge(services.metrics.admission_queue_depth).set,
        )

    def _count_shed(self, path: str, reason: ShedReason, seconds: float) -> None:
        services: Services = self.state.services
        services.metrics.observe_shed(reason)
        # 499: nginx's "client closed request", for a request dropped unanswered.
        self._count_rejection(path, 499 if reason == "client_gone" else 503, seconds)

    def _count_rejection(self, path: str, status: int, seconds: float) -> None:
        services: Services = self.state.services
        services.metrics.observe_request(UNKNOWN, UNKNOWN, _endpoint_label(path), status, seconds)


def _endpoint_label(path: str) -> str:
    """The metrics' endpoint label of a request the guard answered (a known set)."""
    for prefix, label in (("/v1/", "v1"), ("/v2/", "v2"), ("/admin/", "admin")):
        if path.startswith(prefix):
            return label
    return "other"


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings if settings is not None else Settings()
    services = services if services is not None else build_services(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        logger.info("serving models %s", ", ".join(services.registry.names()))
        poller = None
        if settings.model_poll_seconds > 0:  # every worker follows the models directory
            poller = RepositoryPoller(services.registry, settings.model_poll_seconds)
            poller.start()
        yield
        if poller is not None:
            poller.stop()
        services.store.close()

    app = _ServiceApp(
        title="dynanoise",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc with local assets: install_docs
        redoc_url=None,
        redirect_slashes=False,  # a redirect would be built from the request's own Host
        # FastAPI's own OpenTelemetry hooks look for providers on every request;
        # the service exports Prometheus metrics instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.max_body_bytes = settings.max_body_bytes
    app.admission = AdmissionLimits(
        max_in_flight=settings.admission_max_in_flight,
        max_queue=settings.admission_max_queue,
        max_queue_delay_seconds=settings.admission_max_queue_delay_ms / 1000.0,
    )
    app.state.services = services
    app.state.dataplane = DataPlane(services, status_of=status_code_of)
    install_error_handlers(app)
    install_docs(app)
    # No /metrics here: the metrics reveal per-query detail, so they are served on a
    # listener of their own (service.api.metrics_listener), never on the public port.
    for router in (inference_router(), v1.router, v2.router, admin.router, repository.router):
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: settings from DYNANOISE_* variables."""
    return create_app(Settings())
