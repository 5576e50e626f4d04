"""Likelihood-ratio attacks: the paper's weak per-class variant and Carlini et al. 2022.

Paper variant: Gaussians of the cross-entropy loss per class, one for members
and one for non-members, fitted on (undefended, in the artifact) shadow outputs;
member iff log N(loss; in) - log N(loss; out) > 0.

Carlini et al. 2022 ("Membership Inference Attacks From First Principles"): many
shadow models, each trained on a random half of the examples; per example, a
Gaussian of the logit-scaled confidence phi over the shadows that trained on it
(in) and over those that did not (out). Online scores the likelihood ratio,
offline only how far phi sits above the out distribution.
"""

from __future__ import annotations

from typing import Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import log_ndtr

from .base import AttackNotFitted
from .features import as_probs_and_labels, cross_entropy

FloatArray = NDArray[np.float64]

DEFAULT_MIN_STD = 1e-6
"""Floor on every fitted standard deviation, so a constant feature cannot divide by 0."""


def gaussian_log_pdf(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> FloatArray:
    """log N(x; mu, s) = -((x - mu) / s)^2 / 2 - log s - log(2 pi) / 2."""
    mu = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(std, dtype=np.float64)
    z = (np.asarray(x, dtype=np.float64) - mu) / sd
    return np.asarray(-0.5 * z * z - np.log(sd) - 0.5 * np.log(2.0 * np.pi))


def _mean_std(values: FloatArray, min_std: float) -> tuple[float, float]:
    return float(values.mean()), max(float(values.std()), min_std)


class PaperLiRAAttack:
    """Per-class Gaussian likelihood ratio of the cross-entropy (the paper's weak LiRA).

    Fit on the concatenated outputs of however many shadows (the paper: 3 shadows
    on the same shadow-in set). Score = log N(l; mu_in_y, s_in_y) - log N(l; mu_out_y,
    s_out_y) with l = -log p_y; member iff score > 0. Classes with fewer than
    ``min_class_samples`` in or out samples use Gaussians fitted on all classes.
    """

    name = "lira"

    def __init__(self, *, min_class_samples: int = 5, min_std: float = DEFAULT_MIN_STD) -> None:
        if min_class_samples < 2:
            raise ValueError("min_class_samples must be >= 2 to estimate a variance")
        self.min_class_samples = min_class_samples
        self.min_std = min_std
        self.global_params_: tuple[float, float, float, float] | None = None
        self.class_params_: dict[int, tuple[float, float, float, float]] = {}

    def fit(
        self,
        shadow_in_probs: ArrayLike,
        shadow_in_labels: ArrayLike,
        shadow_out_probs: ArrayLike,
        shadow_out_labels: ArrayLike,
    ) -> Self:
        """Fit (mu_in, s_in, mu_out, s_out) of the loss, globally and per class."""
        p_in, y_in = as_probs_and_labels(shadow_in_probs, shadow_in_labels)
        p_out, y_out = as_probs_and_labels(shadow_out_probs, shadow_out_labels)
        if y_in.size < 2 or y_out.size < 2:
            raise ValueError("need at least two shadow outputs on each side")
        loss_in, loss_out = cross_entropy(p_in, y_in), cross_entropy(p_out, y_out)
        self.global_params_ = (
            *_mean_std(loss_in, self.min_std),
            *_mean_std(loss_out, self.min_std),
        )
        self.class_params_ = {}
        for c in np.union1d(y_in, y_out):
            in_c, out_c = loss_in[y_in == c], loss_out[y_out == c]
            if min(in_c.size, out_c.size) >= self.min_class_samples:
                self.class_params_[int(c)] = (
                    *_mean_std(in_c, self.min_std),
                    *_mean_std(out_c, self.min_std),
                )
        return self

    def score(self, probs: ArrayLike, labels: ArrayLike) -> FloatArray:
        """Log-likelihood ratio of the loss under the class's in vs out Gaussian."""
        if self.global_params_ is None:
            raise AttackNotFitted("lira: call fit() before score()/predict()")
        p, y = as_probs_and_labels(probs, labels)
        k = max([p.shape[1], *(c + 1 for c in self.class_params_)])
        table = np.tile(np.asarray(self.global_params_), (k, 1))
        for c, params in self.class_params_.items():
            table[c] = params
        mu_in, s_in, mu_out, s_out = table[y].T
        loss = cross_entropy(p, y)
        return gaussian_log_pdf(loss, mu_in, s_in) - gaussian_log_pdf(loss, mu_out, s_out)

    def predict(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.bool_]:
        """Member iff the log-likelihood ratio is positive."""
        return self.score(probs, labels) > 0.0


def _check_lira_inputs(
    target_phi: ArrayLike, shadow_phi: ArrayLike, shadow_in_mask: ArrayLike
) -> tuple[FloatArray, FloatArray, NDArray[np.bool_]]:
    target = np.asarray(target_phi, dtype=np.float64)
    shadows = np.asarray(shadow_phi, dtype=np.float64)
    mask = np.asarray(shadow_in_mask, dtype=bool)
    if shadows.ndim != 2 or mask.shape != shadows.shape:
        raise ValueError("shadow_phi and shadow_in_mask must share a (n_shadows, n_examples) shape")
    if target.shape != (shadows.shape[1],):
        raise ValueError(f"target_phi must have shape ({shadows.shape[1]},)")
    if not (np.all(np.isfinite(shadows)) and np.all(np.isfinite(target))):
        raise ValueError("phi values must be finite")
    return target, shadows, mask


def example_gaussians(
    shadow_phi: ArrayLike,
    observed: ArrayLike,
    *,
    global_variance: bool = False,
    min_std: float = DEFAULT_MIN_STD,
) -> tuple[FloatArray, FloatArray]:
    """Per-example mean and std of phi over the shadows where ``observed`` is True.

    shadow_phi and observed have shape (n_shadows, n_examples). An example no
    shadow observed gets the mean of all observations. Its std is the unbiased
    per-example std when ``global_variance`` is False and it has >= 2 observations;
    otherwise the pooled within-example std
        s^2 = sum_e sum_j (phi_je - mu_e)^2 / (n_obs - n_examples_observed),
    one variance for all examples (Carlini et al.'s fixed variance, which suits few
    shadows; pooled around each example's own mean rather than a global one).
    """
    phi = np.asarray(shadow_phi, dtype=np.float64)
    seen = np.asarray(observed, dtype=bool)
    counts = seen.sum(axis=0)
    if counts.sum() == 0:
        raise ValueError("no shadow observations on this side (in or out)")
    sums = np.where(seen, phi, 0.0).sum(axis=0)
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), sums.sum() / counts.sum())
    squares = np.where(seen, (phi - mean) ** 2, 0.0).sum(axis=0)
    pooled_dof = counts.sum() - np.count_nonzero(counts)
    pooled_std = np.sqrt(squares.sum() / pooled_dof) if pooled_dof > 0 else np.nan
    if global_variance:
        std = np.full(phi.shape[1], pooled_std)
    else:
        per_example = np.sqrt(squares / np.maximum(counts - 1, 1))
        std = np.where(counts >= 2, per_example, pooled_std)
    if np.any(np.isnan(std)):
        raise ValueError("cannot estimate a variance: every example has a single observation")
    return mean, np.maximum(std, min_std)


