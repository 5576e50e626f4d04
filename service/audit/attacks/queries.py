"""Logit recovery: the defense returns softmax(z~ / T); knowing T, the attacker gets
the noisy logits z~ back up to an additive constant (averaging them over many
answers is `service.audit.attacks.adaptive`)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .features import LOG_FLOOR


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
