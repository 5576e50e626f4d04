"""Tenant domain types and errors: what the rest of the service sees.

Immutable values, no database in sight; `store.py` translates rows to these.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.defense.params import DefenseParams, InvalidParameters

_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

ALLOW_CLEAN_OUTPUTS_VARIABLE = "DYNANOISE_ALLOW_CLEAN_OUTPUTS"
"""The setting (Settings.allow_clean_outputs) that lets tenants with base_variance 0 be
created and served: for benchmarks and tests only."""


class TenantError(Exception):
    """Base of the tenant store's errors."""


class TenantNotFound(TenantError, LookupError):
    """No tenant has this name."""


class TenantExists(TenantError, ValueError):
    """A tenant with this name already exists."""


class InvalidTenantName(TenantError, ValueError):
    """The name does not match `^[a-z0-9][a-z0-9_-]{0,62}$`."""


class StoreUnavailable(TenantError, RuntimeError):
    """The database cannot be reached and no recent enough answer is cached."""


class CorruptTenant(TenantError, RuntimeError):
    """A stored tenant row holds values no tenant may have (e.g. temperature -1): a
    fault of the store, never of the caller."""


@dataclass(frozen=True, slots=True)
class TenantView:
    """What may be shown about a tenant: no key hash, no noise secret."""

    name: str
    params: DefenseParams
    allowed_models: frozenset[str] | None
    rate_limit_per_second: float | None
    version: int
    created_at: datetime
    updated_at: datetime
    key_id: str = ""
    rows_per_second: float | None = None
    repeated_queries_per_minute: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (parameters flattened, models sorted, ISO times)."""
        return {
            "name": self.name,
            "base_variance": self.params.base_variance,
            "lambda_scale": self.params.lambda_scale,
            "temperature": self.params.temperature,
            "ensemble_size": self.params.ensemble_size,
            "sensitivity": self.params.sensitivity.value,
            "noise_mode": self.params.noise_mode.value,
            "output_mode": self.params.output_mode.value,
            "confidence_buckets": self.params.confidence_buckets,
            "allowed_models": None if self.allowed_models is None else sorted(self.allowed_models),
            "rate_limit_per_second": self.rate_limit_per_second,
            "rows_per_second": self.rows_per_second,
            "repeated_queries_per_minute": self.repeated_queries_per_minute,
            "version": self.version,
            "key_id": self.key_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as the request path uses it.

    `allowed_models` None means every model; `noise_secret` seeds keyed noise
    and is kept out of repr so it cannot leak into logs. `key_id` names the
    current API key (public: it is the key's lookup handle, not its secret).
    `rate_limit_per_second` limits requests, `rows_per_second` the input rows
    they carry, `repeated_queries_per_minute` the near-duplicate queries (None:
    unlimited).
    """

    name: str
    params: DefenseParams
    allowed_models: frozenset[str] | None
    noise_secret: bytes = field(repr=False)
    rate_limit_per_second: float | None
    version: int
    created_at: datetime
    updated_at: datetime
    key_id: str = ""
    rows_per_second: float | None = None
    repeated_queries_per_minute: float | None = None

    def allows(self, model: str) -> bool:
        """Whether this tenant may query `model`."""
        return self.allowed_models is None or model in self.allowed_models

    def to_public(self) -> TenantView:
        """The listing view, without the noise secret."""
        return TenantView(
            name=self.name,
            params=self.params,
            allowed_models=self.allowed_models,
            rate_limit_per_second=self.rate_limit_per_second,
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
            key_id=self.key_id,
            rows_per_second=self.rows_per_second,
            repeated_queries_per_minute=self.repeated_queries_per_minute,
        )


def validate_name(name: object) -> str:
    """Return `name` if it is a valid tenant name, else raise InvalidTenantName."""
    if not isinstance(name, str) or _NAME_PATTERN.fullmatch(name) is None:
        raise InvalidTenantName(
            f"invalid tenant name {name!r}: use 1-63 of [a-z0-9_-], starting with [a-z0-9]"
        )
    return name


def normalize_allowed_models(models: Iterable[str] | None) -> frozenset[str] | None:
    """Validate a collection of model names; None stays None (= all models)."""
    if models is None:
        return None
    if isinstance(models, str):
        raise InvalidParameters("allowed_models must be a list of model names, not a string")
    names = frozenset(models)
    for model in names:
        if not isinstance(model, str) or not model.strip():
            raise InvalidParameters(f"invalid model name in allowed_models: {model!r}")
    return names


def validate_rate_limit(
    rate: float | None, field_name: str = "rate_limit_per_second"
) -> float | None:
    """None (unlimited) or a finite rate > 0 (requests or rows per second, repeated
    queries per minute)."""
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        raise InvalidParameters(f"{field_name} must be a finite number or null")
    if rate <= 0:
        raise InvalidParameters(f"{field_name} must be > 0")
    return float(rate)


def refuse_clean_outputs(params: DefenseParams) -> None:
    """Raise InvalidParameters when ``params`` add no noise (base_variance 0): the
    answers would be a bijection of the model's clean probabilities at any temperature
    (softmax(z / T) gives z back up to a constant). What the admin API and the CLI
    call unless ALLOW_CLEAN_OUTPUTS_VARIABLE is set. The lossy output modes add no
    noise and are not clean: they answer a many-to-one view of the output."""
    if params.releases_clean_outputs:
        raise InvalidParameters(
            "base_variance 0 would answer with the model's clean probabilities (a "
            "bijection of them at any temperature): set base_variance > 0, or run with "
            f"{ALLOW_CLEAN_OUTPUTS_VARIABLE}=true (for benchmarks and tests only)"
        )
