"""RMIA (Zarifzadeh et al. 2024): power where difficulty varies, chance without signal, contract."""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from service.audit.attacks.rmia import fraction_dominated, rmia_marginal, rmia_scores


class World(NamedTuple):
    target_x: NDArray[np.float64]
    reference_x: NDArray[np.float64]
    reference_x_in: NDArray[np.bool_]
    target_z: NDArray[np.float64]
    reference_z: NDArray[np.float64]
    reference_z_in: NDArray[np.bool_]
    is_member: NDArray[np.bool_]


def _world(
    seed: int, *, shift: float = 2.0, target_leaks: bool = True, n: int = 2000, m: int = 1000
) -> World:
    """p = sigmoid(difficulty_e + shift * trained_on + noise), difficulty varying widely.

    Each reference model trains on a random half of the candidates and on no
    population row; the target trains on its own random half. With
    ``target_leaks`` False the target's outputs ignore its membership (null world).
    """
    rng = np.random.default_rng(seed)
    n_refs = 8
    d_x, d_z = rng.normal(0.0, 3.0, n), rng.normal(0.0, 3.0, m)
    in_x = rng.random((n_refs, n)) < 0.5
    in_z = np.zeros((n_refs, m), bool)
    ref_x = expit(d_x + shift * in_x + rng.normal(0.0, 0.5, (n_refs, n)))
    ref_z = expit(d_z + rng.normal(0.0, 0.5, (n_refs, m)))
    is_member = rng.random(n) < 0.5
    target_x = expit(d_x + shift * (is_member & target_leaks) + rng.normal(0.0, 0.5, n))
    target_z = expit(d_z + rng.normal(0.0, 0.5, m))
    return World(target_x, ref_x, in_x, target_z, ref_z, in_z, is_member)