def lira_online(
    target_phi: ArrayLike,
    shadow_phi: ArrayLike,
    shadow_in_mask: ArrayLike,
    *,
    global_variance: bool = False,
    min_std: float = DEFAULT_MIN_STD,
) -> FloatArray:
    """Online LiRA score per example: log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out).

    target_phi: the target model's phi = log p_y - log(1 - p_y) per example (n_examples,).
    shadow_phi: the shadows' phi on the same examples, (n_shadows, n_examples).
    shadow_in_mask: True where that shadow trained on that example.
    """
    target, shadows, mask = _check_lira_inputs(target_phi, shadow_phi, shadow_in_mask)
    mu_in, s_in = example_gaussians(shadows, mask, global_variance=global_variance, min_std=min_std)
    mu_out, s_out = example_gaussians(
        shadows, ~mask, global_variance=global_variance, min_std=min_std
    )
    return gaussian_log_pdf(target, mu_in, s_in) - gaussian_log_pdf(target, mu_out, s_out)


def lira_offline(
    target_phi: ArrayLike,
    shadow_phi: ArrayLike,
    shadow_in_mask: ArrayLike,
    *,
    global_variance: bool = False,
    min_std: float = DEFAULT_MIN_STD,
) -> FloatArray:
    """Offline (one-sided) LiRA score: -log P(phi_out > phi), phi_out ~ N(mu_out, s_out^2).

    Monotone in the out-distribution CDF P(phi_out < phi), but keeps resolution in
    the upper tail, where members sit. Only the out shadows are used, so the
    target's members need not be in any shadow's training set.
    """
    target, shadows, mask = _check_lira_inputs(target_phi, shadow_phi, shadow_in_mask)
    mu_out, s_out = example_gaussians(
        shadows, ~mask, global_variance=global_variance, min_std=min_std
    )
    return np.asarray(-log_ndtr(-(target - mu_out) / s_out), dtype=np.float64)


