"""Every failure becomes a JSON error with a 4xx status (5xx only for real outages):
{"error": {"code": "...", "message": "..."}}. Messages never carry internals."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..defense import InvalidParameters
from ..errors import DynanoiseError, RateLimited
from ..tenants import StoreUnavailable

logger = logging.getLogger("dynanoise.api")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(body, status_code=status, headers=headers, media_type="application/json")


async def _dynanoise_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, DynanoiseError)
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_seconds + 0.5)))}
    return error_response(exc.status_code, exc.code, exc.message, headers)


async def _store_unavailable(_: Request, exc: Exception) -> Response:
    # The tenant database is down (admin calls, or a key not seen within the grace).
    return error_response(503, "unavailable", "tenant store unavailable, retry later")


async def _invalid_parameters(_: Request, exc: Exception) -> Response:
    return error_response(422, "invalid_parameters", str(exc))


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Name the fields and what is wrong with them, without echoing the values sent.
    problems = [
        f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg', 'invalid')}"
        for err in exc.errors()
    ]
    return error_response(422, "invalid_request", "; ".join(problems)[:1000])


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {
        400: "malformed_body",
        404: "not_found",
        405: "method_not_allowed",
        401: "unauthorized",
        403: "forbidden",
        413: "payload_too_large",
    }
    return error_response(
        exc.status_code, code.get(exc.status_code, "http_error"), str(exc.detail), exc.headers
    )


async def _unexpected(_: Request, exc: Exception) -> Response:
    # A bug, not bad input: log the type only (never request data) and answer generically.
    logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
    # GuardMiddleware, outside Starlette's ServerErrorMiddleware (service.app), adds
    # the security headers to this answer as to every other.
    return error_response(500, "internal_error", "internal error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DynanoiseError, _dynanoise_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(InvalidParameters, _invalid_parameters)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
