"""Defense parameters: the knobs a tenant sets, validated once, immutable after."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Sensitivity(StrEnum):
    """How the per-query risk score R in [0, 1] is measured (1 = most confident)."""

    ENTROPY = "entropy"
    TOP1 = "top1"
    MARGIN = "margin"


class NoiseMode(StrEnum):
    """`fresh`: new noise every call (the paper). `keyed`: noise seeded by
    HMAC(tenant secret, model id + input), so identical queries repeat."""

    FRESH = "fresh"
    KEYED = "keyed"


MAX_ENSEMBLE_SIZE = 64


class InvalidParameters(ValueError):
    """A defense parameter lies outside its valid range."""


@dataclass(frozen=True, slots=True)
class DefenseParams:
    """DynaNoise parameters, named as in the spec.

    base_variance is sigma0^2, lambda_scale is lambda, temperature is T and
    ensemble_size is M. Defaults are the paper's CIFAR-10 setting.
    """

    base_variance: float = 0.3
    lambda_scale: float = 2.0
    temperature: float = 10.0
    ensemble_size: int = 1
    sensitivity: Sensitivity = Sensitivity.ENTROPY
    noise_mode: NoiseMode = NoiseMode.FRESH

    def __post_init__(self) -> None:
        # Coerce strings from JSON / the database into the enums.
        try:
            object.__setattr__(self, "sensitivity", Sensitivity(self.sensitivity))
            object.__setattr__(self, "noise_mode", NoiseMode(self.noise_mode))
        except ValueError as exc:
            raise InvalidParameters(str(exc)) from None
        _check_finite("base_variance", self.base_variance)
        _check_finite("lambda_scale", self.lambda_scale)
        _check_finite("temperature", self.temperature)
        if self.base_variance < 0:
            raise InvalidParameters("base_variance must be >= 0")
        if self.lambda_scale < 0:
            raise InvalidParameters("lambda_scale must be >= 0")
        if self.temperature <= 0:
            raise InvalidParameters("temperature must be > 0")
        if isinstance(self.ensemble_size, bool) or int(self.ensemble_size) != self.ensemble_size:
            raise InvalidParameters("ensemble_size must be an integer")
        if not 1 <= self.ensemble_size <= MAX_ENSEMBLE_SIZE:
            raise InvalidParameters(f"ensemble_size must be in [1, {MAX_ENSEMBLE_SIZE}]")

    @property
    def adds_noise(self) -> bool:
        return self.base_variance > 0


def _check_finite(name: str, value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or value != value
        or value
        in (
            float("inf"),
            float("-inf"),
        )
    ):
        raise InvalidParameters(f"{name} must be a finite number")
