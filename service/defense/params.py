"""Defense parameters: the knobs a tenant sets, validated once, immutable after."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from typing import Any, NamedTuple


class Sensitivity(StrEnum):
    """How the per-query risk score R in [0, 1] is measured (1 = most confident)."""

    ENTROPY = "entropy"
    TOP1 = "top1"
    MARGIN = "margin"


class NoiseMode(StrEnum):
    """`fresh`: new noise every call (the paper). `keyed`: noise seeded by
    HMAC(tenant secret, model id + input bytes), so identical queries repeat.
    `keyed_logits`: seeded by the clean logits quantized to a step of sigma0, so
    near-duplicates (inputs whose logits barely move) share their noise too."""

    FRESH = "fresh"
    KEYED = "keyed"
    KEYED_LOGITS = "keyed_logits"


class OutputMode(StrEnum):
    """What a tenant's answers are. `dynanoise`: noisy probabilities (the paper).
    `calibrated_label`: a function of the predicted label alone (the held-out
    distribution of the true class given that label). `coarse`: a function of the
    label and a confidence bucket (``confidence_buckets`` of them, edges from
    held-out data). The two lossy modes are deterministic and add no noise."""

    DYNANOISE = "dynanoise"
    CALIBRATED_LABEL = "calibrated_label"
    COARSE = "coarse"


MAX_ENSEMBLE_SIZE = 64
MAX_CONFIDENCE_BUCKETS = 8


class InvalidParameters(ValueError):
    """A defense parameter lies outside its valid range."""


class Range(NamedTuple):
    """A numeric parameter's valid range: > low (or >= when ``inclusive``), <= high."""

    low: float
    inclusive: bool
    high: float | None = None

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.inclusive else value > self.low
        return above and (self.high is None or value <= self.high)

    def describe(self) -> str:
        low = f"{'>=' if self.inclusive else '>'} {self.low:g}"
        return low if self.high is None else f"in [{self.low:g}, {self.high:g}]"


RANGES: dict[str, Range] = {
    "base_variance": Range(0.0, inclusive=True),
    "lambda_scale": Range(0.0, inclusive=True),
    "temperature": Range(0.0, inclusive=False),
    "ensemble_size": Range(1, inclusive=True, high=MAX_ENSEMBLE_SIZE),
    "confidence_buckets": Range(1, inclusive=True, high=MAX_CONFIDENCE_BUCKETS),
}
"""The one statement of the numeric ranges: DefenseParams checks them, the admin API's
schema publishes them."""

DESCRIPTIONS: dict[str, str] = {
    "base_variance": "sigma0^2, the base noise variance.",
    "lambda_scale": "lambda: how much the sensitivity scales the variance.",
    "temperature": "T of the final softmax.",
    "ensemble_size": "M noise draws averaged.",
    "sensitivity": "How R is measured.",
    "noise_mode": (
        "fresh: new noise per call; keyed: sticky per input; keyed_logits: sticky per "
        "quantized clean output (near-duplicates share noise)."
    ),
    "output_mode": (
        "dynanoise: noisy probabilities; calibrated_label: held-out class distribution "
        "of the predicted label; coarse: the same per confidence bucket."
    ),
    "confidence_buckets": "Confidence levels of the coarse mode (1 = calibrated_label).",
}


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
    output_mode: OutputMode = OutputMode.DYNANOISE
    confidence_buckets: int = 4

    def __post_init__(self) -> None:
        # Coerce strings from JSON / the database into the enums.
        try:
            object.__setattr__(self, "sensitivity", Sensitivity(self.sensitivity))
            object.__setattr__(self, "noise_mode", NoiseMode(self.noise_mode))
            object.__setattr__(self, "output_mode", OutputMode(self.output_mode))
        except ValueError as exc:
            raise InvalidParameters(str(exc)) from None
        for name in ("base_variance", "lambda_scale", "temperature"):
            _check_finite(name, getattr(self, name))
        for name in ("ensemble_size", "confidence_buckets"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise InvalidParameters(f"{name} must be an integer")
        for name, valid in RANGES.items():
            if not valid.contains(getattr(self, name)):
                raise InvalidParameters(f"{name} must be {valid.describe()}")

    @property
    def adds_noise(self) -> bool:
        """Whether answers carry DynaNoise's noise (the lossy modes add none)."""
        return self.output_mode is OutputMode.DYNANOISE and self.base_variance > 0

    @property
    def lossy(self) -> bool:
        """Whether answers are a deterministic, many-to-one view of the clean output."""
        return self.output_mode is not OutputMode.DYNANOISE

    @property
    def releases_clean_outputs(self) -> bool:
        """DynaNoise without noise: a bijection of the clean probabilities at any T."""
        return self.output_mode is OutputMode.DYNANOISE and self.base_variance <= 0

    @property
    def buckets(self) -> int:
        """Confidence levels of the answer: 1 for calibrated_label, the knob for coarse."""
        return 1 if self.output_mode is OutputMode.CALIBRATED_LABEL else self.confidence_buckets

    def canonical(self) -> bytes:
        """Every field as ``name=value`` lines, in declaration order: equal parameters
        give equal bytes (1 and 1.0, -0.0 and 0.0 alike), different ones different bytes.

        Floats are written exactly (``float.hex``), integers in decimal, enums as their
        value. Keyed noise binds its seeds to these bytes (``noise.parameter_key``), so
        a new field is part of the encoding as soon as it is declared. Fields declared
        after the first release (``_LATER_FIELDS``) are written only when they differ
        from their defaults: the upgrade that declared them left every keyed tenant's
        draws as they were (new draws for old queries would hand out a second,
        independent answer to average).
        """
        lines = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _LATER_FIELDS and value == f.default:
                continue
            if isinstance(value, Enum):
                text = str(value.value)
            elif f.type in ("int", int):
                text = str(int(value))
            elif f.type in ("float", float):
                text = (float(value) + 0.0).hex()  # + 0.0 folds -0.0 into 0.0
            else:  # pragma: no cover - a field of a new kind needs an encoding here
                raise TypeError(f"no canonical encoding for {f.name} ({f.type})")
            lines.append(f"{f.name}={text}\n")
        return "".join(lines).encode()

    @classmethod
    def parse(cls, text: str | None) -> DefenseParams:
        """'base_variance=0.3,noise_mode=keyed' -> DefenseParams (others: defaults)."""
        values: dict[str, Any] = {}
        for item in (text or "").split(","):
            if not item.strip():
                continue
            name, _, value = (part.strip() for part in item.partition("="))
            values[name] = parse_parameter(name, value)
        return cls(**values)


_LATER_FIELDS = frozenset({"output_mode", "confidence_buckets"})

PARAMETER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(DefenseParams))
"""Every defense parameter, in declaration order (API, CLI and audit use this list)."""

_TYPES = {f.name: f.type for f in fields(DefenseParams)}


def parse_parameter(name: str, text: str) -> Any:
    """A parameter's value from text, in the type DefenseParams declares for it."""
    if name not in _TYPES:
        raise InvalidParameters(f"unknown defense parameter {name!r}; known: {PARAMETER_NAMES}")
    kind = _TYPES[name]
    try:
        if kind in ("float", float):
            return float(text)
        if kind in ("int", int):
            return int(text)
    except ValueError:
        raise InvalidParameters(f"{name} must be a number, got {text!r}") from None
    return text


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
