"""The lossy output modes' answer tables: probability rows, the clean label kept, answers
that depend on the input only through (label, confidence bucket), and the held-out
accuracy read back from a well-specified synthetic set."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.defense import MAX_CONFIDENCE_BUCKETS, OutputCalibration, top1_probability

N_CLASSES = 5


def _held_out(
    seed: int, n: int = 600, k: int = N_CLASSES, agree: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Random logits and labels; ``agree``: labels mostly follow the logits' argmax,
    else labels are independent of them (predictions and labels disagree freely)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, k))
    if not agree:
        return logits, rng.integers(0, k, n)
    labels = logits.argmax(axis=1)
    flipped = rng.random(n) < 0.3
    labels[flipped] = rng.integers(0, k, int(flipped.sum()))
    return logits, labels


def _fitted(seed: int = 0, **kwargs: Any) -> OutputCalibration:
    return OutputCalibration.fit(*_held_out(seed, **kwargs))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("agree", [True, False], ids=["labels-follow", "labels-disagree"])
def test_tables_are_probability_rows(seed: int, agree: bool) -> None:
    calibration = _fitted(seed, agree=agree)
    assert calibration.max_buckets == MAX_CONFIDENCE_BUCKETS
    for table in calibration.tables:
        assert table.dtype == np.float32
        assert np.all(table >= 0)
        np.testing.assert_allclose(table.sum(axis=2, dtype=np.float32), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("agree", [True, False], ids=["labels-follow", "labels-disagree"])
def test_the_answers_argmax_is_the_clean_argmax(seed: int, agree: bool) -> None:
    calibration = _fitted(seed, agree=agree)
    queries = np.random.default_rng(100 + seed).normal(scale=4.0, size=(3000, N_CLASSES))
    for buckets in range(1, calibration.max_buckets + 1):
        answers = calibration.answer(queries, buckets)
        assert answers.shape == queries.shape and answers.dtype == np.float32
        np.testing.assert_array_equal(answers.argmax(axis=1), queries.argmax(axis=1))


def test_the_argmax_is_kept_for_a_label_the_held_out_rows_never_confirm() -> None:
    """Every row predicted 0 is truly 1: the table must still answer 0 for label 0."""
    logits, labels = _held_out(7)
    labels[logits.argmax(axis=1) == 0] = 1
    calibration = OutputCalibration.fit(logits, labels)
    rows = np.zeros((1, N_CLASSES))
    rows[0, 0] = 5.0
    for buckets in range(1, calibration.max_buckets + 1):
        assert calibration.answer(rows, buckets).argmax() == 0


def test_calibrated_label_answers_depend_only_on_the_argmax() -> None:
    calibration = _fitted(1)
    rng = np.random.default_rng(2)
    first = rng.normal(scale=3.0, size=(500, N_CLASSES))
    second = rng.normal(scale=3.0, size=(500, N_CLASSES))
    # Move each second row's maximum onto the first row's argmax, other logits left as drawn.
    top = first.argmax(axis=1)
    second[np.arange(500), top] = second.max(axis=1) + rng.uniform(0.1, 5.0, 500)
    assert (first.argmax(axis=1) == second.argmax(axis=1)).all()
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(calibration.answer(first, 1), calibration.answer(second, 1))
    assert len(np.unique(calibration.answer(first, 1), axis=0)) <= N_CLASSES


@pytest.mark.parametrize("buckets", range(2, MAX_CONFIDENCE_BUCKETS + 1))
def test_coarse_answers_take_at_most_k_times_b_vectors(buckets: int) -> None:
    calibration = _fitted(3)
    queries = np.random.default_rng(4).normal(scale=4.0, size=(5000, N_CLASSES))
    answers = calibration.answer(queries, buckets)
    assert len(np.unique(answers, axis=0)) <= N_CLASSES * buckets
    # Rows in the same (label, bucket) cell get one answer.
    cell = np.searchsorted(calibration.edges[buckets - 1], top1_probability(queries), side="right")
    for key in set(zip(queries.argmax(axis=1).tolist(), cell.tolist(), strict=True)):
        members = (queries.argmax(axis=1) == key[0]) & (cell == key[1])
        assert len(np.unique(answers[members], axis=0)) == 1, key


@pytest.mark.parametrize("buckets", range(1, MAX_CONFIDENCE_BUCKETS + 1))
def test_coarse_answers_ignore_everything_but_label_and_top1_probability(buckets: int) -> None:
    """Permuting the non-top logits keeps the label and softmax's top-1 probability."""
    calibration = _fitted(5)
    rng = np.random.default_rng(6)
    queries = rng.normal(scale=3.0, size=(400, N_CLASSES))
    shuffled = queries.copy()
    for row in shuffled:
        top = row.argmax()
        others = np.delete(np.arange(N_CLASSES), top)
        row[others] = row[rng.permutation(others)]
    np.testing.assert_array_equal(
        calibration.answer(queries, buckets), calibration.answer(shuffled, buckets)
    )


def test_bucket_edges_are_ascending_and_at_most_b_minus_one() -> None:
    calibration = _fitted(8)
    for b, edges in enumerate(calibration.edges, start=1):
        assert len(edges) <= b - 1
        assert np.all(np.diff(edges) > 0)
        assert calibration.tables[b - 1].shape == (N_CLASSES, len(edges) + 1, N_CLASSES)


