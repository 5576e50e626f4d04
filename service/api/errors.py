"""Every failure becomes a JSON error with the status of the one error table
(`service.api.status`): ``{"error": "<message>"}`` under /v2 (the Open Inference
Protocol), ``{"error": {"code", "message"}}`` elsewhere, the code in the
``X-Dynanoise-Error-Code`` header either way; messages never carry internals."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .status import ANSWERED, error_response, route_path


async def _answer(request: Request, exc: Exception) -> Response:
    return error_response(exc, route_path(request.scope))


def install_error_handlers(app: FastAPI) -> None:
    """The table's classes are answered where they are raised (Starlette's
    ExceptionMiddleware); anything else reaches the catch-all as a bug (a 500)."""
    for cls in (*ANSWERED, Exception):
        app.add_exception_handler(cls, _answer)
