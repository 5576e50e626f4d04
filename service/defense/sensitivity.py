"""Per-query sensitivity (risk) score R in [0, 1], from the clean logits.

R = 1 for a confident (one-hot) prediction and 0 for a uniform one. The
variance of the DynaNoise noise grows with R (spec section 1).
"""

from __future__ import annotations

import math
from typing import assert_never

import numpy as np
from numpy.typing import NDArray

from ._compiled import kernel as _kernel
from ._softmax import FloatArray
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
    measure = Sensitivity(measure)
    if (
        measure is Sensitivity.ENTROPY
        and _kernel is not None
        and type(logits) is np.ndarray
        and logits.ndim == 2
        and logits.shape[1] >= 2
    ):
        # The R the compiled defense measures for its noise, from its no-noise pass: a
        # tenth of numpy's cost on a row (12 us), which the lossy output modes pay on
        # every request for the sensitivity histogram (bench/micro-timings.md).
        risk: NDArray[np.float64] = _kernel.defend_entropy(logits, None, 0.0, 0.0, 1.0)[1]
        return risk
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError("logits must have shape (n, k) with k >= 2")
    return class_axis_sensitivity(z, measure, axis=1).reshape(-1)


def class_axis_sensitivity(
    z: NDArray[np.float64], measure: Sensitivity, axis: int
) -> NDArray[np.float64]:
    """R for float64 logits whose classes lie along ``axis`` (0 for a transposed,
    class-major batch; 1 for rows), kept as a broadcastable (1, n) or (n, 1) array.

    With s = z - max z, e = exp(s), S = sum e: log p = s - log S and p = e / S, so
    the entropy is H = -sum p log p = log S - sum(e s) / S (one exp, no log-softmax
    array), top-1 is p_max = 1 / S, and the margin is (1 - e_(2)) / S.
    """
    k = z.shape[axis]
    shifted = z - z.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=axis, keepdims=True)
    if measure is Sensitivity.ENTROPY:
        e *= shifted  # p log p -> 0 at p = 0: e = 0 there and s is finite
        weighted = e.sum(axis=axis, keepdims=True)
        risk = np.log(total)
        risk -= weighted / total
        risk *= -1.0 / math.log(k)
        risk += 1.0  # 1 - H / log k
    elif measure is Sensitivity.TOP1:
        risk = (1.0 / total - 1.0 / k) / (1.0 - 1.0 / k)
    elif measure is Sensitivity.MARGIN:
        second = np.partition(e, k - 2, axis=axis).take([k - 2], axis=axis)
        risk = (1.0 - second) / total
    else:  # a new member must say how it is computed, not fall through to another's
        assert_never(measure)
    # Rounding can push R a hair outside [0, 1]; the variance formula assumes it is inside.
    return np.clip(risk, 0.0, 1.0, out=risk)
