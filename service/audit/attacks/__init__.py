"""Membership-inference attacks on output probabilities: pure functions over numpy arrays.

Every attack class follows :class:`MembershipAttack` (``fit`` on shadow in/out
outputs, ``score`` higher = member, ``predict`` its own rule): the paper's attacks.
Attacks that calibrate per example on many shadow models (Carlini et al.'s LiRA,
RMIA) work on (shadows, rows) matrices and are functions; so are the adaptive
attacker's tools (near-duplicates, logit-space averaging, the answer spread,
parameter-change differencing) and the label-only boundary-distance attack.
"""

from .adaptive import (
    QUERY_BUDGETS,
    answer_spread,
    averaged_logits,
    difference_parameter_change,
    near_duplicates,
)
from .base import AttackNotFitted, MembershipAttack
from .boundary import LabelOnlyScores, boundary_distance, label_robustness
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
from .lira import (
    PaperLiRAAttack,
    example_gaussians,
    gaussian_log_pdf,
    lira_leave_one_out,
    lira_offline,
    lira_online,
)
from .queries import recover_logits
from .rmia import rmia_scores
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


__all__ = [
    "FEATURE_NAMES",
    "LOG_FLOOR",
    "PAPER_ATTACK_NAMES",
    "QUERY_BUDGETS",
    "AttackNotFitted",
    "ClassThresholdAttack",
    "ConfidenceAttack",
    "LabelOnlyAttack",
    "LabelOnlyScores",
    "LossAttack",
    "MembershipAttack",
    "PaperLiRAAttack",
    "ShadowModelAttack",
    "answer_spread",
    "as_probs_and_labels",
    "averaged_logits",
    "best_threshold",
    "boundary_distance",
    "cross_entropy",
    "difference_parameter_change",
    "entropy",
    "entropy_attack",
    "example_gaussians",
    "feature_matrix",
    "gaussian_log_pdf",
    "label_only_accuracy",
    "label_robustness",
    "lira_leave_one_out",
    "lira_offline",
    "lira_online",
    "logit_confidence",
    "max_probability",
    "modified_entropy",
    "near_duplicates",
    "paper_attacks",
    "recover_logits",
    "rmia_scores",
    "true_class_probability",
]
