"""Utility metrics of output probabilities: accuracy, ECE, Brier, NLL."""

from __future__ import annotations

import numpy as np
import pytest

from service.audit.utility import (
    accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    utility_report,
)


def test_perfect_one_hot_predictions_have_no_calibration_error_or_brier_loss() -> None:
    labels = np.array([0, 2, 1, 2])
    probs = np.eye(3)[labels]
    assert accuracy(probs, labels) == 1.0
    assert expected_calibration_error(probs, labels) == 0.0
    assert brier_score(probs, labels) == 0.0
    assert negative_log_likelihood(probs, labels) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_uniform_predictions_have_brier_score_k_minus_one_over_k(k: int) -> None:
    labels = np.arange(20) % k
    probs = np.full((20, k), 1.0 / k)
    assert brier_score(probs, labels) == pytest.approx((k - 1) / k)
    assert negative_log_likelihood(probs, labels) == pytest.approx(np.log(k))


def test_ece_on_a_hand_worked_case() -> None:
    # Top confidences 0.90 (right), 0.91 (wrong) share bin (13/15, 14/15];
    # 0.62 (right) and 0.70 (right) sit alone in bins 9 and 10.
    probs = np.array([[0.90, 0.10], [0.91, 0.09], [0.38, 0.62], [0.30, 0.70]])
    labels = np.array([0, 1, 1, 1])
    # 2/4 * |0.5 - 0.905| + 1/4 * |1 - 0.62| + 1/4 * |1 - 0.70| = 0.2025 + 0.095 + 0.075
    assert expected_calibration_error(probs, labels) == pytest.approx(0.3725)


def test_ece_is_small_for_calibrated_predictions_and_large_for_overconfident_ones() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct = rng.random(20000) < confidence
    labels = np.where(correct, 0, 1)
    calibrated = np.column_stack([confidence, 1.0 - confidence])
    assert expected_calibration_error(calibrated, labels) < 0.02
    overconfident = np.column_stack([np.full(20000, 0.99), np.full(20000, 0.01)])
    assert expected_calibration_error(overconfident, labels) > 0.2


def test_nll_stays_finite_when_the_true_class_gets_zero_probability() -> None:
    nll = negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1]))
    assert np.isfinite(nll) and nll > 20


def test_utility_report_has_the_four_metrics() -> None:
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 1, 1])
    report = utility_report(probs, labels)
    assert set(report) == {"accuracy", "ece", "brier", "nll"}
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["brier"] == pytest.approx(brier_score(probs, labels))
