"""The audit's statistics rules: TPR only where the non-members back it, intervals
over repeats and targets, 3 significant digits, and the gate's verdict."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.audit.gate import gate_verdict
from service.audit.scoring import attack_report, tpr_supported
from service.audit.statistics import mean_interval, repeated_attack_metrics, sig3


@pytest.mark.parametrize(
    ("n_nonmembers", "fpr", "supported"),
    [(100, 0.01, False), (999, 0.01, False), (1000, 0.01, True), (9999, 0.001, False)],
)
def test_tpr_rule_needs_ten_over_fpr_nonmembers(
    n_nonmembers: int, fpr: float, supported: bool
) -> None:
    assert tpr_supported(n_nonmembers, fpr) is supported


def test_attack_report_gives_no_tpr_the_evaluation_set_cannot_carry() -> None:
    rng = np.random.default_rng(0)
    small = attack_report(
        rng.normal(size=200), rng.random(200) < 0.5, np.r_[np.ones(100), np.zeros(100)], rng=rng
    )
    assert small["tpr_at_1pct_fpr"] is None and small["ci"]["tpr_at_1pct_fpr"] is None
    assert small["tpr_at_0.1pct_fpr"] is None and small["n_non_members"] == 100
    is_member = np.r_[np.ones(1000), np.zeros(1000)].astype(bool)
    large = attack_report(rng.normal(size=2000) + is_member, is_member, is_member, rng=rng)
    assert large["tpr_at_1pct_fpr"] is not None and large["tpr_at_0.1pct_fpr"] is None


def test_one_class_attacks_are_flagged() -> None:
    rng = np.random.default_rng(1)
    is_member = np.r_[np.ones(50), np.zeros(50)].astype(bool)
    scores = rng.normal(size=100)
    assert attack_report(scores, np.zeros(100, bool), is_member, rng=rng)["one_class"]
    assert not attack_report(scores, scores > 0, is_member, rng=rng)["one_class"]


def _world(
    rng: np.random.Generator, n_targets: int, n_rows: int, signal: float
) -> tuple[np.ndarray, np.ndarray]:
    is_member = rng.random((n_targets, n_rows)) < 0.5
    scores = rng.normal(size=(3, n_targets, n_rows)) + signal * is_member
    return scores, is_member


def test_interval_over_repeats_and_targets_covers_the_truth() -> None:
    """AUC of N(d, 1) vs N(0, 1) is Phi(d / sqrt 2); the interval must cover it in
    most of 40 independent worlds (nominal 95 %)."""
    from scipy.stats import norm

    truth = float(norm.cdf(0.5 / np.sqrt(2.0)))
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(40):
        scores, is_member = _world(rng, 20, 50, 0.5)
        report = repeated_attack_metrics(scores, is_member, rng=rng, n_bootstrap=200)
        low, high = report["auc_ci"]
        covered += low <= truth <= high
    assert covered >= 34  # P(Binomial(40, 0.95) < 34) < 0.01


def test_repeated_metrics_apply_the_tpr_rule_and_count_pairs() -> None:
    rng = np.random.default_rng(3)
    scores, is_member = _world(rng, 30, 80, 1.0)
    report = repeated_attack_metrics(scores, is_member, rng=rng, n_bootstrap=50)
    assert report["member_pairs"] + report["non_member_pairs"] == 30 * 80
    assert report["repeats"] == 3 and len(report["by_repeat"]["auc"]) == 3
    assert report["tpr_at_1pct_fpr"] is not None and report["tpr_at_0.1pct_fpr"] is None
    one_target = repeated_attack_metrics(scores[:, :1], is_member[:1], rng=rng, n_bootstrap=50)
    assert one_target["tpr_at_1pct_fpr"] is None  # 80 rows cannot back 1 % FPR
    assert one_target["auc_ci"][0] < one_target["auc"] < one_target["auc_ci"][1]


def test_mean_interval_is_students_t() -> None:
    mean, low, high = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean - low == pytest.approx(high - mean)
    assert mean == 3.0 and high - mean == pytest.approx(2.776 * np.sqrt(2.5) / np.sqrt(5), rel=1e-3)
    assert mean_interval([0.2, 0.2]) == (0.2, 0.2, 0.2)


def test_three_significant_digits() -> None:
    assert sig3(0.84449) == "0.844" and sig3(0.0123456) == "0.0123" and sig3(None) == "-"


def _results(auc: float, tpr: float | None) -> dict[str, Any]:
    worst = {
        "auc": auc,
        "auc_ci": [auc - 0.01, auc + 0.01],
        "attack": "lira_online/near_duplicate/64",
        "tpr_at_1pct_fpr": tpr,
        "tpr_at_1pct_fpr_ci": None,
        "tpr_attack": "rmia/near_duplicate/64",
    }
    return {
        "worst_case": {
            "no_defense": {"defense-aware": {**worst, "auc": 0.99}},
            "dynanoise_keyed": {"paper": {**worst, "auc": 0.55}, "defense-aware": worst},
        }
    }


def test_gate_names_the_attack_that_exceeds_a_bound() -> None:
    verdict = gate_verdict(_results(0.84, 0.3), max_auc=0.6, max_tpr_at_1pct_fpr=0.02)
    assert not verdict["passed"]
    assert [(v["defense"], v["metric"], v["attack"]) for v in verdict["violations"]] == [
        ("dynanoise_keyed", "auc", "lira_online/near_duplicate/64"),
        ("dynanoise_keyed", "tpr_at_1pct_fpr", "rmia/near_duplicate/64"),
    ]
    assert all(v["protocol"] == "defense-aware" for v in verdict["violations"])


def test_gate_passes_within_bounds_and_ignores_the_undefended_baseline() -> None:
    verdict = gate_verdict(_results(0.58, 0.01), max_auc=0.6, max_tpr_at_1pct_fpr=0.02)
    assert verdict["passed"] and verdict["violations"] == []
    assert verdict["bounds"] == {"max_auc": 0.6, "max_tpr_at_1pct_fpr": 0.02}


def test_gate_fails_a_bound_the_evaluation_cannot_measure() -> None:
    assert gate_verdict(_results(0.58, None), max_auc=0.6)["passed"]
    verdict = gate_verdict(_results(0.58, None), max_tpr_at_1pct_fpr=0.02)
    (violation,) = verdict["violations"]
    assert violation["value"] is None and "too few non-member pairs" in violation["attack"]
