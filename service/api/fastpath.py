"""A lean ASGI route to the inference endpoints, in front of FastAPI's router.

Requests that match `INFERENCE_ROUTES` are answered by `service.api.inference.serve`,
the very function FastAPI's inference routes call, so nothing is duplicated: the
route table, the key parsing, the data plane and the error table are the same.
What is skipped is FastAPI's per-request routing and dependency solving and
Starlette's middleware stack, which cost more than the whole defended inference
of a one-row request (bench/README.md). The app installs this inside
GuardMiddleware only (see ``service.app``), so the body limit and the security
headers still apply. Paths are matched relative to the app's ``root_path``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .inference import match, serve
from .status import route_path


class FastInferenceRoutes:
    """ASGI middleware: serves the inference routes without FastAPI's routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match(route_path(scope))
            if found is not None:
                request = Request(scope, receive)
                response = await serve(request, *found)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
