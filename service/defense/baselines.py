"""Output-side baseline defenses measured beside DynaNoise in the audit.

Each maps clean logits (n, k) to output probabilities (n, k), keeps the
argmax (except where noise flips it) and needs no retraining.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._softmax import FloatArray, softmax


def no_defense(logits: FloatArray) -> NDArray[np.float64]:
    """The model's own softmax(z)."""
    return softmax(logits)


def temperature_only(logits: FloatArray, temperature: float) -> NDArray[np.float64]:
    """softmax(z / T): smoothing with no noise. Fools fixed-threshold attacks,
    not a defense-aware attacker (spec section 5)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return softmax(np.asarray(logits, dtype=np.float64) / temperature)


def static_gaussian(
    logits: FloatArray, std: float, rng: np.random.Generator, temperature: float = 1.0
) -> NDArray[np.float64]:
    """softmax((z + e) / T), e ~ N(0, std^2 I): noise of fixed size for every query."""
    z = np.asarray(logits, dtype=np.float64)
    return softmax((z + std * rng.standard_normal(z.shape)) / temperature)


def top1_label_only(logits: FloatArray) -> NDArray[np.float64]:
    """One-hot of the argmax: releases the label and nothing else."""
    z = np.asarray(logits)
    out = np.zeros(z.shape, dtype=np.float64)
    out[np.arange(z.shape[0]), z.argmax(axis=1)] = 1.0
    return out


def top_k_rounded(logits: FloatArray, k: int = 3, decimals: int = 1) -> NDArray[np.float64]:
    """Keep the k largest probabilities rounded to ``decimals``, zero the rest and
    renormalise. The top class keeps the largest value, so the label is kept."""
    p = softmax(logits)
    k = min(k, p.shape[1])
    cutoff = np.partition(p, p.shape[1] - k, axis=1)[:, p.shape[1] - k][:, None]
    kept = np.where(p >= cutoff, np.round(p, decimals), 0.0)
    top = p.argmax(axis=1)
    rows = np.arange(p.shape[0])
    step = 10.0**-decimals
    top_value = np.maximum(kept[rows, top], step)
    kept[rows, top] = 0.0
    # Rounding can tie the top class with the runner-up: lift it one step so the label survives.
    runner_up = kept.max(axis=1)
    kept[rows, top] = np.where(runner_up >= top_value, runner_up + step, top_value)
    return kept / kept.sum(axis=1, keepdims=True)
