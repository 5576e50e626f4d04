"""The DynaNoise defense and its baselines: pure numpy, no I/O, randomness passed in."""

from .baselines import no_defense, static_gaussian, temperature_only, top1_label_only, top_k_rounded
from .dynanoise import DefenseOutput, apply_dynanoise, defend, noise_variance
from .noise import (
    DirectNormals,
    NoiseSource,
    StandardNormalPool,
    canonical_rows,
    fresh_standard_normal,
    keyed_seeds,
    keyed_standard_normal,
)
from .params import (
    MAX_ENSEMBLE_SIZE,
    DefenseParams,
    InvalidParameters,
    NoiseMode,
    Sensitivity,
)
from .sensitivity import sensitivity

__all__ = [
    "MAX_ENSEMBLE_SIZE",
    "DefenseOutput",
    "DefenseParams",
    "DirectNormals",
    "InvalidParameters",
    "NoiseMode",
    "NoiseSource",
    "Sensitivity",
    "StandardNormalPool",
    "apply_dynanoise",
    "canonical_rows",
    "defend",
    "fresh_standard_normal",
    "keyed_seeds",
    "keyed_standard_normal",
    "no_defense",
    "noise_variance",
    "sensitivity",
    "static_gaussian",
    "temperature_only",
    "top1_label_only",
    "top_k_rounded",
]
