"""The service's own exceptions: what went wrong, in the caller's words.

They carry no HTTP status: `service.api.status` maps each class to one status and
error code, for every endpoint, the metrics and the middleware alike.
"""

from __future__ import annotations

ECHO_LIMIT = 64
"""The most characters of a request's own string an error message quotes back."""


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as an error message quotes it: its repr, cut to ``limit`` characters
    and marked with "...", so a client's 60,000-character name is not sent back whole."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class DynanoiseError(Exception):
    """Base class. ``message`` is safe to show to a client: no internals, no data."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(DynanoiseError):
    """The request is well-formed but its content cannot be served (shape, dtype, NaN)."""


class MalformedBody(DynanoiseError):
    """The body cannot be parsed (not JSON, not valid gzip)."""


class UnsupportedMediaType(DynanoiseError):
    """The body's Content-Type is not one the endpoint's protocol is sent as."""


class PayloadTooLarge(DynanoiseError):
    """The body (or its decompressed form) is over the size limit."""


class UnknownModel(DynanoiseError):
    """No model (or model version) of this name is served."""


class Unauthorized(DynanoiseError):
    """No API key, or one that matches no tenant."""


class Forbidden(DynanoiseError):
    """The key is valid but may not do this (a model outside its list, admin disabled)."""


class CleanOutputsRefused(DynanoiseError):
    """The tenant's defense adds no noise (base_variance 0): its answers would be a
    bijection of the model's clean probabilities, which this server does not serve
    unless DYNANOISE_ALLOW_CLEAN_OUTPUTS is set. The tenant's configuration is at
    fault, not the request; its operator must raise base_variance."""


class OutputModeUnavailable(DynanoiseError):
    """The tenant's output mode (calibrated_label, coarse) answers from held-out tables
    the model's manifest does not carry. The tenant's configuration and the model
    disagree, not the request: the operator must calibrate the model or change the mode."""


class NotFound(DynanoiseError):
    """The named resource does not exist."""


class Conflict(DynanoiseError):
    """The resource exists already."""


class RateLimited(DynanoiseError):
    """The tenant is over its rate; retry after ``retry_after_seconds``."""

    def __init__(self, message: str, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ServiceUnavailable(DynanoiseError):
    """A dependency (the tenant store) is down: retry later."""


class DefenseFailure(DynanoiseError):
    """The defense could not produce a valid answer: refuse rather than leak or send NaN."""


class InvalidModel(DynanoiseError):
    """A model directory cannot be served (bad manifest, unloadable or inconsistent
    ONNX file); the message is the one-line reason."""


class RepositoryUnwritable(DynanoiseError):
    """The model repository cannot be changed (its directory is read-only), so other
    processes could not follow a load or unload."""