def test_calibrated_label_diagonal_is_the_held_out_accuracy_per_label() -> None:
    """Predictions of label l are right with probability acc[l], else a uniformly drawn
    other class: the table's (l, l) entry estimates acc[l] from n_l rows, within 4
    standard errors plus the priors' pull (a few pseudo-rows over n_l)."""
    accuracy = np.array([0.45, 0.6, 0.75, 0.9])
    k, n = len(accuracy), 40_000
    rng = np.random.default_rng(11)
    predicted = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), predicted] += 10.0  # argmax = predicted
    right = rng.random(n) < accuracy[predicted]
    wrong = (predicted + rng.integers(1, k, n)) % k  # uniform over the other classes
    labels = np.where(right, predicted, wrong)
    calibration = OutputCalibration.fit(logits, labels)
    assert calibration.accuracy == pytest.approx(float(right.mean()))
    diagonal = calibration.tables[0][np.arange(k), 0, np.arange(k)]
    counts = np.bincount(predicted, minlength=k)
    standard_error = np.sqrt(accuracy * (1 - accuracy) / counts)
    prior_pull = 6.0 / counts  # LABEL_PRIOR_STRENGTH + BUCKET_PRIOR_STRENGTH + margin
    assert np.all(np.abs(diagonal - accuracy) <= 4 * standard_error + prior_pull), diagonal
    off = calibration.tables[0][:, 0, :][~np.eye(k, dtype=bool)].reshape(k, k - 1)
    expected_off = ((1 - accuracy) / (k - 1))[:, None]
    assert np.all(np.abs(off - expected_off) <= 4 * np.sqrt(expected_off / counts[:, None]) + 0.001)


def test_round_trip_gives_identical_answers() -> None:
    calibration = _fitted(0, n=500)
    queries = np.random.default_rng(1).normal(scale=3.0, size=(2000, N_CLASSES))
    loaded = OutputCalibration.from_dict(calibration.as_dict())
    for buckets in range(1, calibration.max_buckets + 1):
        np.testing.assert_array_equal(
            loaded.answer(queries, buckets), calibration.answer(queries, buckets)
        )


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_keeps_answers_to_float32_precision(seed: int) -> None:
    calibration = _fitted(seed)
    queries = np.random.default_rng(50 + seed).normal(scale=3.0, size=(2000, N_CLASSES))
    loaded = OutputCalibration.from_dict(calibration.as_dict())
    assert (loaded.n_classes, loaded.rows) == (calibration.n_classes, calibration.rows)
    assert loaded.accuracy == calibration.accuracy
    for b in range(1, calibration.max_buckets + 1):
        np.testing.assert_array_equal(loaded.edges[b - 1], calibration.edges[b - 1])
        before, after = calibration.answer(queries, b), loaded.answer(queries, b)
        np.testing.assert_allclose(after, before, rtol=0, atol=2e-7)
        np.testing.assert_array_equal(after.argmax(axis=1), queries.argmax(axis=1))
        np.testing.assert_allclose(after.sum(axis=1, dtype=np.float32), 1.0, rtol=0, atol=1e-6)


def _broken(kind: str) -> dict[str, Any]:
    block = _fitted(9).as_dict()
    if kind == "table shape":
        block["tables"][2] = np.asarray(block["tables"][2])[:, :, :-1].tolist()
    elif kind == "n_classes":
        block["n_classes"] = N_CLASSES + 1
    elif kind == "descending edges":
        block["edges"][2] = block["edges"][2][::-1]
    elif kind == "repeated edge":
        block["edges"][2] = [block["edges"][2][0]] * 2
    elif kind == "edge count":
        block["edges"][2] = block["edges"][2][:1]
    elif kind == "negative entry":
        table = np.asarray(block["tables"][0])
        table[0, 0, 1] = -0.01
        block["tables"][0] = table.tolist()
    elif kind == "nan entry":
        table = np.asarray(block["tables"][1])
        table[1, 0, 0] = np.nan
        block["tables"][1] = table.tolist()
    elif kind == "missing table":
        block["tables"] = block["tables"][:-1]
    elif kind == "no tables":
        block["tables"], block["edges"] = [], []
    return block


@pytest.mark.parametrize(
    "kind",
    [
        "table shape",
        "n_classes",
        "descending edges",
        "repeated edge",
        "edge count",
        "negative entry",
        "nan entry",
        "missing table",
        "no tables",
    ],
)
def test_from_dict_rejects_blocks_that_cannot_answer(kind: str) -> None:
    assert len(_fitted(9).edges[2]) == 2  # the broken cases below assume two edges
    with pytest.raises(ValueError):
        OutputCalibration.from_dict(_broken(kind))


@pytest.mark.parametrize("buckets", [0, -1, MAX_CONFIDENCE_BUCKETS + 1])
def test_answer_rejects_bucket_counts_outside_the_tables(buckets: int) -> None:
    calibration = _fitted(0)
    with pytest.raises(ValueError, match="buckets"):
        calibration.answer(np.zeros((2, N_CLASSES)), buckets)


def test_answer_rejects_logits_of_another_width() -> None:
    with pytest.raises(ValueError, match="shape"):
        _fitted(0).answer(np.zeros((2, N_CLASSES + 1)), 1)


def test_fit_with_fewer_buckets_keeps_that_many_tables() -> None:
    calibration = OutputCalibration.fit(*_held_out(0), max_buckets=3)
    assert calibration.max_buckets == 3
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        calibration.answer(np.zeros((1, N_CLASSES)), 4)
