"""A lean ASGI route to the two hot endpoints, in front of FastAPI's router.

`POST /v1/models/{model}/predict` and `POST /v2/models/{model}[/versions/{v}]/infer`
are answered by the very handlers of ``v1`` and ``v2`` (auth, rate limit, decoding,
defense, metrics: nothing is duplicated) and errors go through the app's own
exception handlers. What is skipped is FastAPI's per-request routing and
dependency solving, which cost more than the whole defended inference of a
one-row request (bench/README.md), and Starlette's middleware stack: the app
installs this outside it, inside GuardMiddleware only (see ``service.app``), so
a bug here is answered by the app's catch-all handler, as ServerErrorMiddleware
would. Everything else, and any request this does not recognise, goes on to
FastAPI unchanged.

Small requests run inline, on the event loop, when nothing in them can block:
the caller's tenant is in this process's auth cache, it has no rate limit (the
limiter may write to the database) and micro-batching is off (a batched request
waits for others). A one-row request costs ~0.1 ms of CPU; handing it to the
thread pool and back costs about as much again, and is what bounded throughput.
Anything else (a cache miss, a rate-limited tenant, a large body) runs in the
thread pool, where a database round trip or a long ONNX run cannot stall the
other connections.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..tenants import Tenant
from . import v1, v2
from .codec import HEADER_LENGTH
from .deps import Services, authenticate, bearer, read_body

_V1 = re.compile(r"/v1/models/([^/]+)/predict")
_V2 = re.compile(r"/v2/models/([^/]+)/infer")
_V2_VERSION = re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer")
# An inline request must find its tenant's cache entry still fresh when the handler
# reads it, a few hundred microseconds later: ask for this much margin.
_CACHE_MARGIN_SECONDS = 0.05

# serve(services, path params, body, request, identify) -> Response
Serve = Callable[[Services, tuple[str, ...], bytes, Request, Callable[[], Tenant]], Response]


def _serve_v1(
    services: Services,
    params: tuple[str, ...],
    body: bytes,
    request: Request,
    identify: Callable[[], Tenant],
) -> Response:
    return v1.serve_predict(services, params[0], body, identify)


def _serve_v2(
    services: Services,
    params: tuple[str, ...],
    body: bytes,
    request: Request,
    identify: Callable[[], Tenant],
) -> Response:
    version = params[1] if len(params) > 1 else None
    header_length = request.headers.get(HEADER_LENGTH)
    return v2.serve_infer(services, params[0], version, body, header_length, identify)


class FastInferenceRoutes:
    """ASGI middleware: serves the inference endpoints without FastAPI's routing.

    Install it inside GuardMiddleware (add it first), so the body limit and the
    security headers still apply.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = _route(scope["path"])
            if route is not None:
                await self._serve(*route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, serve: Serve, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive)
        try:
            services: Services = request.app.state.services
            credentials = await bearer(request)
            body = await read_body(request)
            tenant = _inline_tenant(services, credentials, len(body))
            if tenant is not None:
                response = serve(services, params, body, request, lambda: tenant)
            else:
                identify = partial(authenticate, services, credentials)
                response = await run_in_threadpool(serve, services, params, body, request, identify)
        except Exception as exc:
            exception_handler = _exception_handler(request, exc)
            if exception_handler is None:
                raise  # no handler at all: the server answers 500
            if inspect.iscoroutinefunction(exception_handler):
                response = await exception_handler(request, exc)
            else:
                response = await run_in_threadpool(exception_handler, request, exc)
        await response(scope, receive, send)


def _inline_tenant(
    services: Services, credentials: HTTPAuthorizationCredentials | None, body_bytes: int
) -> Tenant | None:
    """The caller's tenant when this request may run on the event loop, else None."""
    if credentials is None or body_bytes > services.settings.inline_max_body_bytes:
        return None
    if services.predictor.batching:
        return None
    tenant = services.store.cached(
        credentials.credentials, min_remaining_seconds=_CACHE_MARGIN_SECONDS
    )
    if tenant is None or tenant.rate_limit_per_second is not None:
        return None
    return tenant


def _route(path: str) -> tuple[Serve, tuple[str, ...]] | None:
    if match := _V1.fullmatch(path):
        return _serve_v1, match.groups()
    if match := _V2.fullmatch(path):
        return _serve_v2, match.groups()
    if match := _V2_VERSION.fullmatch(path):
        return _serve_v2, match.groups()
    return None


def _exception_handler(request: Request, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for ``exc``, the most specific first (as Starlette's
    ExceptionMiddleware finds it), down to the catch-all ``Exception`` handler that
    ServerErrorMiddleware would use for a bug."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            handler: Callable[..., Any] = handlers[cls]
            return handler
    return None
