"""Numerically stable softmax helpers shared by the defense functions."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]


def log_softmax(logits: FloatArray) -> NDArray[np.float64]:
    """log softmax(z)_i = z_i - logsumexp(z), along the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: FloatArray) -> NDArray[np.float64]:
    """softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z), along the last axis."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e
