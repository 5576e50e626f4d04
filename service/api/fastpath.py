"""A lean ASGI route to the two hot endpoints, in front of FastAPI's router.

`POST /v1/models/{model}/predict` and `POST /v2/models/{model}[/versions/{v}]/infer`
are answered by the very handler functions of ``v1`` and ``v2`` (auth, rate limit,
decoding, defense, metrics: nothing is duplicated), called here with the same
arguments FastAPI would pass them, and errors go through the app's own exception
handlers. What is skipped is FastAPI's per-request routing and dependency
solving, which cost more than the whole defended inference of a one-row request
(bench/README.md). Everything else, and any request this does not recognise,
goes on to FastAPI unchanged.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import v1, v2
from .deps import bearer, read_body

_V1 = re.compile(r"/v1/models/([^/]+)/predict")
_V2 = re.compile(r"/v2/models/([^/]+)/infer")
_V2_VERSION = re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer")

Handler = Callable[..., Response]


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
                await self._serve(route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: tuple[Handler, dict[str, str]], scope: Scope, receive: Receive, send: Send
    ) -> None:
        handler, path_params = route
        request = Request(scope, receive)
        try:
            services = request.app.state.services
            credentials = await bearer(request)
            body = await read_body(request)
            arguments: dict[str, Any] = {
                **path_params,
                "body": body,
                "credentials": credentials,
                "services": services,
            }
            if handler is not v1.predict:
                arguments["request"] = request
            # The handlers may wait on the tenant database: keep them off the event loop.
            response = await run_in_threadpool(partial(handler, **arguments))
        except Exception as exc:
            exception_handler = _exception_handler(request, exc)
            if exception_handler is None:
                raise  # a bug: ServerErrorMiddleware answers 500, as for any route
            if inspect.iscoroutinefunction(exception_handler):
                response = await exception_handler(request, exc)
            else:
                response = await run_in_threadpool(exception_handler, request, exc)
        await response(scope, receive, send)


def _route(path: str) -> tuple[Handler, dict[str, str]] | None:
    if match := _V1.fullmatch(path):
        return v1.predict, {"model": match.group(1)}
    if match := _V2.fullmatch(path):
        return v2.infer, {"model": match.group(1)}
    if match := _V2_VERSION.fullmatch(path):
        return v2.infer_version, {"model": match.group(1), "version": match.group(2)}
    return None


def _exception_handler(request: Request, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for ``exc`` (as Starlette's ExceptionMiddleware finds it),
    leaving the catch-all ``Exception`` handler to ServerErrorMiddleware."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            handler: Callable[..., Any] = handlers[cls]
            return handler
    return None
