"""The paper's protocol (spec section 3), repeated, with MIDPUT and its interval.

Fixed thresholds (conf > 0.9, loss < 0.5) and attacks fitted on UNDEFENDED shadow
outputs, scored on the defended target's outputs on the paper's own split. The
whole protocol runs once per repeat (server noise draw, keyed secret, bootstrap
seed); MIDPUT and every AUC carry a 95 % interval over the repeats. The
defense-aware protocol against the adaptive attacker is `service.audit.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn import metrics

from ..defense import no_defense
from .attacks import PAPER_ATTACK_NAMES, LabelOnlyAttack, MembershipAttack, paper_attacks
from .rows import Rows
from .scoring import attack_report
from .seeds import stable_rng

PROTOCOLS = ("paper", "defense-aware")
PAPER_ATTACKS = (*PAPER_ATTACK_NAMES, "label_only")
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class EvalSet:
    """The balanced member / non-member evaluation rows of the target."""

    rows: Rows
    is_member: NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class ShadowLogits:
    """Clean logits of the paper's shadows (`service.audit.shadows` trains them):
    paper_in[j] / paper_out[j] is shadow j (trained on ``shadow_in``) on its training
    rows and on held-out rows; j = 0 also serves the shadow-model attack."""

    shadow_in: Rows
    shadow_out: Rows
    paper_in: list[NDArray[np.float32]]
    paper_out: list[NDArray[np.float32]]


class FittedOnEvaluationRows(ValueError):
    """An attack was about to learn from rows it is evaluated on."""


def refuse_overlap(shadows: ShadowLogits, eval_set: EvalSet) -> None:
    """Raise unless the shadows' rows and the evaluation rows are disjoint."""
    fitted = np.union1d(shadows.shadow_in.index, shadows.shadow_out.index)
    shared = np.intersect1d(fitted, eval_set.rows.index)
    if shared.size:
        raise FittedOnEvaluationRows(
            f"{shared.size} evaluation rows are among the shadows' training or calibration "
            f"rows (e.g. row {int(shared[0])}): attacks are fitted on the attacker's rows only"
        )


@dataclass
class AttackResult:
    """attack_report's numbers, the ROC curve, and the scores behind them."""

    report: dict[str, Any]
    fpr: FloatArray
    tpr: FloatArray
    scores: FloatArray


def evaluate(
    scores: NDArray[Any],
    predictions: NDArray[Any],
    eval_set: EvalSet,
    rng: np.random.Generator,
    n_bootstrap: int,
) -> AttackResult:
    """Score one attack on the evaluation set: report with bootstrap CIs and a thinned ROC."""
    s = np.asarray(scores, dtype=np.float64)
    report = attack_report(s, predictions, eval_set.is_member, rng=rng, n_bootstrap=n_bootstrap)
    fpr, tpr, _ = metrics.roc_curve(eval_set.is_member, s, drop_intermediate=True)
    return AttackResult(report, fpr, tpr, s)


def _fit_and_evaluate(
    attack: MembershipAttack,
    shadow_in: tuple[NDArray[Any], NDArray[Any]],
    shadow_out: tuple[NDArray[Any], NDArray[Any]],
    target_probs: NDArray[Any],
    eval_set: EvalSet,
    rng: np.random.Generator,
    n_bootstrap: int,
) -> AttackResult:
    attack.fit(*shadow_in, *shadow_out)
    y = eval_set.rows.y
    return evaluate(
        attack.score(target_probs, y), attack.predict(target_probs, y), eval_set, rng, n_bootstrap
    )


def paper_protocol(
    shadows: ShadowLogits,
    target_probs: NDArray[Any],
    eval_set: EvalSet,
    *,
    seed: int,
    n_bootstrap: int = 200,
) -> dict[str, AttackResult]:
    """The paper's six attacks, fitted on undefended shadow outputs, plus the label-only
    floor, all scored on the defended target's outputs ``target_probs``.

    Raises ``FittedOnEvaluationRows`` when a shadow row is an evaluation row: attacks
    are only ever fitted on the attacker's own rows.
    """
    refuse_overlap(shadows, eval_set)
    y_in, y_out = shadows.shadow_in.y, shadows.shadow_out.y
    first_in = (no_defense(shadows.paper_in[0]), y_in)
    first_out = (no_defense(shadows.paper_out[0]), y_out)
    stacked_in = (
        no_defense(np.concatenate(shadows.paper_in)),
        np.tile(y_in, len(shadows.paper_in)),
    )
    stacked_out = (
        no_defense(np.concatenate(shadows.paper_out)),
        np.tile(y_out, len(shadows.paper_out)),
    )
    results: dict[str, AttackResult] = {}
    for attack in [*paper_attacks(), LabelOnlyAttack()]:
        fit_in, fit_out = (
            (stacked_in, stacked_out) if attack.name == "lira" else (first_in, first_out)
        )
        results[attack.name] = _fit_and_evaluate(
            attack,
            fit_in,
            fit_out,
            target_probs,
            eval_set,
            stable_rng(seed, "paper", attack.name),
            n_bootstrap,
        )
    return results
