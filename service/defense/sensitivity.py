"""Per-query sensitivity (risk) score R in [0, 1], from the clean logits.

R = 1 for a confident (one-hot) prediction and 0 for a uniform one. The
variance of the DynaNoise noise grows with R (spec section 1).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ._softmax import FloatArray, log_softmax
from .params import Sensitivity


def sensitivity(
    logits: FloatArray, measure: Sensitivity | str = Sensitivity.ENTROPY
) -> NDArray[np.float64]:
    """Sensitivity R of each row of ``logits`` (shape (n, k), k >= 2).

    entropy: p = softmax(z), H = -sum_i p_i log p_i, R = 1 - H / log k
             (p log p -> 0 at p = 0, computed from log-softmax so it never NaNs).
    top1:    R = (max_i p_i - 1/k) / (1 - 1/k).
    margin:  R = p_(1) - p_(2), the gap between the two largest probabilities.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError("logits must have shape (n, k) with k >= 2")
    k = z.shape[1]
    log_p = log_softmax(z)
    p = np.exp(log_p)
    measure = Sensitivity(measure)
    if measure is Sensitivity.ENTROPY:
        entropy = -np.einsum("ij,ij->i", p, log_p)
        risk = 1.0 - entropy / np.log(k)
    elif measure is Sensitivity.TOP1:
        risk = (p.max(axis=1) - 1.0 / k) / (1.0 - 1.0 / k)
    else:
        top_two = np.partition(p, k - 2, axis=1)[:, k - 2 :]
        risk = top_two[:, 1] - top_two[:, 0]
    # Rounding can push R a hair outside [0, 1]; the variance formula assumes it is inside.
    return np.clip(risk, 0.0, 1.0)
