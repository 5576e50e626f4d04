"""Attack-quality metrics: AUC, TPR at low FPR, and the bootstrapped attack report."""

from __future__ import annotations

import numpy as np
import pytest

from service.audit.scoring import REPORT_KEYS, attack_report, roc_auc, roc_curve, tpr_at_fpr


def _leaky_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = rng.normal(size=2 * n) + 1.0 * is_member
    return scores, is_member


def test_auc_is_one_for_a_perfect_scorer() -> None:
    is_member = np.array([True, True, False, False, True])
    scores = np.array([0.9, 0.8, 0.1, 0.3, 0.7])
    assert roc_auc(scores, is_member) == 1.0


def test_auc_is_one_half_for_a_random_scorer() -> None:
    rng = np.random.default_rng(0)
    is_member = rng.random(20000) < 0.5
    assert roc_auc(rng.random(20000), is_member) == pytest.approx(0.5, abs=0.015)


def test_auc_counts_ties_as_one_half() -> None:
    assert roc_auc(np.zeros(4), np.array([True, False, True, False])) == 0.5


def test_tpr_at_fpr_on_a_hand_worked_case() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2, 0.1])
    is_member = np.array([True, True, True, False, False, False, False])
    # No false positive allowed: threshold above 0.7 catches 0.9 and 0.8 -> 2/3.
    assert tpr_at_fpr(scores, is_member, 0.0) == pytest.approx(2 / 3)
    # 20 % of 4 non-members still allows none (FPR moves in steps of 1/4).
    assert tpr_at_fpr(scores, is_member, 0.2) == pytest.approx(2 / 3)
    # One false positive (0.7): threshold just above 0.3 catches every member.
    assert tpr_at_fpr(scores, is_member, 0.25) == 1.0


def test_tpr_at_fpr_never_splits_tied_scores() -> None:
    scores = np.array([0.5, 0.5, 0.2])
    is_member = np.array([True, False, True])
    # The member at 0.5 cannot be caught without its tied non-member.
    assert tpr_at_fpr(scores, is_member, 0.0) == 0.0
    assert tpr_at_fpr(scores, is_member, 1.0) == 1.0


@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.01, 0.1, 0.5])
def test_tpr_at_fpr_is_the_best_point_of_the_full_roc_curve(fpr: float) -> None:
    scores, is_member = _leaky_scores(1, 800)
    scores = np.round(scores, 1)  # ties, so the ROC has diagonal segments
    curve_fpr, curve_tpr, _ = roc_curve(scores, is_member)
    assert tpr_at_fpr(scores, is_member, fpr) == pytest.approx(curve_tpr[curve_fpr <= fpr].max())


def test_metrics_reject_a_set_without_non_members() -> None:
    with pytest.raises(ValueError, match="non-member"):
        roc_auc(np.array([0.1, 0.2]), np.array([True, True]))


def test_attack_report_point_estimates_match_the_single_metrics() -> None:
    scores, is_member = _leaky_scores(2, 6000)
    is_member[:100] = False  # unbalanced: accuracy and balanced accuracy differ
    predictions = scores > 0.5
    report = attack_report(scores, predictions, is_member, rng=np.random.default_rng(0))
    assert set(report) == {*REPORT_KEYS, "ci", "n_members", "n_non_members", "one_class"}
    assert set(report["ci"]) == set(REPORT_KEYS)
    assert report["n_members"] + report["n_non_members"] == len(scores)
    assert report["accuracy"] == pytest.approx(np.mean(predictions == is_member))
    tpr, tnr = predictions[is_member].mean(), (~predictions[~is_member]).mean()
    assert report["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2)
    assert report["auc"] == pytest.approx(roc_auc(scores, is_member))
    assert report["tpr_at_1pct_fpr"] == pytest.approx(tpr_at_fpr(scores, is_member, 0.01))
    # ~3,000 non-members back 1 % FPR (>= 1,000) but not 0.1 % (< 10,000)
    assert report["tpr_at_0.1pct_fpr"] is None


def test_bootstrap_intervals_contain_the_point_estimates() -> None:
    scores, is_member = _leaky_scores(3, 1000)
    report = attack_report(scores, scores > 0.5, is_member, rng=np.random.default_rng(1))
    for key in REPORT_KEYS:
        if report[key] is None:  # TPR at an FPR the non-members cannot back
            continue
        low, high = report["ci"][key]
        assert low <= report[key] <= high
    low, high = report["ci"]["auc"]
    assert 0.0 < high - low < 0.1


def test_bootstrap_intervals_narrow_as_the_sample_grows() -> None:
    widths = []
    for n in (100, 3000):
        scores, is_member = _leaky_scores(4, n)
        report = attack_report(scores, scores > 0.5, is_member, rng=np.random.default_rng(2))
        widths.append(report["ci"]["auc"][1] - report["ci"]["auc"][0])
    assert widths[1] < widths[0] / 3


def test_attack_report_is_reproducible_with_the_same_seed() -> None:
    scores, is_member = _leaky_scores(5, 200)
    first = attack_report(scores, scores > 0, is_member, rng=np.random.default_rng(7))
    second = attack_report(scores, scores > 0, is_member, rng=np.random.default_rng(7))
    assert first == second
