"""The one table from exceptions to HTTP answers: status, error code, message.

Every place that answers or counts an error asks `status_for`: the exception
handlers, the lean inference routes, the guard middleware and the request
metrics, so a response and its metric never disagree. The most specific class
in an exception's MRO wins; anything unknown is a 500 (a bug, logged by type
only, never with request data).

Bodies follow the protocol of the route: under /v2 the Open Inference Protocol's
``{"error": "<message>"}`` (what stock clients such as tritonclient print), elsewhere
``{"error": {"code", "message"}}``. Every error also carries its code in the
``X-Dynanoise-Error-Code`` header, so a client reads it the same way on both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

from ..defense import InvalidParameters
from ..errors import (
    BadInput,
    CleanOutputsRefused,
    Conflict,
    DefenseFailure,
    DynanoiseError,
    Forbidden,
    InvalidModel,
    MalformedBody,
    NotFound,
    OutputModeUnavailable,
    PayloadTooLarge,
    RateLimited,
    RepositoryUnwritable,
    ServiceUnavailable,
    Unauthorized,
    UnknownModel,
    UnsupportedMediaType,
)
from ..tenants import (
    CorruptTenant,
    InvalidTenantName,
    StoreUnavailable,
    TenantExists,
    TenantNotFound,
)

logger = logging.getLogger("dynanoise.api")


@dataclass(frozen=True, slots=True)
class ErrorStatus:
    """How one exception is answered."""

    status: int
    code: str
    message: str
    headers: Mapping[str, str] | None = None


_TABLE: dict[type[BaseException], tuple[int, str]] = {
    BadInput: (422, "bad_input"),
    MalformedBody: (400, "malformed_body"),
    PayloadTooLarge: (413, "payload_too_large"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    UnknownModel: (404, "unknown_model"),
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    CleanOutputsRefused: (403, "clean_outputs_refused"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    OutputModeUnavailable: (409, "output_mode_unavailable"),
    RateLimited: (429, "rate_limited"),
    ServiceUnavailable: (503, "unavailable"),
    DefenseFailure: (500, "internal_error"),
    InvalidParameters: (422, "invalid_parameters"),
    InvalidTenantName: (422, "invalid_parameters"),
    TenantNotFound: (404, "not_found"),
    TenantExists: (409, "conflict"),
    StoreUnavailable: (503, "unavailable"),
    CorruptTenant: (500, "internal_error"),
    InvalidModel: (422, "invalid_model"),
    RepositoryUnwritable: (409, "repository_unwritable"),
    RequestValidationError: (422, "invalid_request"),
}
ANSWERED = (*_TABLE, HTTPException)
"""Every exception class the table answers (besides the catch-all 500)."""

_HTTP_CODES = {
    400: "malformed_body",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
_FIXED_MESSAGES = {
    StoreUnavailable: "tenant store unavailable, retry later",
    CorruptTenant: "internal error",
}


def status_for(exc: BaseException) -> ErrorStatus:
    """The status, code, client-safe message and headers that answer ``exc``."""
    if isinstance(exc, HTTPException):
        return ErrorStatus(
            exc.status_code,
            _HTTP_CODES.get(exc.status_code, "http_error"),
            str(exc.detail),
            exc.headers,
        )
    for cls in type(exc).__mro__:
        if cls in _TABLE:
            status, code = _TABLE[cls]
            return ErrorStatus(status, code, _message(exc, cls), _headers(exc))
    return ErrorStatus(500, "internal_error", "internal error")


# Messages quote request strings through `errors.echo` (64 characters); this bounds
# whatever a message still carries, e.g. a name quoted where echo is not used.
_MAX_MESSAGE_CHARS = 1000


def _message(exc: BaseException, cls: type[BaseException]) -> str:
    if cls in _FIXED_MESSAGES:
        return _FIXED_MESSAGES[cls]
    if isinstance(exc, DynanoiseError):
        message = exc.message
        if len(message) > _MAX_MESSAGE_CHARS:
            return message[:_MAX_MESSAGE_CHARS] + "..."
        return message
    if isinstance(exc, RequestValidationError):
        # Name the fields and what is wrong with them, without echoing the values sent.
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: "
            f"{err.get('msg', 'invalid')}"
            for err in exc.errors()
        ]
        return "; ".join(problems)[:_MAX_MESSAGE_CHARS]
    return str(exc)


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(max(1, round(exc.retry_after_seconds + 0.5)))}
    return None


OK = 200
INTERNAL_ERROR = 500


def status_code_of(exc: BaseException | None) -> int:
    """The status a request is counted under: 200 without an exception."""
    return OK if exc is None else status_for(exc).status


ERROR_CODE_HEADER = "X-Dynanoise-Error-Code"
"""The machine-readable code of every error answer (the v2 body has room for none)."""

_V2_PREFIX = "/v2"


def route_path(scope: Scope) -> str:
    """The request's path below the app's root_path (as Starlette's router matches it)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def is_v2_path(path: str) -> bool:
    """Whether ``path`` (relative to the app's root) is an Open Inference Protocol route."""
    return path == _V2_PREFIX or path.startswith(_V2_PREFIX + "/")


def error_body(status: ErrorStatus, *, v2: bool = False) -> bytes:
    """``{"error": "<message>"}`` for v2 (the protocol's shape), else with the code."""
    if v2:
        return orjson.dumps({"error": status.message})
    return orjson.dumps({"error": {"code": status.code, "message": status.message}})


def error_headers(status: ErrorStatus) -> dict[str, str]:
    """The headers of an error answer: the table's (Retry-After) and the code."""
    return {**(status.headers or {}), ERROR_CODE_HEADER: status.code}


def error_response(exc: BaseException, path: str = "") -> Response:
    """The JSON answer to ``exc`` on a request for ``path`` (relative to the app's
    root; its prefix picks the body's shape). A 500 (a bug or a store fault) is logged
    with its traceback (never request data); a 503 is an expected outage and is not."""
    status = status_for(exc)
    if status.status == INTERNAL_ERROR:
        logger.error("%s answered %d", type(exc).__name__, status.status, exc_info=exc)
    return Response(
        error_body(status, v2=is_v2_path(path)),
        status_code=status.status,
        headers=error_headers(status),
        media_type="application/json",
    )
