"""Label-only boundary-distance and label-robustness attacks against known geometry."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy.stats import norm
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from service.audit.attacks.boundary import (
    LabelOnlyScores,
    LabelOracle,
    boundary_distance,
    label_robustness,
)

FloatArray = NDArray[np.float64]


def _linear_oracle(weights: FloatArray, bias: FloatArray) -> LabelOracle:
    """argmax_c (W x + b)_c on flattened inputs."""

    def oracle(inputs: NDArray[Any]) -> NDArray[np.integer]:
        flat = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        return np.asarray(np.argmax(flat @ weights.T + bias, axis=1))

    return oracle


def _linear_distance(weights: FloatArray, bias: FloatArray, x: FloatArray) -> FloatArray:
    """Closed form for a correct row: min_{c != y} (s_y - s_c) / ||w_y - w_c||, y = argmax s."""
    scores = x @ weights.T + bias
    y = scores.argmax(axis=1)
    gaps = scores[np.arange(len(x)), y][:, None] - scores
    norms = np.linalg.norm(weights[y][:, None, :] - weights[None], axis=2)
    ratio = np.where(
        np.arange(weights.shape[0]) == y[:, None], np.inf, gaps / np.maximum(norms, 1e-12)
    )
    return np.asarray(ratio.min(axis=1))


class _Counter:
    """Wraps an oracle; counts calls and rows and checks every input it is sent."""

    def __init__(
        self,
        oracle: LabelOracle,
        sample_shape: tuple[int, ...],
        bounds: tuple[float, float] | None = None,
    ) -> None:
        self.oracle, self.sample_shape, self.bounds = oracle, sample_shape, bounds
        self.calls = 0
        self.rows = 0

    def __call__(self, inputs: NDArray[Any]) -> NDArray[np.integer]:
        assert inputs.shape[1:] == self.sample_shape
        if self.bounds is not None:
            assert inputs.min() >= self.bounds[0] and inputs.max() <= self.bounds[1]
        self.calls += 1
        self.rows += len(inputs)
        return self.oracle(inputs)


def _random_linear(seed: int, n: int, dim: int = 10, classes: int = 4) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    weights, bias = rng.normal(size=(classes, dim)), rng.normal(size=classes)
    x = 2.0 * rng.normal(size=(n, dim))
    oracle = _linear_oracle(weights, bias)
    return oracle, x, np.asarray(oracle(x)), _linear_distance(weights, bias, x)


def test_distance_on_a_linear_model_is_a_tight_upper_bound_of_the_closed_form() -> None:
    oracle, x, y, true = _random_linear(0, 300)
    result = boundary_distance(oracle, x, y, rng=np.random.default_rng(1))
    assert np.all(result.scores > 0)  # every row is correct: y is the model's own label
    # Every estimate is the norm of a verified across point: never below the truth.
    assert np.all(result.scores >= true - 1e-9)
    ratio = result.scores / true
    # Stated tolerance: the median row within 20 %, nine rows in ten within 40 %.
    assert np.median(ratio) < 1.2
    assert np.quantile(ratio, 0.9) < 1.4


def test_gradient_steps_tighten_the_estimate_for_fewer_queries_than_more_directions() -> None:
    oracle, x, y, true = _random_linear(2, 300)

    def median_ratio(**kwargs: Any) -> tuple[float, int]:
        result = boundary_distance(oracle, x, y, rng=np.random.default_rng(3), **kwargs)
        return float(np.median(result.scores / true)), result.queries_per_row

    screening, _ = median_ratio(n_directions=8, n_gradient_steps=0)
    many_directions, many_queries = median_ratio(n_directions=32, n_gradient_steps=0)
    refined, refined_queries = median_ratio(n_directions=8, n_gradient_steps=2)
    assert screening > 1.6 and many_directions > 1.4
    assert refined < 1.2
    assert refined_queries < many_queries


def test_far_rows_score_higher_and_misclassified_rows_score_lowest() -> None:
    rng = np.random.default_rng(4)
    dim = 5
    normal = rng.normal(size=dim)
    normal /= np.linalg.norm(normal)
    weights, bias = np.stack([np.zeros(dim), normal]), np.zeros(2)
    offsets = np.array([-2.0, -0.5, 0.25, 1.0, 4.0])  # signed distance to the boundary
    t = np.repeat(offsets, 20)
    base = rng.normal(size=(t.size, dim))
    x = base - np.outer(base @ normal, normal) + np.outer(t, normal)
    y = np.ones(t.size, dtype=np.intp)  # rows with t < 0 are misclassified
    scores = boundary_distance(
        _linear_oracle(weights, bias), x, y, rng=np.random.default_rng(5)
    ).scores
    assert np.all(scores[t < 0] < 0) and np.all(scores[t > 0] > 0)
    for near, far in pairwise(offsets):
        assert scores[t == near].max() < scores[t == far].min()
    # Misclassified rows score minus their distance to becoming correct.
    np.testing.assert_allclose(scores[t < 0], t[t < 0], rtol=0.3)


def _digits_world(seed: int, n: int = 200) -> tuple[Callable[[float], LabelOracle], Any, Any, Any]:
    """A 1-nearest-neighbour classifier on n digits: members are its own training rows."""
    x_all, y_all = load_digits(return_X_y=True)
    x_all = x_all / 16.0
    order = np.random.default_rng(seed).permutation(len(x_all))
    train, held_out = order[:n], order[n : 2 * n]
    x_train, y_train = x_all[train], y_all[train]
    noise = np.random.default_rng(seed + 100)

    def make(flip: float) -> LabelOracle:
        def oracle(inputs: NDArray[Any]) -> NDArray[np.integer]:
            q = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
            sq = (q**2).sum(1)[:, None] - 2.0 * q @ x_train.T + (x_train**2).sum(1)[None]
            labels = y_train[sq.argmin(axis=1)]
            flipped = noise.random(len(q)) < flip
            return np.asarray(np.where(flipped, noise.integers(0, 10, len(q)), labels))

        return oracle

    rows = np.r_[train, held_out]
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    return make, x_all[rows], y_all[rows], is_member


def test_boundary_distance_beats_the_gap_attack_on_an_overfit_model() -> None:
    make, x, y, is_member = _digits_world(0)
    oracle = make(0.0)
    gap_auc = roc_auc_score(is_member, oracle(x) == y)
    distance = boundary_distance(oracle, x, y, rng=np.random.default_rng(6), bounds=(0.0, 1.0))
    robustness = label_robustness(
        oracle, x, y, rng=np.random.default_rng(7), sigmas=(0.1, 0.2, 0.4), bounds=(0.0, 1.0)
    )
    assert gap_auc < 0.56  # 1-NN: 100 % train accuracy, ~94 % test accuracy
    assert roc_auc_score(is_member, distance.scores) > gap_auc + 0.15
    assert roc_auc_score(is_member, robustness.scores) > gap_auc + 0.15


def test_a_noisy_oracle_still_gives_finite_scores_that_leak() -> None:
    make, x, y, is_member = _digits_world(1)
    oracle = make(0.05)  # 5 % of labels replaced by a random class
    distance = boundary_distance(oracle, x, y, rng=np.random.default_rng(8), bounds=(0.0, 1.0))
    robustness = label_robustness(oracle, x, y, rng=np.random.default_rng(9), bounds=(0.0, 1.0))
    for result in (distance, robustness):
        assert result.scores.shape == (len(y),)
        assert np.all(np.isfinite(result.scores))
    assert roc_auc_score(is_member, distance.scores) > 0.65


def test_label_robustness_matches_the_gaussian_tail_of_a_flat_boundary() -> None:
    normal = np.array([0.6, 0.8, 0.0])
    weights, bias = np.stack([np.zeros(3), normal]), np.zeros(2)
    distances = np.array([0.0, 0.5, 1.0, 2.0])
    x = np.outer(distances, normal)
    y = np.ones(4, dtype=np.intp)
    sigma = 1.0
    result = label_robustness(
        _linear_oracle(weights, bias),
        x,
        y,
        rng=np.random.default_rng(10),
        sigmas=(sigma,),
        n_samples=4000,
    )
    # P[label stays] = P[N(0, sigma^2) > -r] = Phi(r / sigma); binomial std <= 0.008.
    np.testing.assert_allclose(result.scores, norm.cdf(distances / sigma), atol=0.03)
    assert result.queries_per_row == 4000


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 1 + 8 * 13 + 2 * (24 + 12)),
        ({"n_directions": 3, "n_steps": 5, "n_gradient_steps": 0}, 1 + 3 * 6),
        (
            {"n_directions": 2, "n_steps": 4, "n_gradient_steps": 3, "n_gradient_samples": 5},
            1 + 2 * 5 + 3 * (5 + 4),
        ),
    ],
)
def test_boundary_queries_per_row_is_what_the_oracle_received(
    kwargs: dict[str, int], expected: int
) -> None:
    rng = np.random.default_rng(11)
    x = rng.random((7, 2, 3, 3)).astype(np.float32)  # images: sample shape (2, 3, 3)
    weights, bias = rng.normal(size=(3, 18)), rng.normal(size=3)
    counter = _Counter(_linear_oracle(weights, bias), (2, 3, 3), bounds=(0.0, 1.0))
    y = np.asarray(_linear_oracle(weights, bias)(x))
    y[:2] = (y[:2] + 1) % 3  # two misclassified rows
    result = boundary_distance(
        counter, x, y, rng=np.random.default_rng(12), bounds=(0, 1), **kwargs
    )
    assert result.queries_per_row == expected
    assert counter.rows == len(x) * result.queries_per_row
    # One batched call per step, for all rows at once.
    steps, gradient = kwargs.get("n_steps", 12), kwargs.get("n_gradient_steps", 2)
    assert counter.calls == 2 + steps + gradient * (1 + steps)
    assert np.all(result.scores[:2] < 0) and np.all(result.scores[2:] > 0)


def test_robustness_queries_per_row_is_what_the_oracle_received() -> None:
    rng = np.random.default_rng(13)
    x = rng.random((9, 4))
    weights, bias = rng.normal(size=(3, 4)), rng.normal(size=3)
    counter = _Counter(_linear_oracle(weights, bias), (4,), bounds=(0.0, 1.0))
    y = rng.integers(0, 3, 9)
    result = label_robustness(
        counter, x, y, rng=rng, sigmas=(0.1, 0.3, 0.5), n_samples=10, bounds=(0.0, 1.0)
    )
    assert result.queries_per_row == 30
    assert counter.rows == 9 * 30 and counter.calls == 3
    assert np.all((result.scores >= 0.0) & (result.scores <= 1.0))


def test_results_are_reproducible_from_the_seed_and_a_single_row_works() -> None:
    oracle, x, y, _ = _random_linear(14, 20)
    first = boundary_distance(oracle, x, y, rng=np.random.default_rng(15))
    again = boundary_distance(oracle, x, y, rng=np.random.default_rng(15))
    np.testing.assert_array_equal(first.scores, again.scores)
    single = boundary_distance(oracle, x[:1], y[:1], rng=np.random.default_rng(15))
    assert isinstance(single, LabelOnlyScores) and np.isfinite(single.scores[0])
    assert label_robustness(oracle, x[:1], y[:1], rng=np.random.default_rng(15)).scores.shape == (
        1,
    )


def _constant_oracle(inputs: NDArray[Any]) -> NDArray[np.integer]:
    return np.zeros(len(inputs), dtype=np.intp)


X4 = np.zeros((4, 3))
Y4 = np.zeros(4, dtype=np.intp)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: boundary_distance(_constant_oracle, np.zeros(3), Y4[:3], rng=r), "x must"),
        (lambda r: boundary_distance(_constant_oracle, X4, Y4[:3], rng=r), "y must have"),
        (lambda r: boundary_distance(_constant_oracle, X4, Y4 + 0.5, rng=r), "integer"),
        (lambda r: boundary_distance(_constant_oracle, X4, Y4 - 1, rng=r), "y must lie"),
        (
            lambda r: boundary_distance(_constant_oracle, X4, Y4 + 3, rng=r, n_classes=3),
            "y must lie",
        ),
        (lambda r: boundary_distance(_constant_oracle, X4 * np.nan, Y4, rng=r), "finite"),
        (lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, n_directions=0), "n_dir"),
        (lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, n_steps=0), "n_steps"),
        (
            lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, n_gradient_steps=-1),
            "n_gradient_steps",
        ),
        (
            lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, n_gradient_samples=1),
            "n_gradient_samples",
        ),
        (lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, max_radius=0.0), "radius"),
        (
            lambda r: boundary_distance(_constant_oracle, X4 + 2, Y4, rng=r, bounds=(0, 1)),
            "within bounds",
        ),
        (
            lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, bounds=(1, 0)),
            "low <= high",
        ),
        (
            lambda r: boundary_distance(_constant_oracle, X4, Y4, rng=r, bounds=([0, 0], 1)),
            "broadcast",
        ),
        (
            lambda r: boundary_distance(lambda q: np.zeros(1, dtype=np.intp), X4, Y4, rng=r),
            "oracle must",
        ),
        (lambda r: label_robustness(_constant_oracle, X4, Y4, rng=r, n_samples=0), "n_samples"),
        (lambda r: label_robustness(_constant_oracle, X4, Y4, rng=r, sigmas=()), "non-empty"),
        (lambda r: label_robustness(_constant_oracle, X4, Y4, rng=r, sigmas=(0.1, -1)), "> 0"),
        (lambda r: label_robustness(_constant_oracle, X4, Y4[:2], rng=r), "y must have"),
    ],
)
def test_bad_input_raises_value_error(
    call: Callable[[np.random.Generator], LabelOnlyScores], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        call(np.random.default_rng(0))
