"""The statistics rules of the audit: what an evaluation set can support, and intervals.

- TPR at a false-positive rate f is reported only when at least 10 / f non-members
  back it (1,000 for 1 %, 10,000 for 0.1 %); below that the empirical ROC has fewer
  than ten false positives to place the threshold and reads far too high.
- Figures over repeats (server noise draws, keyed secrets, audit seeds): the mean,
  with a 95 % interval. For attacks on many targets the interval comes from a
  bootstrap that draws a repeat at random and resamples the targets (the pairs of
  one target are not independent of each other); for one target it resamples
  members and non-members. For a mean over repeats alone (MIDPUT): Student's t.
- Numbers are printed to 3 significant digits; a ranking is claimed only when
  intervals do not overlap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from .scoring import auc_and_tprs, tpr_supported

FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}
MIN_CLUSTERS = 10
"""Fewer targets than this: resample pairs instead of targets."""


def sig3(value: float | None) -> str:
    """``value`` to 3 significant digits ("-" for None)."""
    return "-" if value is None else f"{value:.3g}"


def mean_interval(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of the mean of the repeats."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("need at least one value")
    mean = float(v.mean())
    if v.size < 2 or float(v.std()) == 0.0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def one_class(predictions: ArrayLike) -> bool:
    """True when an attack calls every row a member, or every row a non-member."""
    p = np.asarray(predictions, dtype=bool)
    return bool(p.all() or not p.any())


def _histograms(
    scores: NDArray[np.float64], is_member: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-target counts over the distinct scores: (T, n_bins) for members, non-members."""
    n_targets = scores.shape[0]
    values, inverse = np.unique(scores, return_inverse=True)
    flat = inverse.reshape(scores.shape) + values.size * np.arange(n_targets)[:, None]
    size = n_targets * values.size

    def count(mask: NDArray[np.bool_]) -> NDArray[np.float64]:
        counts = np.bincount(flat[mask], minlength=size)
        return counts.reshape(n_targets, values.size).astype(np.float64)

    return count(is_member), count(~is_member)


def repeated_attack_metrics(
    scores: ArrayLike,
    is_member: ArrayLike,
    *,
    rng: np.random.Generator,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """AUC and TPR at 1 % / 0.1 % FPR of one attack over repeats, with intervals
    (95 % by default; a family of k attacks tested at once wants 1 - 0.05 / k).

    ``scores`` (R, T, P): R repeats, T targets, P rows each (higher = member);
    ``is_member`` (T, P). The point figure is the mean over repeats of the metric on
    all pairs; TPR at an FPR is None (with the count) where the rule forbids it.
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    if s.ndim != 3 or s.shape[1:] != m.shape:
        raise ValueError("scores must be (repeats, targets, rows) and is_member (targets, rows)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    n_in, n_out = int(m.sum()), int((~m).sum())
    if n_in == 0 or n_out == 0:
        raise ValueError("need at least one member and one non-member pair")
    repeats, n_targets = s.shape[0], s.shape[1]
    fprs = tuple(FPRS.values())
    point: list[NDArray[np.float64]] = []
    boot: list[NDArray[np.float64]] = []
    picks = rng.integers(0, repeats, size=n_bootstrap)
    for r in range(repeats):
        draws = int((picks == r).sum())
        if n_targets >= MIN_CLUSTERS:
            h_in, h_out = _histograms(s[r], m)
            weights = np.vstack(
                [
                    np.ones(n_targets),
                    rng.multinomial(n_targets, np.full(n_targets, 1 / n_targets), draws),
                ]
            )
            auc, tprs = auc_and_tprs(weights @ h_in, weights @ h_out, fprs)
        else:
            auc, tprs = _pair_bootstrap(s[r][m], s[r][~m], draws, rng, fprs)
        values = np.vstack([auc, *tprs])  # (1 + n_fprs, 1 + draws)
        point.append(values[:, 0])
        boot.append(values[:, 1:])
    mean = np.mean(point, axis=0)
    resampled = np.concatenate(boot, axis=1)
    report: dict[str, Any] = {
        "auc": float(mean[0]),
        "auc_ci": _percentiles(resampled[0], confidence),
        "member_pairs": n_in,
        "non_member_pairs": n_out,
        "repeats": repeats,
        "by_repeat": {"auc": [float(p[0]) for p in point]},
    }
    for i, (key, fpr) in enumerate(FPRS.items(), start=1):
        supported = tpr_supported(n_out, fpr)
        report[key] = float(mean[i]) if supported else None
        report[f"{key}_ci"] = _percentiles(resampled[i], confidence) if supported else None
    return report


def _pair_bootstrap(
    members: NDArray[np.float64],
    nonmembers: NDArray[np.float64],
    draws: int,
    rng: np.random.Generator,
    fprs: tuple[float, ...],
) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    values, inverse = np.unique(np.r_[members, nonmembers], return_inverse=True)
    index_in, index_out = inverse[: members.size], inverse[members.size :]
    rows_in = np.vstack(
        [np.arange(members.size), rng.integers(0, members.size, (draws, members.size))]
    )
    rows_out = np.vstack(
        [np.arange(nonmembers.size), rng.integers(0, nonmembers.size, (draws, nonmembers.size))]
    )

    def count(index: NDArray[np.intp]) -> NDArray[np.float64]:
        flat = index + values.size * np.arange(index.shape[0])[:, None]
        counts = np.bincount(flat.ravel(), minlength=index.shape[0] * values.size)
        return counts.reshape(index.shape[0], values.size).astype(np.float64)

    return auc_and_tprs(count(index_in[rows_in]), count(index_out[rows_out]), fprs)


def _percentiles(values: NDArray[np.float64], confidence: float) -> list[float] | None:
    if values.size == 0:
        return None
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]