def _scores(w: World, **kwargs: float | None) -> NDArray[np.float64]:
    return rmia_scores(
        w.target_x,
        w.reference_x,
        w.reference_x_in,
        w.target_z,
        w.reference_z,
        w.reference_z_in,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("offline_a", [None, 0.3, 1.0])
def test_rmia_beats_a_global_threshold_when_difficulty_varies(offline_a: float | None) -> None:
    w = _world(0)
    rmia = roc_auc_score(w.is_member, _scores(w, offline_a=offline_a))
    global_threshold = roc_auc_score(w.is_member, w.target_x)
    assert rmia > 0.75
    assert rmia > global_threshold + 0.1


@pytest.mark.parametrize("offline_a", [None, 0.3])
def test_rmia_is_at_chance_when_the_target_does_not_leak(offline_a: float | None) -> None:
    w = _world(1, target_leaks=False)
    assert roc_auc_score(w.is_member, _scores(w, offline_a=offline_a)) == pytest.approx(
        0.5, abs=0.04
    )


def test_offline_scores_never_read_in_references() -> None:
    w = _world(2)
    w.reference_x_in[0] = False  # every candidate has at least one OUT reference
    rng = np.random.default_rng(3)
    scrambled = np.where(w.reference_x_in, rng.random(w.reference_x.shape), w.reference_x)
    w2 = w._replace(reference_x=scrambled)
    np.testing.assert_array_equal(_scores(w, offline_a=0.3), _scores(w2, offline_a=0.3))
    assert not np.array_equal(_scores(w), _scores(w2))  # the online attack does read them


def test_marginal_follows_the_online_and_offline_formulas() -> None:
    ref = np.array([[0.2, 0.9, 0.4], [0.6, 0.7, 0.8]])
    in_mask = np.array([[False, True, True], [True, False, True]])
    np.testing.assert_allclose(rmia_marginal(ref, in_mask), [0.4, 0.8, 0.6])
    offline = rmia_marginal(ref, in_mask, offline_a=0.5)
    # columns 0, 1: OUT means 0.2, 0.7; column 2 has no OUT reference: mean of all
    np.testing.assert_allclose(offline, [(1.5 * 0.2 + 0.5) / 2, (1.5 * 0.7 + 0.5) / 2, 0.6])
    np.testing.assert_allclose(rmia_marginal(ref, in_mask, offline_a=1.0)[:2], [0.2, 0.7])


def test_a_tie_counts_as_dominated() -> None:
    """score(x) = Pr_z[LR(x, z) >= gamma]: equal ratios count, as in the paper."""
    refs, no_in = np.full((2, 2), 0.5), np.zeros((2, 2), bool)
    p = np.array([0.2, 0.4])
    np.testing.assert_array_equal(rmia_scores(p, refs, no_in, p, refs, no_in), [0.5, 1.0])
    np.testing.assert_array_equal(
        rmia_scores(p, refs, no_in, p, refs, no_in, gamma=2.0), [0.0, 0.5]
    )


def test_scores_are_fractions_of_the_population() -> None:
    w = _world(4, m=250)
    for offline_a in (None, 0.0, 0.5):
        scores = _scores(w, offline_a=offline_a)
        assert scores.shape == w.target_x.shape
        assert np.all((scores >= 0.0) & (scores <= 1.0))
        np.testing.assert_allclose(scores * 250, np.round(scores * 250), atol=1e-9)


def test_scores_are_monotone_in_the_target_probability() -> None:
    w = _world(5)
    raised = w._replace(target_x=np.minimum(w.target_x + 0.1 * w.target_x * (1 - w.target_x), 1))
    before, after = _scores(w), _scores(raised)
    assert np.all(after >= before)
    assert np.any(after > before)
    # identical references: the score orders candidates exactly as target_x does
    same = w._replace(reference_x=np.repeat(w.reference_x[:, :1], w.target_x.size, axis=1))
    order = np.argsort(same.target_x)
    assert np.all(np.diff(_scores(same)[order]) >= 0)


def test_larger_gamma_never_raises_a_score() -> None:
    w = _world(6)
    by_gamma = [_scores(w, gamma=g) for g in (0.25, 0.5, 1.0, 2.0, 8.0)]
    for low, high in pairwise(by_gamma):
        assert np.all(high <= low)
    assert np.any(by_gamma[-1] < by_gamma[0])


@pytest.mark.parametrize("offline_a", [None, 0.3])
@pytest.mark.parametrize("gamma", [0.7, 1.0, 2.0])
def test_sorted_count_equals_brute_force_pairwise_ratios(
    offline_a: float | None, gamma: float
) -> None:
    rng = np.random.default_rng(7)
    n, m, n_refs = 40, 30, 4
    t_x, t_z = rng.random(n), rng.random(m)
    ref_x, ref_z = rng.random((n_refs, n)), rng.random((n_refs, m))
    in_x, in_z = rng.random((n_refs, n)) < 0.5, rng.random((n_refs, m)) < 0.3
    t_z[:3] = 0.0  # LR(z) = 0: the ratio is +inf, so every x counts it
    lr_x = t_x / rmia_marginal(ref_x, in_x, offline_a=offline_a)
    lr_z = t_z / rmia_marginal(ref_z, in_z, offline_a=offline_a)
    with np.errstate(divide="ignore"):
        expected = (lr_x[:, None] / lr_z[None, :] >= gamma).mean(axis=1)
    got = rmia_scores(t_x, ref_x, in_x, t_z, ref_z, in_z, offline_a=offline_a, gamma=gamma)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(fraction_dominated(lr_x, lr_z, gamma), expected)


def test_zero_probabilities_stay_finite() -> None:
    scores = rmia_scores(
        np.array([0.0, 1e-8, 0.5]),
        np.zeros((2, 3), np.float32),
        np.zeros((2, 3), bool),
        np.array([0.0, 0.3]),
        np.zeros((2, 2)),
        np.zeros((2, 2), bool),
    )
    assert np.all(np.isfinite(scores))
    assert scores[2] >= scores[1] >= scores[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"target_x": np.full(4, 0.5)}, "reference_x has shape"),
        ({"reference_x_in": np.zeros((2, 2), bool)}, "reference_x_in must have the shape"),
        (
            {"reference_z": np.full((3, 2), 0.5), "reference_z_in": np.zeros((3, 2), bool)},
            "reference_z has shape",
        ),
        ({"reference_z_in": np.zeros((2, 3), bool)}, "reference_z_in must have the shape"),
        ({"target_x": np.array([0.5, 0.5, 1.5])}, "probabilities in"),
        ({"target_z": np.array([0.5, np.nan])}, "probabilities in"),
        ({"reference_x": np.full((2, 3), -0.1)}, "probabilities in"),
        ({"target_x": np.full((3, 1), 0.5)}, "1-dimensional"),
        (
            {"reference_x": np.zeros((0, 3)), "reference_x_in": np.zeros((0, 3), bool)},
            "at least one reference",
        ),
        (
            {
                "target_z": np.zeros(0),
                "reference_z": np.zeros((2, 0)),
                "reference_z_in": np.zeros((2, 0), bool),
            },
            "population row",
        ),
        ({"offline_a": 1.5}, "offline_a"),
        ({"offline_a": -0.1}, "offline_a"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": np.inf}, "gamma"),
    ],
)
def test_rmia_rejects_bad_inputs(change: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "target_x": np.full(3, 0.5),
        "reference_x": np.full((2, 3), 0.5),
        "reference_x_in": np.zeros((2, 3), bool),
        "target_z": np.full(2, 0.5),
        "reference_z": np.full((2, 2), 0.5),
        "reference_z_in": np.zeros((2, 2), bool),
    }
    args.update(change)
    with pytest.raises(ValueError, match=message):
        rmia_scores(**args)  # type: ignore[arg-type]