def _leave_one_out_moments(
    phi: FloatArray, seen: NDArray[np.bool_], exclude: NDArray[np.intp]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per (target, example): count, mean and sum of squared deviations of the shadow
    phi where ``seen``, leaving out the shadows exclude[t, :] (entries < 0: none)."""
    w = seen.astype(np.float64)
    shape = (exclude.shape[0], phi.shape[1])
    count = np.broadcast_to(w.sum(axis=0), shape).copy()
    total = np.broadcast_to((w * phi).sum(axis=0), shape).copy()
    squares = np.broadcast_to((w * phi * phi).sum(axis=0), shape).copy()
    for column in exclude.T:
        own = column >= 0
        rows = column[own]
        count[own] -= w[rows]
        total[own] -= w[rows] * phi[rows]
        squares[own] -= w[rows] * phi[rows] ** 2
    mean = total / np.maximum(count, 1.0)
    deviations = np.maximum(squares - count * mean * mean, 0.0)
    return count, mean, deviations


def _loo_gaussians(
    phi: FloatArray,
    seen: NDArray[np.bool_],
    exclude: NDArray[np.intp],
    global_variance: bool,
    min_std: float,
) -> tuple[FloatArray, FloatArray]:
    count, mean, deviations = _leave_one_out_moments(phi, seen, exclude)
    if (count < 1).any():
        raise ValueError("every example needs at least one shadow on each side")
    pooled = np.sqrt(deviations.sum(axis=1, keepdims=True) / (count - 1).sum(axis=1, keepdims=True))
    if global_variance:
        std = np.broadcast_to(pooled, mean.shape)
    else:
        std = np.where(count >= 2, np.sqrt(deviations / np.maximum(count - 1, 1)), pooled)
    return mean, np.maximum(std, min_std)


def lira_leave_one_out(
    target_phi: ArrayLike,
    shadow_phi: ArrayLike,
    shadow_in_mask: ArrayLike,
    exclude: ArrayLike,
    *,
    global_variance: bool = False,
    min_std: float = DEFAULT_MIN_STD,
) -> tuple[FloatArray, FloatArray]:
    """Online and offline LiRA for many targets at once, (T, P) each.

    target_phi (T, P): each target's phi on the P rows; shadow_phi and shadow_in_mask
    (K, P): the attacker's shadows. Target t's Gaussians leave out the shadows
    exclude[t] ((T,) or (T, E); -1 for none): the target itself in the leave-one-out
    design. Same formulas as :func:`lira_online` and :func:`lira_offline`.
    """
    target = np.atleast_2d(np.asarray(target_phi, dtype=np.float64))
    shadows = np.asarray(shadow_phi, dtype=np.float64)
    mask = np.asarray(shadow_in_mask, dtype=bool)
    skip = np.asarray(exclude, dtype=np.intp)
    skip = skip.reshape(len(skip), -1) if skip.ndim else skip.reshape(1, 1)
    if shadows.ndim != 2 or mask.shape != shadows.shape:
        raise ValueError("shadow_phi and shadow_in_mask must share a (n_shadows, n_examples) shape")
    if target.shape != (skip.shape[0], shadows.shape[1]):
        raise ValueError("target_phi must be (n_targets, n_examples) with one exclude per target")
    if skip.max(initial=-1) >= shadows.shape[0]:
        raise ValueError("exclude indexes a shadow that does not exist")
    mu_in, s_in = _loo_gaussians(shadows, mask, skip, global_variance, min_std)
    mu_out, s_out = _loo_gaussians(shadows, ~mask, skip, global_variance, min_std)
    online = gaussian_log_pdf(target, mu_in, s_in) - gaussian_log_pdf(target, mu_out, s_out)
    offline = np.asarray(-log_ndtr(-(target - mu_out) / s_out), dtype=np.float64)
    return online, offline
