"""The DynaNoise defense and its baselines: pure numpy, no I/O, randomness passed in."""

from .baselines import no_defense, static_gaussian, temperature_only, top1_label_only, top_k_rounded
from .calibrated import CalibrationMissing, OutputCalibration, top1_probability
from .dynanoise import DefenseOutput, apply_dynanoise, defend, defend_from, noise_variance
from .noise import (
    DirectNormals,
    NoiseSource,
    StandardNormalPool,
    canonical_rows,
    fresh_standard_normal,
    keyed_seeds,
    keyed_standard_normal,
    quantized_logits,
)
from .params import (
    MAX_CONFIDENCE_BUCKETS,
    MAX_ENSEMBLE_SIZE,
    DefenseParams,
    InvalidParameters,
    NoiseMode,
    OutputMode,
    Sensitivity,
)
from .sensitivity import sensitivity

__all__ = [
    "MAX_CONFIDENCE_BUCKETS",
    "MAX_ENSEMBLE_SIZE",
    "CalibrationMissing",
    "DefenseOutput",
    "DefenseParams",
    "DirectNormals",
    "InvalidParameters",
    "NoiseMode",
    "NoiseSource",
    "OutputCalibration",
    "OutputMode",
    "Sensitivity",
    "StandardNormalPool",
    "apply_dynanoise",
    "canonical_rows",
    "defend",
    "defend_from",
    "fresh_standard_normal",
    "keyed_seeds",
    "keyed_standard_normal",
    "no_defense",
    "noise_variance",
    "quantized_logits",
    "sensitivity",
    "static_gaussian",
    "temperature_only",
    "top1_label_only",
    "top1_probability",
    "top_k_rounded",
]
