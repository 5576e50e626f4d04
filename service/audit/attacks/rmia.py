"""RMIA: the relative membership inference attack of Zarifzadeh et al. (ICML 2024).

Signal: p(x | theta) = Pr(y_x | x, theta), the probability a model gives the true
label of x. With reference models theta_1..theta_R (each trained on a random part
of the data) and population rows z that the target did not train on,

    Pr(x)      = mean_r p(x | theta_r)                        (online: all references)
               = ((1 + a) * mean_{r: x OUT} p(x | theta_r) + (1 - a)) / 2   (offline)
    LR(x)      = p(x | theta) / Pr(x)
    LR(x, z)   = LR(x) / LR(z)
    score(x)   = Pr_z[LR(x, z) >= gamma]                      (fraction of population rows)

The offline line is the paper's linear approximation of Pr(x) from OUT models only:
it assumes p_IN(x) ~ a * p_OUT(x) + (1 - a), i.e. training pulls p toward 1, and
averages the two halves. a = 1 means training changes nothing (Pr(x) = Pr_OUT(x)),
a = 0 means members reach p = 1. a is tuned per dataset; the authors' Privacy Meter
does it by a grid search (a in {0, 0.1, ..., 1}) maximising the AUC of this attack
on one reference model as a stand-in target, attacked with the others. There is no
closed form, so the caller passes ``offline_a`` (Privacy Meter's default is 0.3).

Pr(z) is computed the same way as Pr(x). The score is a count over a sorted array,
O((n + m) log m), not an n x m matrix.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

PROB_FLOOR = 1e-30
"""Smallest Pr(x) a ratio divides by (float32 rounding can make every reference's p 0)."""


def _probabilities(values: ArrayLike, name: str, ndim: int) -> FloatArray:
    p = np.asarray(values, dtype=np.float64)
    if p.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0.0) or np.any(p > 1.0):
        raise ValueError(f"{name} must hold finite probabilities in [0, 1]")
    return p


def _references(
    values: ArrayLike, in_mask: ArrayLike, name: str
) -> tuple[FloatArray, NDArray[np.bool_]]:
    p = _probabilities(values, name, 2)
    mask = np.asarray(in_mask)
    if mask.shape != p.shape:
        raise ValueError(f"{name}_in must have the shape of {name} {p.shape}, got {mask.shape}")
    if p.shape[0] == 0:
        raise ValueError(f"{name} needs at least one reference model (row)")
    return p, mask.astype(bool)


def rmia_marginal(
    reference: ArrayLike, reference_in: ArrayLike, *, offline_a: float | None = None
) -> FloatArray:
    """Pr(x) per column of ``reference`` (n_reference_models, n_examples).

    Online (``offline_a`` None): the mean over all references, IN and OUT.
    Offline: ((1 + a) * mean over the OUT references + (1 - a)) / 2, which never
    reads an IN reference's value. A column with no OUT reference falls back to the
    plain mean over all its references (the online estimate, which over IN models
    only overstates Pr(x) and so errs toward calling x a non-member).
    """
    p, mask = _references(reference, reference_in, "reference")
    mean_all = p.mean(axis=0)
    if offline_a is None:
        return mean_all
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"offline_a must lie in [0, 1], got {offline_a}")
    out = ~mask
    n_out = out.sum(axis=0)
    mean_out = np.where(out, p, 0.0).sum(axis=0) / np.maximum(n_out, 1)
    approx = ((1.0 + offline_a) * mean_out + (1.0 - offline_a)) / 2.0
    return np.where(n_out > 0, approx, mean_all)


def fraction_dominated(lr_x: ArrayLike, lr_z: ArrayLike, gamma: float = 1.0) -> FloatArray:
    """For each x, the fraction of z with LR(x) >= gamma * LR(z), via sort + searchsorted.

    Equals mean_z [LR(x) / LR(z) >= gamma] for LR(z) > 0, and counts LR(z) = 0 as
    dominated (the ratio is +inf), without forming the n x m matrix.
    """
    x = np.asarray(lr_x, dtype=np.float64)
    thresholds = np.sort(gamma * np.asarray(lr_z, dtype=np.float64))
    if thresholds.size == 0:
        raise ValueError("need at least one population row z")
    counts = np.searchsorted(thresholds, x, side="right")
    return np.asarray(counts / thresholds.size, dtype=np.float64)


def rmia_scores(
    target_x: ArrayLike,
    reference_x: ArrayLike,
    reference_x_in: ArrayLike,
    target_z: ArrayLike,
    reference_z: ArrayLike,
    reference_z_in: ArrayLike,
    *,
    offline_a: float | None = None,
    gamma: float = 1.0,
) -> FloatArray:
    """RMIA score in [0, 1] per candidate x; higher means more likely a member.

    target_x (n,), target_z (m,): the target model's p(true label) on the candidates
    and on the population rows. reference_x (R, n), reference_z (R, m): the same
    under the R reference models, with boolean masks of the same shapes, True where
    that reference trained on that row. ``offline_a`` None runs the online attack
    (Pr over all references), a float in [0, 1] the offline one (OUT references
    only, see :func:`rmia_marginal`). ``gamma`` > 0 is the pairwise-ratio threshold.
    """
    t_x = _probabilities(target_x, "target_x", 1)
    t_z = _probabilities(target_z, "target_z", 1)
    r_x, in_x = _references(reference_x, reference_x_in, "reference_x")
    r_z, in_z = _references(reference_z, reference_z_in, "reference_z")
    if r_x.shape[1] != t_x.size:
        raise ValueError(f"reference_x has shape {r_x.shape}; expected (R, {t_x.size})")
    if r_z.shape != (r_x.shape[0], t_z.size):
        raise ValueError(
            f"reference_z has shape {r_z.shape}; expected ({r_x.shape[0]}, {t_z.size})"
        )
    if not (np.isfinite(gamma) and gamma > 0.0):
        raise ValueError(f"gamma must be a positive finite number, got {gamma}")
    lr_x = t_x / np.maximum(rmia_marginal(r_x, in_x, offline_a=offline_a), PROB_FLOOR)
    lr_z = t_z / np.maximum(rmia_marginal(r_z, in_z, offline_a=offline_a), PROB_FLOOR)
    return fraction_dominated(lr_x, lr_z, gamma)
