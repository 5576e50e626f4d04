"""Every failure becomes a JSON error, {"error": {"code", "message"}}, with the status
of the one error table (`service.api.status`); messages never carry internals."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .status import ANSWERED, error_response


async def _answer(_: Request, exc: Exception) -> Response:
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    """The table's classes are answered where they are raised (Starlette's
    ExceptionMiddleware); anything else reaches the catch-all as a bug (a 500)."""
    for cls in (*ANSWERED, Exception):
        app.add_exception_handler(cls, _answer)
