"""The two audit protocols, run on one defense: the paper's, and the defense-aware one.

paper (spec section 3): fixed thresholds (conf > 0.9, loss < 0.5) and attacks
fitted on UNDEFENDED shadow outputs, scored on the defended target's outputs.

defense-aware (spec section 5, Kerckhoffs): the attacker knows the mechanism and
its parameters, not the server's key. Shadow outputs go through the same defense
(its own noise, its own key), thresholds are recalibrated on them, and four more
attacks run: label-only, repeated-query averaging, logit recovery (T log p) and
Carlini et al.'s LiRA (online and offline) with many shadows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn import metrics

from ..defense import no_defense
from .attacks import (
    ConfidenceAttack,
    LabelOnlyAttack,
    LossAttack,
    MembershipAttack,
    ShadowModelAttack,
    defense_aware_attacks,
    entropy_attack,
    lira_offline,
    lira_online,
    logit_confidence,
    modified_entropy_attack,
    paper_attacks,
    recover_probabilities,
)
from .defenses import AuditedDefense
from .scoring import attack_report
from .shadows import Rows, ShadowLogits, stable_rng

PROTOCOLS = ("paper", "defense-aware")
FloatArray = NDArray[np.float64]
Query = Callable[[NDArray[Any]], NDArray[Any]]

LIRA_GLOBAL_VARIANCE_BELOW = 64
"""Carlini et al. fit one shared variance when there are fewer shadows than this."""


@dataclass(frozen=True, eq=False)
class EvalSet:
    """The balanced member / non-member evaluation rows of the target."""

    rows: Rows
    is_member: NDArray[np.bool_]


@dataclass
class AttackResult:
    """attack_report's numbers (plus extras such as the chosen scorer) and the ROC curve."""

    report: dict[str, Any]
    fpr: FloatArray
    tpr: FloatArray


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
    return AttackResult(report, fpr, tpr)


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
    floor, all scored on the defended target's outputs ``target_probs``."""
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


def _scorers() -> list[MembershipAttack]:
    """Candidates for 'the best scorer on top' of averaged or recovered outputs."""
    return [
        ConfidenceAttack(recalibrate=True),
        LossAttack(recalibrate=True),
        entropy_attack(),
        modified_entropy_attack(),
        ShadowModelAttack(),
    ]


def best_scorer(
    shadow_in: tuple[NDArray[Any], NDArray[Any]],
    shadow_out: tuple[NDArray[Any], NDArray[Any]],
) -> MembershipAttack:
    """The candidate scorer with the highest AUC on the attacker's own shadow outputs
    (chosen without looking at the target's members)."""
    best, best_auc = None, -1.0
    truth = np.r_[np.ones(len(shadow_in[1]), bool), np.zeros(len(shadow_out[1]), bool)]
    for scorer in _scorers():
        scorer.fit(*shadow_in, *shadow_out)
        scores = np.r_[scorer.score(*shadow_in), scorer.score(*shadow_out)]
        auc = float(metrics.roc_auc_score(truth, scores))
        if auc > best_auc:
            best, best_auc = scorer, auc
    assert best is not None
    return best


def _defended(
    defense: AuditedDefense,
    logits: NDArray[Any],
    rows: Rows,
    rng: np.random.Generator,
    n_queries: int = 1,
) -> FloatArray:
    """What the attacker's copy of the defense answers, averaged over n_queries calls."""
    total = np.zeros(logits.shape, dtype=np.float64)
    for _ in range(n_queries):
        total += defense(logits, rows.x, rng)
    return total / n_queries


