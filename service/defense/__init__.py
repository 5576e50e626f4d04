"""The DynaNoise defense and its baselines: pure numpy, no I/O, randomness passed in."""

from .baselines import no_defense, static_gaussian, temperature_only, top1_label_only, top_k_rounded
from .dynanoise import DefenseOutput, apply_dynanoise, defend, draw_noise, noise_variance
from .noise import canonical_rows, fresh_standard_normal, keyed_seeds, keyed_standard_normal
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
    "InvalidParameters",
    "NoiseMode",
    "Sensitivity",
    "apply_dynanoise",
    "canonical_rows",
    "defend",
    "draw_noise",
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
