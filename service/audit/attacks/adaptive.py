"""What an adaptive attacker does with more than one answer per row: pure numpy.

- Near-duplicates: copies of a row whose bytes differ (a one-ulp step, a denormal
  written into a zero feature) while the model's output does not move. Keyed
  noise hashes the exact bytes, so each copy gets an independent draw.
- Logit-space averaging: p = softmax((z + e) / T) gives T log p = z + e - c, so
  the mean of the centred recovered logits over N answers is z - mean(z) plus
  noise whose variance is 1/N of one answer's (probability-space averaging keeps
  a bias from the softmax and cancels the noise less).
- Answer spread: DynaNoise's variance sigma0^2 (1 + lambda R) grows with the
  clean confidence R, so the spread of repeated answers is itself a score.
- Parameter-change differencing: keyed draws that ignore the parameters give
  z~_1 = z + s_1 u and z~_2 = z + s_2 u with s_2 / s_1 = sqrt(v_2 / v_1), which
  does not depend on R; two answers solve for the clean (centred) logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .queries import recover_logits

FloatArray = NDArray[np.float64]

QUERY_BUDGETS = (1, 4, 16, 64)
"""Answers per row the audit's query-budget curves are drawn at."""

_SMALLEST_DENORMAL = np.float32(1.4e-45)


def near_duplicates(x: ArrayLike, n_copies: int) -> NDArray[np.float32]:
    """``n_copies`` float32 copies of every row of ``x``, (n, n_copies, *sample_shape).

    Copy 0 is the row itself; copy c > 0 changes one feature imperceptibly, with
    j = c // 2:
    - odd c: feature j mod d moves 1 + j // d ulps away from 0 (a zero feature
      becomes a negative denormal);
    - even c: a row with zero features gets the positive denormal
      (1 + j // n_zero) * 1.4e-45 in its (j mod n_zero)-th zero feature; a row
      without one moves feature j mod d by 1 + j // d ulps towards 0.
    Every copy of a row has distinct bytes, and the model's output moves by far
    less than any defense's noise.
    """
    if n_copies < 1:
        raise ValueError("n_copies must be >= 1")
    rows = np.ascontiguousarray(x, dtype=np.float32)
    if rows.ndim < 2:
        raise ValueError("x must be a batch (n, *sample_shape)")
    n, shape = rows.shape[0], rows.shape[1:]
    flat = rows.reshape(n, -1)
    d = flat.shape[1]
    copies = np.repeat(flat[:, None, :], n_copies, axis=1)
    is_zero = flat == 0.0
    n_zero = is_zero.sum(axis=1)
    zero_rank = np.cumsum(is_zero, axis=1)
    everyone = np.arange(n)
    for c in range(1, n_copies):
        j = c // 2
        feature, steps = j % d, 1 + j // d
        if c % 2:
            _step(copies, everyone, c, feature, steps, away_from_zero=True)
            continue
        with_zero = np.flatnonzero(n_zero > 0)
        if with_zero.size:
            count = n_zero[with_zero]
            position = np.argmax(zero_rank[with_zero] > (j % count)[:, None], axis=1)
            multiple = (1 + j // count).astype(np.float32)
            copies[with_zero, c, position] = _SMALLEST_DENORMAL * multiple
        _step(copies, np.flatnonzero(n_zero == 0), c, feature, steps, away_from_zero=False)
    return copies.reshape(n, n_copies, *shape)


def _step(
    copies: NDArray[np.float32],
    rows: NDArray[np.intp],
    copy: int,
    feature: int,
    steps: int,
    *,
    away_from_zero: bool,
) -> None:
    """Move copies[rows, copy, feature] by ``steps`` ulps, in place."""
    if rows.size == 0:
        return
    values = copies[rows, copy, feature]
    up = (values > 0) if away_from_zero else (values < 0)
    toward = np.where(up, np.inf, -np.inf).astype(np.float32)
    for _ in range(steps):
        values = np.nextafter(values, toward)
    copies[rows, copy, feature] = values


def averaged_logits(
    answers: ArrayLike, temperature: float, budgets: Sequence[int] = QUERY_BUDGETS
) -> dict[int, FloatArray]:
    """Mean recovered logits over the first N answers, for every N in ``budgets``.

    ``answers`` (..., N_max, k) are defended probabilities; the recovered logits
    T log p are centred per answer, then averaged: one pass gives every budget.
    """
    a = np.asarray(answers, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError("answers must have shape (..., n_answers, k)")
    n_max = a.shape[-2]
    bad = [b for b in budgets if not 1 <= b <= n_max]
    if bad:
        raise ValueError(f"budgets {bad} outside [1, {n_max}] answers")
    cumulative = np.cumsum(recover_logits(a, temperature), axis=-2)
    return {b: cumulative[..., b - 1, :] / b for b in budgets}


def answer_spread(answers: ArrayLike, temperature: float) -> FloatArray:
    """Mean over classes of the sample variance of the recovered logits over the
    answers (..., N, k) -> (...). Grows with DynaNoise's sigma^2 = sigma0^2 (1 + lambda R)."""
    a = np.asarray(answers, dtype=np.float64)
    if a.ndim < 2 or a.shape[-2] < 2:
        raise ValueError("the spread needs at least two answers per row")
    logits = recover_logits(a, temperature)
    return np.asarray(logits.var(axis=-2, ddof=1).mean(axis=-1), dtype=np.float64)


def difference_parameter_change(
    before: ArrayLike,
    after: ArrayLike,
    temperature: float,
    variance_before: float,
    variance_after: float,
) -> FloatArray:
    """Clean centred logits from two keyed answers around a base_variance change.

    c_1 = c + s_1 u and c_2 = c + s_2 u (centred recovered logits, same unit draw
    u), with rho = s_2 / s_1 = sqrt(v_2 / v_1): c = (rho c_1 - c_2) / (rho - 1).
    Exact when the server reuses its draws; with independent draws it is a noisy
    (worse than averaging) estimate.
    """
    if variance_before <= 0 or variance_after <= 0 or variance_before == variance_after:
        raise ValueError("need two different positive variances")
    rho = float(np.sqrt(variance_after / variance_before))
    c1 = recover_logits(before, temperature)
    c2 = recover_logits(after, temperature)
    return np.asarray((rho * c1 - c2) / (rho - 1.0), dtype=np.float64)