def defense_aware_protocol(
    shadows: ShadowLogits,
    defense: AuditedDefense,
    query: Query,
    target_probs: NDArray[Any],
    eval_set: EvalSet,
    *,
    seed: int,
    n_queries: int = 16,
    n_bootstrap: int = 200,
    progress: Callable[[str], None] | None = None,
) -> dict[str, AttackResult]:
    """Every attack, fitted on shadow outputs defended by the attacker's copy of ``defense``.

    ``query`` asks the defended target (used for repeated-query averaging);
    ``target_probs`` is its single answer on the evaluation rows.
    """
    tell = progress or (lambda _: None)
    rng = stable_rng(seed, "attacker", defense.name)
    mimic = defense.for_attacker(rng)
    y_in, y_out = shadows.shadow_in.y, shadows.shadow_out.y
    defended_in = [_defended(mimic, z, shadows.shadow_in, rng) for z in shadows.paper_in]
    defended_out = [_defended(mimic, z, shadows.shadow_out, rng) for z in shadows.paper_out]
    first_in, first_out = (defended_in[0], y_in), (defended_out[0], y_out)
    stacked_in = (np.concatenate(defended_in), np.tile(y_in, len(defended_in)))
    stacked_out = (np.concatenate(defended_out), np.tile(y_out, len(defended_out)))

    def bootstrap_rng(name: str) -> np.random.Generator:
        return stable_rng(seed, "defense-aware", defense.name, name)

    results: dict[str, AttackResult] = {}
    tell("recalibrated attacks")
    for attack in defense_aware_attacks():
        fit_in, fit_out = (
            (stacked_in, stacked_out) if attack.name == "lira" else (first_in, first_out)
        )
        results[attack.name] = _fit_and_evaluate(
            attack, fit_in, fit_out, target_probs, eval_set, bootstrap_rng(attack.name), n_bootstrap
        )

    tell(f"averaging {n_queries} queries")
    avg_in = (_defended(mimic, shadows.paper_in[0], shadows.shadow_in, rng, n_queries), y_in)
    avg_out = (_defended(mimic, shadows.paper_out[0], shadows.shadow_out, rng, n_queries), y_out)
    averaged_target = np.mean([query(eval_set.rows.x) for _ in range(n_queries)], axis=0)
    results["averaging"] = _with_scorer(
        best_scorer(avg_in, avg_out),
        averaged_target,
        eval_set,
        bootstrap_rng("averaging"),
        n_bootstrap,
        n_queries=n_queries,
    )

    tell("logit recovery")
    t = defense.temperature
    rec_in = (recover_probabilities(first_in[0], t), y_in)
    rec_out = (recover_probabilities(first_out[0], t), y_out)
    results["logit_recovery"] = _with_scorer(
        best_scorer(rec_in, rec_out),
        recover_probabilities(target_probs, t),
        eval_set,
        bootstrap_rng("logit_recovery"),
        n_bootstrap,
        temperature=t,
    )

    tell("Carlini LiRA")
    results.update(
        carlini_lira(shadows, mimic, target_probs, eval_set, rng, bootstrap_rng, n_bootstrap)
    )
    return results


def _with_scorer(
    scorer: MembershipAttack,
    probs: NDArray[Any],
    eval_set: EvalSet,
    rng: np.random.Generator,
    n_bootstrap: int,
    **extra: Any,
) -> AttackResult:
    y = eval_set.rows.y
    result = evaluate(scorer.score(probs, y), scorer.predict(probs, y), eval_set, rng, n_bootstrap)
    result.report.update(scorer=scorer.name, **extra)
    return result


def carlini_lira(
    shadows: ShadowLogits,
    mimic: AuditedDefense,
    target_probs: NDArray[Any],
    eval_set: EvalSet,
    rng: np.random.Generator,
    bootstrap_rng: Callable[[str], np.random.Generator],
    n_bootstrap: int,
) -> dict[str, AttackResult]:
    """LiRA of Carlini et al. 2022 on defended outputs: shadow_phi (n_shadows, n_pool)
    of the pool shadows through ``mimic``, target phi from ``target_probs``.

    Online: member iff the likelihood ratio > 0. Offline: member iff phi lies above
    the median of its out distribution (P(phi_out > phi) < 1/2).
    """
    pool = shadows.pool
    shadow_phi = np.stack(
        [logit_confidence(mimic(z, pool.x, rng), pool.y) for z in shadows.pool_logits]
    )
    index = shadows.eval_in_pool
    phi = shadow_phi[:, index]
    mask = shadows.pool_in_mask[:, index]
    target_phi = logit_confidence(target_probs, eval_set.rows.y)
    shared = len(shadows.pool_logits) < LIRA_GLOBAL_VARIANCE_BELOW
    online = lira_online(target_phi, phi, mask, global_variance=shared)
    offline = lira_offline(target_phi, phi, mask, global_variance=shared)
    n = len(shadows.pool_logits)
    return {
        "lira_online": _lira_result(
            online, online > 0.0, eval_set, bootstrap_rng("lira_online"), n_bootstrap, n
        ),
        "lira_offline": _lira_result(
            offline, offline > np.log(2.0), eval_set, bootstrap_rng("lira_offline"), n_bootstrap, n
        ),
    }


def _lira_result(
    scores: FloatArray,
    predictions: NDArray[np.bool_],
    eval_set: EvalSet,
    rng: np.random.Generator,
    n_bootstrap: int,
    n_shadows: int,
) -> AttackResult:
    result = evaluate(scores, predictions, eval_set, rng, n_bootstrap)
    result.report["n_shadows"] = n_shadows
    return result


def attack_names(protocol: str) -> list[str]:
    """The attacks a protocol reports, in table order."""
    if protocol == "paper":
        return [a.name for a in paper_attacks()] + ["label_only"]
    return [a.name for a in defense_aware_attacks()] + [
        "averaging",
        "logit_recovery",
        "lira_online",
        "lira_offline",
    ]
