"""The contract every output-probability membership attack follows.

An attack sees only what a (possibly defended) model returns: probabilities
(n, k) and the true labels. ``fit`` learns from a shadow model's outputs on its
own training set ("in", members) and on held-out data ("out"); ``score`` ranks
samples (higher = more likely a member, used for AUC and TPR at low FPR);
``predict`` applies the attack's own decision rule (used for attack accuracy).
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray


class AttackNotFitted(RuntimeError):
    """An attack that learns from shadow outputs was used before ``fit``."""


@runtime_checkable
class MembershipAttack(Protocol):
    """Score-and-decide membership attack on output probabilities."""

    name: str

    def fit(
        self,
        shadow_in_probs: ArrayLike,
        shadow_in_labels: ArrayLike,
        shadow_out_probs: ArrayLike,
        shadow_out_labels: ArrayLike,
    ) -> Self:
        """Learn from shadow outputs on members (in) and non-members (out); return self."""
        ...

    def score(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
        """One membership score per row; higher means more likely a member."""
        ...

    def predict(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.bool_]:
        """The attack's own member / non-member decision per row."""
        ...
