"""Label-only (gap) attack: member iff the model's top-1 label is correct.

It uses nothing but the argmax, so no defense that keeps the labels can stop it:
it is the floor of every output-only defense (spec section 5).
"""

from __future__ import annotations

from typing import Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .features import as_probs_and_labels


class LabelOnlyAttack:
    """Score = 1 if argmax_i p_i == y else 0; member iff the score is 1. Learns nothing."""

    name = "label_only"

    def fit(
        self,
        shadow_in_probs: ArrayLike,
        shadow_in_labels: ArrayLike,
        shadow_out_probs: ArrayLike,
        shadow_out_labels: ArrayLike,
    ) -> Self:
        """Nothing to learn; returns self so it fits in a list of attacks."""
        return self

    def score(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
        """1.0 where the predicted label is the true label, else 0.0."""
        return self.predict(probs, labels).astype(np.float64)

    def predict(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.bool_]:
        """Member iff the predicted label is the true label."""
        p, y = as_probs_and_labels(probs, labels)
        return np.asarray(p.argmax(axis=1) == y)


def label_only_accuracy(member_accuracy: float, nonmember_accuracy: float) -> float:
    """Closed-form accuracy of the label-only attack on a balanced member / non-member set.

    acc = 0.5 * (train_acc + 1 - test_acc): members are caught when correctly
    classified (rate train_acc), non-members cleared when misclassified (rate
    1 - test_acc). On an unbalanced set this is the attack's balanced accuracy.
    """
    for value in (member_accuracy, nonmember_accuracy):
        if not 0.0 <= value <= 1.0:
            raise ValueError("accuracies must lie in [0, 1]")
    return 0.5 * (member_accuracy + 1.0 - nonmember_accuracy)
