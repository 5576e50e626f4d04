"""The service's own exceptions; `service.api.errors` maps each to one HTTP status."""

from __future__ import annotations


class DynanoiseError(Exception):
    """Base class. ``message`` is safe to show to a client: no internals, no data."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(DynanoiseError):
    status_code = 422
    code = "bad_input"


class MalformedBody(DynanoiseError):
    status_code = 400
    code = "malformed_body"


class PayloadTooLarge(DynanoiseError):
    status_code = 413
    code = "payload_too_large"


class UnknownModel(DynanoiseError):
    status_code = 404
    code = "unknown_model"


class Unauthorized(DynanoiseError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DynanoiseError):
    status_code = 403
    code = "forbidden"


class NotFound(DynanoiseError):
    status_code = 404
    code = "not_found"


class Conflict(DynanoiseError):
    status_code = 409
    code = "conflict"


class RateLimited(DynanoiseError):
    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ServiceUnavailable(DynanoiseError):
    status_code = 503
    code = "unavailable"


class DefenseFailure(DynanoiseError):
    """The defense could not produce a valid answer: refuse rather than leak or send NaN."""

    status_code = 500
    code = "internal_error"
