"""Attacker-side helpers that undo what they can of a noisy, smoothed output.

- Repeated-query averaging: fresh noise per call averages out, the variance of
  the mean of N answers is 1/N of one answer's (spec section 1).
- Logit recovery: the defense returns softmax(z~ / T); knowing T, the attacker
  gets the noisy logits z~ back up to an additive constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .features import LOG_FLOOR

Inputs = TypeVar("Inputs")


def average_queries(
    query: Callable[[Inputs], ArrayLike], inputs: Inputs, n_queries: int
) -> NDArray[np.float64]:
    """Send the same ``inputs`` ``n_queries`` times and average the answers.

    p_bar = (1/N) sum_{j=1..N} query(x). Any scorer can then be applied to p_bar.
    With independent noise per call, Var[p_bar] = Var[query(x)] / N.
    """
    if n_queries < 1:
        raise ValueError("n_queries must be >= 1")
    total = np.asarray(query(inputs), dtype=np.float64).copy()
    for _ in range(n_queries - 1):
        total += np.asarray(query(inputs), dtype=np.float64)
    return total / n_queries


def recover_logits(probs: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """Noisy logits recovered from defended probabilities, centred per row.

    p = softmax(z~ / T) gives T log p_i = z~_i - T logsumexp(z~ / T), so
    z_hat = T log p - mean_i(T log p) = z~ - mean_i(z~): exact up to rounding,
    except where p_i underflows to below LOG_FLOOR (those entries are clipped).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    scaled = temperature * np.log(np.maximum(np.asarray(probs, dtype=np.float64), LOG_FLOOR))
    return scaled - scaled.mean(axis=-1, keepdims=True)


def recover_probabilities(probs: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """softmax(z_hat): the probabilities the noisy logits give at temperature 1.

    Equivalent to p_i^T / sum_j p_j^T. Feeding these to the confidence, loss or
    entropy attacks undoes the flattening the temperature does.
    """
    z_hat = recover_logits(probs, temperature)
    e = np.exp(z_hat - z_hat.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
