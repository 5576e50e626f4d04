"""MIDPUT (spec section 2), checked against the paper's CIFAR-10 numbers."""

from __future__ import annotations

import numpy as np
import pytest

from service.audit.midput import acc_drop, midput, midput_table, put

# Spec section 4, CIFAR-10 (AlexNet): undefended and DynaNoise rows.
UNDEFENDED = {"conf": 0.6124, "loss": 0.6180, "shadow": 0.6387, "lira": 0.6097}
DYNANOISE = {"conf": 0.5014, "loss": 0.5219, "shadow": 0.5053, "lira": 0.5342}


def test_worked_example_put_conf_from_the_spec() -> None:
    drop = acc_drop(0.7875, 0.7807)
    assert drop == pytest.approx(0.0068)
    assert put(0.6124, 0.5014, drop) == pytest.approx(0.1042)


def test_midput_table_on_the_paper_cifar10_rows() -> None:
    table = midput_table(0.7875, 0.7807, UNDEFENDED, DYNANOISE)
    assert table.acc_drop == pytest.approx(0.0068)
    assert table.improvements["conf"] == pytest.approx(0.1110)
    # Worked by hand: Imp - 0.0068 for each attack.
    expected = {"conf": 0.1042, "loss": 0.0893, "shadow": 0.1266, "lira": 0.0687}
    assert table.puts == pytest.approx(expected)
    assert table.midput == pytest.approx(0.0972)
    assert list(table.puts) == list(UNDEFENDED)
    assert table.as_dict()["midput"] == table.midput


def test_midput_is_mean_improvement_minus_acc_drop() -> None:
    rng = np.random.default_rng(0)
    undefended = dict(zip("abcdef", rng.uniform(0.5, 0.8, 6), strict=True))
    defended = dict(zip("abcdef", rng.uniform(0.5, 0.6, 6), strict=True))
    table = midput_table(0.9, 0.85, undefended, defended)
    mean_improvement = np.mean([undefended[a] - defended[a] for a in undefended])
    assert table.midput == pytest.approx(mean_improvement - 0.05)


def test_a_defense_that_costs_more_accuracy_than_it_hides_has_negative_put() -> None:
    assert put(0.60, 0.58, acc_drop(0.80, 0.70)) < 0


def test_midput_needs_matching_attacks_and_at_least_one() -> None:
    with pytest.raises(ValueError):
        midput({})
    with pytest.raises(ValueError, match="same attacks"):
        midput_table(0.8, 0.8, {"conf": 0.6}, {"loss": 0.5})
