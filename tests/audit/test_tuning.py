"""`dynanoise calibrate`'s search rules: the utility budget, the choice, the frontier and
the settings tried."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.audit.tuning import (
    BASE_VARIANCES,
    NOISE_MODES,
    PAPER,
    TEMPERATURES,
    Scored,
    Setting,
    UtilityBudget,
    choose,
    default_settings,
    frontier,
    parse_settings,
)
from service.defense import MAX_CONFIDENCE_BUCKETS, DefenseParams, OutputMode

UNDEFENDED = {"accuracy": 0.9, "ece": 0.05, "nll": 0.3, "brier": 0.1}


def _utility(accuracy: float = 0.9, ece: float = 0.05, nll: float = 0.3) -> dict[str, float]:
    return {"accuracy": accuracy, "ece": ece, "nll": nll, "brier": 0.1}


@pytest.mark.parametrize(
    ("budget", "utility", "broken"),
    [
        (UtilityBudget(), _utility(0.1, 0.9, 9.0), []),
        (UtilityBudget(max_accuracy_drop=0.25), _utility(0.65), []),  # drop == bound: within
        (UtilityBudget(max_accuracy_drop=0.01), _utility(0.88), ["accuracy drop"]),
        (UtilityBudget(max_accuracy_drop=0.0), _utility(0.95), []),  # a gain is no drop
        (UtilityBudget(max_ece=0.1), _utility(ece=0.1), []),
        (UtilityBudget(max_ece=0.1), _utility(ece=0.11), ["ECE"]),
        (UtilityBudget(max_ece=0.0), _utility(ece=0.001), ["ECE"]),
        (UtilityBudget(max_nll_increase=0.2), _utility(nll=0.5), []),
        (UtilityBudget(max_nll_increase=0.2), _utility(nll=0.51), ["NLL increase"]),
        (
            UtilityBudget(0.01, 0.1, 0.2),
            _utility(0.5, 0.5, 5.0),
            ["accuracy drop", "ECE", "NLL increase"],
        ),
        (UtilityBudget(0.01, 0.1, 0.2), _utility(0.9, 0.5, 0.3), ["ECE"]),
    ],
)
def test_violations_name_each_broken_bound(
    budget: UtilityBudget, utility: dict[str, float], broken: list[str]
) -> None:
    found = budget.violations(utility, UNDEFENDED)
    assert len(found) == len(broken)
    for message, bound in zip(found, broken, strict=True):
        assert message.startswith(bound), message


def test_a_drop_of_exactly_the_bound_in_decimal_is_within_budget() -> None:
    undefended = {**UNDEFENDED, "accuracy": 90 / 100}
    assert UtilityBudget(max_accuracy_drop=0.01).violations(_utility(89 / 100), undefended) == []


def _scored(
    name: str,
    auc: float,
    *,
    accuracy: float = 0.9,
    ece: float = 0.05,
    tpr: float | None = 0.01,
    budget: UtilityBudget | None = None,
) -> Scored:
    utility = _utility(accuracy, ece)
    worst: dict[str, Any] = {
        "auc": auc,
        "auc_ci": [auc, auc],
        "attack": "a",
        "tpr_at_1pct_fpr": tpr,
    }
    violations = (budget or UtilityBudget()).violations(utility, UNDEFENDED)
    return Scored(Setting(name, DefenseParams()), worst, utility, tuple(violations))


def test_choose_never_returns_a_setting_over_budget() -> None:
    budget = UtilityBudget(max_accuracy_drop=0.01)
    scored = [
        _scored("lowest auc, too lossy", 0.50, accuracy=0.7, budget=budget),
        _scored("within", 0.60, accuracy=0.895, budget=budget),
        _scored("within, worse", 0.65, budget=budget),
    ]
    chosen = choose(scored)
    assert chosen is not None and chosen.setting.name == "within"
    assert chosen.within_budget


def test_choose_returns_none_when_nothing_fits() -> None:
    budget = UtilityBudget(max_ece=0.0)
    assert choose([_scored("a", 0.5, budget=budget), _scored("b", 0.6, budget=budget)]) is None
    assert choose([]) is None


def test_choose_breaks_auc_ties_by_tpr_then_accuracy_then_ece() -> None:
    tied = [
        _scored("high tpr", 0.55, tpr=0.05),
        _scored("no tpr", 0.55, tpr=None),  # unknown TPR counts as the worst, 1.0
        _scored("low tpr, low accuracy", 0.55, tpr=0.01, accuracy=0.8),
        _scored("low tpr, high accuracy, high ece", 0.55, tpr=0.01, accuracy=0.9, ece=0.2),
        _scored("low tpr, high accuracy, low ece", 0.55, tpr=0.01, accuracy=0.9, ece=0.1),
        _scored("higher auc", 0.56, tpr=0.0, accuracy=1.0, ece=0.0),
    ]
    for order in (tied, tied[::-1]):
        chosen = choose(order)
        assert chosen is not None and chosen.setting.name == "low tpr, high accuracy, low ece"
    without_ece_tie = choose(tied[:3])
    assert without_ece_tie is not None and without_ece_tie.setting.name == "low tpr, low accuracy"
    assert choose(tied[:2]) is tied[0]


def _dominates(a: Scored, b: Scored) -> bool:
    """a beats b: AUC no higher and accuracy no lower, one of them strictly."""
    auc_a, auc_b = a.worst["auc"], b.worst["auc"]
    acc_a, acc_b = a.utility["accuracy"], b.utility["accuracy"]
    return auc_a <= auc_b and acc_a >= acc_b and (auc_a < auc_b or acc_a > acc_b)


@pytest.mark.parametrize("seed", range(5))
def test_frontier_is_the_non_dominated_settings_by_accuracy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scored = [
        _scored(f"s{i}", float(auc), accuracy=float(acc))
        for i, (auc, acc) in enumerate(
            zip(rng.uniform(0.5, 0.8, 30), rng.choice(np.linspace(0.5, 0.9, 9), 30), strict=True)
        )
    ]
    front = frontier(scored)
    assert front
    names = {s.setting.name for s in front}
    for s in scored:
        dominated = any(_dominates(other, s) for other in scored if other is not s)
        assert (s.setting.name in names) != dominated, s.setting.name
    accuracies = [s.utility["accuracy"] for s in front]
    assert accuracies == sorted(accuracies, reverse=True)
    aucs = [s.worst["auc"] for s in front]
    assert aucs == sorted(aucs, reverse=True)


def test_frontier_ignores_the_budget() -> None:
    budget = UtilityBudget(max_accuracy_drop=0.0)
    scored = [_scored("lossy", 0.5, accuracy=0.6, budget=budget), _scored("clean", 0.9)]
    assert [s.setting.name for s in frontier(scored)] == ["clean", "lossy"]


def test_default_settings_hold_the_paper_the_grid_and_the_lossy_modes() -> None:
    settings = default_settings()
    names = [s.name for s in settings]
    assert len(names) == len(set(names))
    assert names[0] == PAPER and settings[0].params == DefenseParams()
    assert sum(s.params == DefenseParams() for s in settings) == 1
    dynanoise = [s for s in settings if s.params.output_mode is OutputMode.DYNANOISE]
    grid = {
        (s.params.base_variance, s.params.temperature, s.params.noise_mode)
        for s in dynanoise
        if s.name != PAPER
    }
    expected = {(v, t, m) for v in BASE_VARIANCES for t in TEMPERATURES for m in NOISE_MODES}
    paper = DefenseParams()
    assert grid | {(paper.base_variance, paper.temperature, paper.noise_mode)} == expected
    assert len(dynanoise) == len(expected)
    assert all(s.params.lambda_scale == paper.lambda_scale for s in dynanoise)
    by_name = {s.name: s.params for s in settings}
    assert by_name["calibrated_label"].output_mode is OutputMode.CALIBRATED_LABEL
    coarse = sorted(
        s.params.confidence_buckets for s in settings if s.params.output_mode is OutputMode.COARSE
    )
    assert coarse == list(range(2, MAX_CONFIDENCE_BUCKETS + 1))
    for b in coarse:
        assert by_name[f"coarse B={b}"].buckets == b
    assert len(settings) == len(expected) + 1 + len(coarse)


def test_no_default_setting_releases_clean_outputs() -> None:
    for s in default_settings():
        assert s.params.base_variance > 0 and not s.params.releases_clean_outputs, s.name


def test_default_settings_take_the_other_knobs_from_the_base() -> None:
    base = DefenseParams(lambda_scale=1.0, ensemble_size=2, base_variance=0.0)
    settings = default_settings(base)
    assert settings[0].params == DefenseParams()  # the paper's setting as published
    assert all(s.params.ensemble_size == 2 for s in settings[1:])
    assert not any(s.params.releases_clean_outputs for s in settings)


def test_parse_settings_keeps_the_paper_and_rejects_unknown_names() -> None:
    chosen = parse_settings(["coarse B=3", "calibrated_label"])
    assert [s.name for s in chosen] == [PAPER, "calibrated_label", "coarse B=3"]
    assert [s.name for s in parse_settings([])] == [PAPER]
    with pytest.raises(ValueError, match="unknown settings"):
        parse_settings(["coarse B=99"])
