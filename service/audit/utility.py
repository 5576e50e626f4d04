"""Utility of (defended) output probabilities: accuracy, calibration, proper scores.

All functions take probabilities (n, k) and integer labels (n,). Lower is better
for ECE, Brier and NLL; a defense that keeps the argmax keeps the accuracy but
can still wreck calibration, which is why the audit reports all four.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .attacks.features import as_probs_and_labels

ECE_BINS = 15
NLL_FLOOR = 1e-12
"""p_y is clipped here before the log, so one zero probability gives NLL <= 27.6, not Inf."""


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy: mean of [argmax_i p_i == y]."""
    p, y = as_probs_and_labels(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, *, n_bins: int = ECE_BINS
) -> float:
    """Top-label ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)|.

    conf = max_i p_i; the bins are equal-width, B_b = (b / n_bins, (b + 1) / n_bins]
    (the first bin also takes confidence 0); acc(B_b) is the top-1 accuracy and
    conf(B_b) the mean confidence of the samples in bin b.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    p, y = as_probs_and_labels(probs, labels)
    if y.size == 0:
        raise ValueError("need at least one sample")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.searchsorted(inner_edges, confidence, side="left")
    gap_sums = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap_sums).sum() / y.size)


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over samples of sum_i (p_i - [i == y])^2."""
    p, y = as_probs_and_labels(probs, labels)
    errors = p.copy()
    errors[np.arange(y.size), y] -= 1.0
    return float(np.mean(np.einsum("ij,ij->i", errors, errors)))


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean NLL: mean of -log max(p_y, NLL_FLOOR)."""
    p, y = as_probs_and_labels(probs, labels)
    return float(np.mean(-np.log(np.maximum(p[np.arange(y.size), y], NLL_FLOOR))))


def utility_report(probs: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """accuracy, ece (15 bins, top-label), brier and nll of the given outputs."""
    return {
        "accuracy": accuracy(probs, labels),
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
    }
