"""Attack-quality metrics: accuracy, AUC, TPR at low FPR, with bootstrap intervals.

Scores are "higher = more likely a member"; ``is_member`` is the ground truth.
TPR at a fixed FPR is read off the empirical ROC without interpolation, so the
reported rate is one the attack actually achieves with some threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn import metrics

MIN_FALSE_POSITIVES = 10
"""TPR at FPR f is reported only with at least MIN_FALSE_POSITIVES / f non-members."""

REPORT_KEYS = ("accuracy", "balanced_accuracy", "auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr")
"""Keys of :func:`attack_report` (and of its ``ci`` entry), in order."""


def tpr_supported(n_nonmembers: int, fpr: float) -> bool:
    """Whether n_nonmembers >= 10 / fpr, the rule for reporting TPR at ``fpr``."""
    return n_nonmembers * fpr >= MIN_FALSE_POSITIVES - 1e-9


def _check(
    scores: ArrayLike, is_member: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    if s.ndim != 1 or m.shape != s.shape:
        raise ValueError("scores and is_member must be 1-D arrays of the same length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if m.all() or not m.any():
        raise ValueError("need at least one member and one non-member")
    return s, m


def roc_auc(scores: ArrayLike, is_member: ArrayLike) -> float:
    """Area under the ROC curve = P(s_member > s_nonmember) + P(tie) / 2."""
    s, m = _check(scores, is_member)
    return float(metrics.roc_auc_score(m, s))


def roc_curve(
    scores: ArrayLike, is_member: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(fpr, tpr, thresholds) of the rule "member iff score >= threshold", all points kept."""
    s, m = _check(scores, is_member)
    fpr, tpr, thresholds = metrics.roc_curve(m, s, drop_intermediate=False)
    return fpr, tpr, thresholds


def _count_matrix(index: NDArray[np.intp], n_bins: int) -> NDArray[np.float64]:
    """counts[b, j] = number of times bin j occurs in row b of ``index`` (B, n)."""
    n_rows = index.shape[0]
    flat = index + n_bins * np.arange(n_rows)[:, None]
    return (
        np.bincount(flat.ravel(), minlength=n_rows * n_bins)
        .reshape(n_rows, n_bins)
        .astype(np.float64)
    )


def auc_and_tprs(
    member_counts: NDArray[np.float64],
    nonmember_counts: NDArray[np.float64],
    fprs: tuple[float, ...],
) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    """AUC and TPR at each target FPR for rows of weights over distinct scores.

    Columns are the distinct scores in increasing order; row b holds how often
    each score occurs among the (resampled) members and non-members. Threshold j
    (member iff score > u_j) has FPR_j = W_out(> u_j) / n_out, nonincreasing in j;
    the largest TPR with FPR <= f is at the first j with FPR_j <= f.
    """
    n_in = member_counts.sum(axis=1, keepdims=True)
    n_out = nonmember_counts.sum(axis=1, keepdims=True)
    in_upto = np.cumsum(member_counts, axis=1)
    in_above = n_in - in_upto
    auc = (nonmember_counts * (in_above + 0.5 * member_counts)).sum(axis=1) / (n_in * n_out)[:, 0]
    false_pos = n_out - np.cumsum(nonmember_counts, axis=1)
    tprs = []
    for fpr in fprs:
        allowed = np.floor(fpr * n_out + 1e-9)
        first = np.argmax(false_pos <= allowed, axis=1)
        tpr = np.take_along_axis(in_above, first[:, None], axis=1)[:, 0] / n_in[:, 0]
        tprs.append(np.where(fpr >= 1.0, 1.0, tpr))
    return auc, tprs


def _distinct_score_index(s: NDArray[np.float64]) -> tuple[NDArray[np.intp], int]:
    values, inverse = np.unique(s, return_inverse=True)
    return inverse.astype(np.intp), values.size


def tpr_at_fpr(scores: ArrayLike, is_member: ArrayLike, fpr: float) -> float:
    """Largest TPR over thresholds whose FPR is <= ``fpr`` (no interpolation).

    The thresholds are those of the empirical ROC (between distinct scores), so
    the answer is a TPR the attack really reaches. FPR moves in steps of
    1 / n_nonmembers: below 1000 non-members a target of 0.1 % allows no false
    positive at all, so the figure is coarse (and pessimistic) on small sets.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError("fpr must lie in [0, 1]")
    s, m = _check(scores, is_member)
    index, n_distinct = _distinct_score_index(s)
    _, (tpr,) = auc_and_tprs(
        _count_matrix(index[m][None, :], n_distinct),
        _count_matrix(index[~m][None, :], n_distinct),
        (fpr,),
    )
    return float(tpr[0])


def attack_report(
    scores: ArrayLike,
    predictions: ArrayLike,
    is_member: ArrayLike,
    *,
    rng: np.random.Generator,
    n_bootstrap: int = 200,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, AUC and TPR at 0.1 % / 1 % FPR, with 95 % intervals.

    TPR at an FPR f is None (interval too) unless there are >= 10 / f non-members;
    ``one_class`` flags an attack whose decision is the same for every row.

    ``predictions`` is the attack's own decision (for the accuracies), ``scores`` its
    ranking (for AUC and TPR at FPR). ``ci`` maps each key to [low, high], the 2.5th
    and 97.5th percentiles over ``n_bootstrap`` resamples that draw members and
    non-members separately with replacement (group sizes kept). Vectorised: one
    count matrix per group, no Python loop over resamples.
    """
    s, m = _check(scores, is_member)
    pred = np.asarray(predictions, dtype=bool)
    if pred.shape != s.shape:
        raise ValueError("predictions must have the same shape as scores")
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be >= 1")
    index, n_distinct = _distinct_score_index(s)
    members, nonmembers = np.flatnonzero(m), np.flatnonzero(~m)
    draws_in = rng.integers(0, members.size, size=(n_bootstrap, members.size))
    draws_out = rng.integers(0, nonmembers.size, size=(n_bootstrap, nonmembers.size))
    rows_in = np.vstack([np.arange(members.size), draws_in])
    rows_out = np.vstack([np.arange(nonmembers.size), draws_out])

    tpr_rate = pred[members][rows_in].mean(axis=1)
    tnr_rate = (~pred[nonmembers])[rows_out].mean(axis=1)
    n_total = members.size + nonmembers.size
    accuracy = (tpr_rate * members.size + tnr_rate * nonmembers.size) / n_total
    auc, (tpr_01, tpr_1) = auc_and_tprs(
        _count_matrix(index[members][rows_in], n_distinct),
        _count_matrix(index[nonmembers][rows_out], n_distinct),
        (0.001, 0.01),
    )
    values = dict(
        zip(REPORT_KEYS, (accuracy, 0.5 * (tpr_rate + tnr_rate), auc, tpr_01, tpr_1), strict=True)
    )
    report: dict[str, Any] = {key: float(v[0]) for key, v in values.items()}
    report["ci"] = {
        key: [float(x) for x in np.percentile(v[1:], [2.5, 97.5])] for key, v in values.items()
    }
    # The TPR rule (service.audit.statistics): at least 10 / FPR non-members, else null.
    for key, fpr in (("tpr_at_0.1pct_fpr", 0.001), ("tpr_at_1pct_fpr", 0.01)):
        if not tpr_supported(nonmembers.size, fpr):
            report[key] = None
            report["ci"][key] = None
    report["n_members"] = int(members.size)
    report["n_non_members"] = int(nonmembers.size)
    report["one_class"] = bool(pred.all() or not pred.any())
    return report
