"""DynaNoise (Forough & Haddadi 2025): entropy-scaled Gaussian logit noise, then a
temperature softmax. Pure functions: arrays in, arrays out, randomness passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ._softmax import FloatArray, softmax
from .noise import fresh_standard_normal, keyed_seeds, keyed_standard_normal
from .params import DefenseParams, NoiseMode
from .sensitivity import sensitivity


@dataclass(frozen=True, slots=True)
class DefenseOutput:
    """What the defense returns: the only probabilities that may leave the service,
    and per-row diagnostics for metrics (never the clean logits)."""

    probabilities: NDArray[np.float32]  # (n, k), rows sum to 1
    sensitivity: NDArray[np.float64]  # R per row, in [0, 1]
    noise_std: NDArray[np.float64]  # sigma per row


def noise_variance(sensitivity_score: FloatArray, params: DefenseParams) -> NDArray[np.float64]:
    """sigma^2 = sigma0^2 * (1 + lambda * R): the variance, not the std, is scaled."""
    risk = np.asarray(sensitivity_score, dtype=np.float64)
    return params.base_variance * (1.0 + params.lambda_scale * risk)


def apply_dynanoise(
    logits: FloatArray,
    params: DefenseParams,
    standard_normal: FloatArray | None,
) -> DefenseOutput:
    """Defend a batch of clean logits z (n, k).

    R = sensitivity(z); sigma = sqrt(sigma0^2 (1 + lambda R));
    for m = 1..M: out_m = softmax((z + sigma * e_m) / T), e_m ~ N(0, I_k);
    output = mean_m out_m (probability space).

    ``standard_normal`` holds the draws e, shape (n, M, k); it may be None only
    when base_variance is 0 (temperature smoothing alone).
    """
    z = np.asarray(logits, dtype=np.float64)
    risk = sensitivity(z, params.sensitivity)
    std = np.sqrt(noise_variance(risk, params))
    if params.adds_noise:
        if standard_normal is None:
            raise ValueError("standard_normal draws are required when base_variance > 0")
        noisy = z[:, None, :] + std[:, None, None] * standard_normal  # (n, M, k)
    else:
        noisy = np.broadcast_to(z[:, None, :], (z.shape[0], params.ensemble_size, z.shape[1]))
    probabilities = softmax(noisy / params.temperature).mean(axis=1)
    return DefenseOutput(probabilities.astype(np.float32), risk, std)


def draw_noise(
    params: DefenseParams,
    n: int,
    n_classes: int,
    *,
    rng: np.random.Generator | None = None,
    seeds: NDArray[np.uint64] | None = None,
) -> NDArray[np.float64] | None:
    """The N(0, 1) draws DynaNoise needs, from the source the noise mode names."""
    if not params.adds_noise:
        return None
    if params.noise_mode is NoiseMode.KEYED:
        if seeds is None:
            raise ValueError("keyed noise needs per-row seeds (see keyed_seeds)")
        return keyed_standard_normal(seeds, params.ensemble_size, n_classes)
    if rng is None:
        raise ValueError("fresh noise needs a numpy Generator")
    return fresh_standard_normal(rng, n, params.ensemble_size, n_classes)


def defend(
    logits: FloatArray,
    params: DefenseParams,
    *,
    rng: np.random.Generator | None = None,
    secret: bytes | None = None,
    model_id: str = "",
    inputs: NDArray[np.generic] | None = None,
) -> DefenseOutput:
    """Convenience wrapper: draw the noise the mode asks for, then apply DynaNoise.

    Keyed mode needs ``secret``, ``model_id`` and the raw ``inputs`` that produced
    the logits; fresh mode needs ``rng``.
    """
    z = np.asarray(logits)
    seeds = None
    if params.adds_noise and params.noise_mode is NoiseMode.KEYED:
        if secret is None or inputs is None:
            raise ValueError("keyed noise needs the tenant secret and the inputs")
        seeds = keyed_seeds(secret, model_id, inputs)
    draws = draw_noise(params, z.shape[0], z.shape[1], rng=rng, seeds=seeds)
    return apply_dynanoise(z, params, draws)
