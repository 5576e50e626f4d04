"""Threshold attacks on one output feature: confidence, loss, entropy, modified entropy.

Each attack turns a feature into a score s (higher = more likely a member) and
calls a sample a member iff s > t. Confidence and loss use one global t, fixed
as in the paper (0.9 on max probability, 0.5 on the loss) unless recalibrated on
shadow outputs (defense-aware protocol). Entropy and modified entropy follow
Song & Mittal 2021: one t per class, learned on shadow outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .base import AttackNotFitted
from .features import (
    as_probs_and_labels,
    cross_entropy,
    entropy,
    max_probability,
    modified_entropy,
)

FloatArray = NDArray[np.float64]
Statistic = Callable[[NDArray[np.float64], NDArray[np.intp]], NDArray[np.float64]]


def best_threshold(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """Threshold t maximising the balanced accuracy of the rule "member iff score > t".

    Balanced accuracy = (P[s_in > t] + P[s_out <= t]) / 2 (Song & Mittal's criterion;
    plain accuracy on a balanced set). Candidates are min - 1 (everyone a member; finite,
    so that score - t stays finite), the midpoints between consecutive distinct scores
    and the largest score (nobody a member); ties go to the smallest t.
    """
    s_in = np.sort(np.asarray(member_scores, dtype=np.float64).ravel())
    s_out = np.sort(np.asarray(nonmember_scores, dtype=np.float64).ravel())
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("need at least one member and one non-member score")
    values = np.unique(np.concatenate([s_in, s_out]))
    candidates = np.concatenate([values[:1] - 1.0, (values[:-1] + values[1:]) / 2.0, values[-1:]])
    tpr = 1.0 - np.searchsorted(s_in, candidates, side="right") / s_in.size
    tnr = np.searchsorted(s_out, candidates, side="right") / s_out.size
    return float(candidates[np.argmax(tpr + tnr)])


class _GlobalThresholdAttack:
    """Member iff statistic > threshold; ``fit`` recalibrates only when asked to."""

    name = "threshold"

    def __init__(self, threshold: float, *, recalibrate: bool = False) -> None:
        self.threshold = float(threshold)
        self.recalibrate = recalibrate

    def _statistic(self, probs: NDArray[np.float64], labels: NDArray[np.intp]) -> FloatArray:
        raise NotImplementedError

    def fit(
        self,
        shadow_in_probs: ArrayLike,
        shadow_in_labels: ArrayLike,
        shadow_out_probs: ArrayLike,
        shadow_out_labels: ArrayLike,
    ) -> Self:
        """Recalibrate the threshold on shadow outputs if ``recalibrate``; else keep it fixed."""
        if self.recalibrate:
            self.threshold = best_threshold(
                self.score(shadow_in_probs, shadow_in_labels),
                self.score(shadow_out_probs, shadow_out_labels),
            )
        return self

    def score(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
        """The attack statistic itself (higher = more likely a member)."""
        p, y = as_probs_and_labels(probs, labels)
        return self._statistic(p, y)

    def predict(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.bool_]:
        """Member iff score > threshold."""
        return self.score(probs, labels) > self.threshold


class ConfidenceAttack(_GlobalThresholdAttack):
    """Member iff max_i p_i > threshold (paper: 0.9, fixed). Score = max probability."""

    name = "conf"

    def __init__(self, threshold: float = 0.9, *, recalibrate: bool = False) -> None:
        super().__init__(threshold, recalibrate=recalibrate)

    def _statistic(self, probs: NDArray[np.float64], labels: NDArray[np.intp]) -> FloatArray:
        return max_probability(probs)


class LossAttack(_GlobalThresholdAttack):
    """Member iff cross-entropy -log p_y < loss_threshold (paper: 0.5). Score = -loss.

    ``threshold`` lives in score space (-loss); ``loss_threshold`` is its negation.
    """

    name = "loss"

    def __init__(self, loss_threshold: float = 0.5, *, recalibrate: bool = False) -> None:
        super().__init__(-loss_threshold, recalibrate=recalibrate)

    @property
    def loss_threshold(self) -> float:
        """The threshold on the loss: member iff loss < loss_threshold."""
        return -self.threshold

    def _statistic(self, probs: NDArray[np.float64], labels: NDArray[np.intp]) -> FloatArray:
        return -cross_entropy(probs, labels)


class ClassThresholdAttack:
    """Per-class thresholds on a statistic, learned on shadow outputs (Song & Mittal 2021).

    For each class c with at least ``min_class_samples`` shadow-in and shadow-out
    samples, t_c = best_threshold over those samples; other classes use the
    threshold learned on all shadow samples. Score = statistic - t_y, so that the
    decision rule is "member iff score > 0" and scores compare across classes.
    """

    def __init__(self, name: str, statistic: Statistic, *, min_class_samples: int = 5) -> None:
        if min_class_samples < 1:
            raise ValueError("min_class_samples must be >= 1")
        self.name = name
        self.statistic = statistic
        self.min_class_samples = min_class_samples
        self.global_threshold_: float | None = None
        self.class_thresholds_: dict[int, float] = {}

    def fit(
        self,
        shadow_in_probs: ArrayLike,
        shadow_in_labels: ArrayLike,
        shadow_out_probs: ArrayLike,
        shadow_out_labels: ArrayLike,
    ) -> Self:
        """Learn the global and the per-class thresholds."""
        p_in, y_in = as_probs_and_labels(shadow_in_probs, shadow_in_labels)
        p_out, y_out = as_probs_and_labels(shadow_out_probs, shadow_out_labels)
        s_in, s_out = self.statistic(p_in, y_in), self.statistic(p_out, y_out)
        self.global_threshold_ = best_threshold(s_in, s_out)
        self.class_thresholds_ = {}
        for c in np.union1d(y_in, y_out):
            in_c, out_c = s_in[y_in == c], s_out[y_out == c]
            if min(in_c.size, out_c.size) >= self.min_class_samples:
                self.class_thresholds_[int(c)] = best_threshold(in_c, out_c)
        return self

    def thresholds_for(self, labels: ArrayLike) -> NDArray[np.float64]:
        """The threshold t_y that applies to each label (global one for unseen classes)."""
        if self.global_threshold_ is None:
            raise AttackNotFitted(f"{self.name}: call fit() before score()/predict()")
        y = np.asarray(labels, dtype=np.intp)
        k = max(int(y.max(initial=-1)), *self.class_thresholds_.keys(), 0) + 1
        table = np.full(k, self.global_threshold_)
        for c, t in self.class_thresholds_.items():
            table[c] = t
        return table[y]

    def score(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
        """statistic - t_y (higher = more likely a member)."""
        p, y = as_probs_and_labels(probs, labels)
        return self.statistic(p, y) - self.thresholds_for(y)

    def predict(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.bool_]:
        """Member iff statistic > t_y."""
        return self.score(probs, labels) > 0.0


def _negative_entropy(probs: NDArray[np.float64], labels: NDArray[np.intp]) -> FloatArray:
    return -entropy(probs)


def _negative_modified_entropy(probs: NDArray[np.float64], labels: NDArray[np.intp]) -> FloatArray:
    return -modified_entropy(probs, labels)


def entropy_attack(*, min_class_samples: int = 5) -> ClassThresholdAttack:
    """Member iff the entropy H is below its class threshold (statistic -H)."""
    return ClassThresholdAttack("entropy", _negative_entropy, min_class_samples=min_class_samples)


def modified_entropy_attack(*, min_class_samples: int = 5) -> ClassThresholdAttack:
    """Member iff the modified entropy Mentr is below its class threshold (statistic -Mentr)."""
    return ClassThresholdAttack(
        "mentr", _negative_modified_entropy, min_class_samples=min_class_samples
    )
