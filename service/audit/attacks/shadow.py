"""Shadow-model attack: logistic regression on five output features.

Features (spec section 3): max probability, entropy, modified entropy, p_true and
cross-entropy loss, standardised, then a logistic regression fitted on the shadow
model's outputs on its training set (label 1) against held-out data (label 0).
"""

from __future__ import annotations

from typing import Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .base import AttackNotFitted
from .features import feature_matrix


class ShadowModelAttack:
    """Score = P(member | features) from the fitted logistic regression; member iff > 0.5."""

    name = "shadow"

    def __init__(self, *, regularization: float = 1.0) -> None:
        self.regularization = regularization
        self.model_: Pipeline | None = None

    def fit(
        self,
        shadow_in_probs: ArrayLike,
        shadow_in_labels: ArrayLike,
        shadow_out_probs: ArrayLike,
        shadow_out_labels: ArrayLike,
    ) -> Self:
        """Fit the classifier on shadow-in (label 1) vs shadow-out (label 0) features."""
        x_in = feature_matrix(shadow_in_probs, shadow_in_labels)
        x_out = feature_matrix(shadow_out_probs, shadow_out_labels)
        if x_in.shape[0] == 0 or x_out.shape[0] == 0:
            raise ValueError("need shadow outputs for both members and non-members")
        x = np.vstack([x_in, x_out])
        target = np.concatenate([np.ones(x_in.shape[0]), np.zeros(x_out.shape[0])])
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.regularization, max_iter=1000)
        )
        self.model_ = model.fit(x, target)
        return self

    def score(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
        """Predicted probability of membership."""
        if self.model_ is None:
            raise AttackNotFitted("shadow: call fit() before score()/predict()")
        member_probability = self.model_.predict_proba(feature_matrix(probs, labels))[:, 1]
        return np.asarray(member_probability, dtype=np.float64)

    def predict(self, probs: ArrayLike, labels: ArrayLike) -> NDArray[np.bool_]:
        """Member iff the predicted membership probability exceeds 0.5."""
        return self.score(probs, labels) > 0.5
