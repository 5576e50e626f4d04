"""Membership-inference attacks on output probabilities: pure functions over numpy arrays.

Every attack class follows :class:`MembershipAttack` (``fit`` on shadow in/out
outputs, ``score`` higher = member, ``predict`` its own rule). Carlini et al.'s
LiRA works on shadow matrices instead and is offered as two functions.
"""

from .base import AttackNotFitted, MembershipAttack
from .features import (
    FEATURE_NAMES,
    LOG_FLOOR,
    as_probs_and_labels,
    cross_entropy,
    entropy,
    feature_matrix,
    logit_confidence,
    max_probability,
    modified_entropy,
    true_class_probability,
)
from .label_only import LabelOnlyAttack, label_only_accuracy
from .lira import PaperLiRAAttack, example_gaussians, gaussian_log_pdf, lira_offline, lira_online
from .queries import average_queries, recover_logits, recover_probabilities
from .shadow import ShadowModelAttack
from .threshold import (
    ClassThresholdAttack,
    ConfidenceAttack,
    LossAttack,
    best_threshold,
    entropy_attack,
    modified_entropy_attack,
)

PAPER_ATTACK_NAMES = ("conf", "loss", "shadow", "lira", "entropy", "mentr")
"""The six attacks the PoPETs artifact averages into MIDPUT, in its order."""


def paper_attacks() -> list[MembershipAttack]:
    """Fresh instances of the paper's six attacks, fixed thresholds never recalibrated."""
    return [
        ConfidenceAttack(),
        LossAttack(),
        ShadowModelAttack(),
        PaperLiRAAttack(),
        entropy_attack(),
        modified_entropy_attack(),
    ]


def defense_aware_attacks() -> list[MembershipAttack]:
    """The paper's attacks with recalibrated thresholds, plus the label-only floor.

    Fit them on shadow outputs that went through the same defense (Kerckhoffs).
    """
    return [
        ConfidenceAttack(recalibrate=True),
        LossAttack(recalibrate=True),
        ShadowModelAttack(),
        PaperLiRAAttack(),
        entropy_attack(),
        modified_entropy_attack(),
        LabelOnlyAttack(),
    ]


__all__ = [
    "FEATURE_NAMES",
    "LOG_FLOOR",
    "PAPER_ATTACK_NAMES",
    "AttackNotFitted",
    "ClassThresholdAttack",
    "ConfidenceAttack",
    "LabelOnlyAttack",
    "LossAttack",
    "MembershipAttack",
    "PaperLiRAAttack",
    "ShadowModelAttack",
    "as_probs_and_labels",
    "average_queries",
    "best_threshold",
    "cross_entropy",
    "defense_aware_attacks",
    "entropy",
    "entropy_attack",
    "example_gaussians",
    "feature_matrix",
    "gaussian_log_pdf",
    "label_only_accuracy",
    "lira_offline",
    "lira_online",
    "logit_confidence",
    "max_probability",
    "modified_entropy",
    "paper_attacks",
    "recover_logits",
    "recover_probabilities",
    "true_class_probability",
]
