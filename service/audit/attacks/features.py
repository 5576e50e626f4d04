"""Per-sample features of a model's output probabilities that membership attacks score.

Every function takes probabilities ``probs`` of shape (n, k) (rows sum to 1, as
returned by a possibly defended model) and integer ``labels`` of shape (n,), and
returns one float64 value per row. Logarithms clip their argument at
``LOG_FLOOR`` so that a probability of exactly 0 or 1 never yields NaN or Inf.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatVector = NDArray[np.float64]

LOG_FLOOR = 1e-30
"""Smallest argument a logarithm sees (Song & Mittal 2021 clip at the same value)."""

FEATURE_NAMES = ("max_prob", "entropy", "modified_entropy", "p_true", "loss")
"""Column order of :func:`feature_matrix`, the shadow-model attack's five features."""


def as_probs_and_labels(
    probs: ArrayLike, labels: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
    """Validate and convert: probs to float64 (n, k) with k >= 2, labels to ints in [0, k)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, k) with k >= 2, got {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs must be finite")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError("labels must be integers")
    y = y.astype(np.intp)
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return p, y


def _neg_log(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """-log(max(x, LOG_FLOOR))."""
    return -np.log(np.maximum(values, LOG_FLOOR))


def max_probability(probs: ArrayLike) -> FloatVector:
    """Top-1 confidence: max_i p_i."""
    p = np.asarray(probs, dtype=np.float64)
    return p.max(axis=1)


def true_class_probability(probs: ArrayLike, labels: ArrayLike) -> FloatVector:
    """p_y, the probability the model gives the true label y."""
    p, y = as_probs_and_labels(probs, labels)
    return p[np.arange(p.shape[0]), y]


def entropy(probs: ArrayLike) -> FloatVector:
    """Shannon entropy H = -sum_i p_i log p_i (with p log p -> 0 at p = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    return np.einsum("ij,ij->i", p, _neg_log(p))


def cross_entropy(probs: ArrayLike, labels: ArrayLike) -> FloatVector:
    """Cross-entropy loss on the true label: -log p_y (clipped at -log LOG_FLOOR)."""
    return _neg_log(true_class_probability(probs, labels))


def modified_entropy(probs: ArrayLike, labels: ArrayLike) -> FloatVector:
    """Song & Mittal's modified entropy, low for confident correct predictions.

    Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i).
    """
    p, y = as_probs_and_labels(probs, labels)
    rows = np.arange(p.shape[0])
    weights = p.copy()
    logs = _neg_log(1.0 - p)
    weights[rows, y] = 1.0 - p[rows, y]
    logs[rows, y] = _neg_log(p[rows, y])
    return np.einsum("ij,ij->i", weights, logs)


def logit_confidence(probs: ArrayLike, labels: ArrayLike) -> FloatVector:
    """Logit-scaled confidence of Carlini et al. 2022: phi = log p_y - log(1 - p_y).

    1 - p_y is computed as sum_{i != y} p_i, which keeps its relative precision when
    p_y is close to 1 (where 1 - p_y would cancel to 0); both terms are clipped at
    LOG_FLOOR, so phi is finite and lies in [log LOG_FLOOR, -log LOG_FLOOR].
    """
    p, y = as_probs_and_labels(probs, labels)
    rows = np.arange(p.shape[0])
    p_true = p[rows, y]
    others = p.copy()
    others[rows, y] = 0.0
    p_rest = others.sum(axis=1)
    return np.log(np.maximum(p_true, LOG_FLOOR)) - np.log(np.maximum(p_rest, LOG_FLOOR))


def feature_matrix(probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """The five shadow-model features, columns in FEATURE_NAMES order, shape (n, 5)."""
    p, y = as_probs_and_labels(probs, labels)
    return np.column_stack(
        [
            max_probability(p),
            entropy(p),
            modified_entropy(p, y),
            true_class_probability(p, y),
            cross_entropy(p, y),
        ]
    )
