"""The audit of the lossy output modes: answers from each model's own table, the
perturbed query copies, and the adaptive attacks on a deterministic, label-only view."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from service.audit.defense_aware import (
    PERTURBATION_SCALE,
    CachedModel,
    QuerySet,
    Targets,
    adds_noise,
    attack_defense,
    cache_population,
    with_model_id,
)
from service.audit.defenses import (
    LOSSY_DEFENSES,
    DefenseFactory,
    LossyDefense,
    build_defenses,
    defense_for_params,
    needs_calibration,
)
from service.defense import (
    CalibrationMissing,
    DefenseParams,
    NoiseMode,
    OutputCalibration,
    OutputMode,
)

K = 4


def _calibration(seed: int) -> OutputCalibration:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(400, K))
    labels = np.where(rng.random(400) < 0.6, logits.argmax(axis=1), rng.integers(0, K, 400))
    return OutputCalibration.fit(logits, labels)


CALIBRATIONS = {"a@1": _calibration(0), "b@1": _calibration(1)}
QUERIES = np.random.default_rng(2).normal(scale=3.0, size=(200, K))
RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("mode", "buckets"), [(OutputMode.CALIBRATED_LABEL, 1), (OutputMode.COARSE, 3)]
)
def test_lossy_defense_answers_from_the_table_of_its_model(mode: OutputMode, buckets: int) -> None:
    params = DefenseParams(output_mode=mode, confidence_buckets=3)
    defense = LossyDefense("lossy", params, CALIBRATIONS, model_id="a@1")
    answers = defense(QUERIES, QUERIES, RNG)
    assert answers.dtype == np.float64
    np.testing.assert_array_equal(answers, CALIBRATIONS["a@1"].answer(QUERIES, buckets))
    swapped = with_model_id(defense, "b@1")
    assert isinstance(swapped, LossyDefense) and swapped.model_id == "b@1"
    np.testing.assert_array_equal(
        swapped(QUERIES, QUERIES, RNG), CALIBRATIONS["b@1"].answer(QUERIES, buckets)
    )
    assert not np.array_equal(swapped(QUERIES, QUERIES, RNG), answers)


def test_lossy_defense_without_a_table_for_its_model_raises() -> None:
    defense = LossyDefense(
        "lossy", DefenseParams(output_mode=OutputMode.CALIBRATED_LABEL), CALIBRATIONS
    )
    with pytest.raises(CalibrationMissing, match="no output calibration"):
        defense(QUERIES, QUERIES, RNG)
    with pytest.raises(CalibrationMissing):
        with_model_id(defense, "unknown@1")(QUERIES, QUERIES, RNG)


def test_lossy_defense_caps_buckets_at_what_the_table_holds() -> None:
    small = {"a@1": OutputCalibration.fit(QUERIES, QUERIES.argmax(axis=1), max_buckets=2)}
    params = DefenseParams(output_mode=OutputMode.COARSE, confidence_buckets=8)
    defense = LossyDefense("coarse", params, small, model_id="a@1")
    np.testing.assert_array_equal(defense(QUERIES, QUERIES, RNG), small["a@1"].answer(QUERIES, 2))


def test_lossy_defense_is_deterministic_and_its_attacker_copy_is_itself() -> None:
    defense = LossyDefense(
        "x", DefenseParams(output_mode=OutputMode.COARSE), CALIBRATIONS, model_id="a@1"
    )
    assert defense.repeats_for_identical_input and not adds_noise(defense)
    assert defense.temperature == 1.0
    assert defense.for_attacker(np.random.default_rng(1)) is defense
    assert defense.parameters() == {"output_mode": "coarse", "buckets": 4}
    first = defense(QUERIES, QUERIES, np.random.default_rng(1))
    np.testing.assert_array_equal(first, defense(QUERIES, QUERIES, np.random.default_rng(2)))


@pytest.mark.parametrize("name", sorted(LOSSY_DEFENSES))
def test_lossy_names_build_lossy_defenses_and_need_calibration(name: str) -> None:
    (defense,) = build_defenses([name], model_id="a@1", calibrations=CALIBRATIONS)
    assert isinstance(defense, LossyDefense) and defense.params.lossy
    assert needs_calibration(DefenseFactory((name,), DefenseParams(), 0.5, "a@1", seed=0))
    assert not needs_calibration(
        DefenseFactory(("dynanoise_keyed_logits",), DefenseParams(), 0.5, "a@1", seed=0)
    )
    lossy_served = DefenseFactory(
        ("no_defense",), DefenseParams(), 0.5, "a@1", seed=0, served=defense.params
    )
    assert needs_calibration(lossy_served)


def test_defense_for_params_picks_the_mechanism_of_the_params() -> None:
    lossy = defense_for_params(
        "c", DefenseParams(output_mode=OutputMode.CALIBRATED_LABEL), calibrations=CALIBRATIONS
    )
    assert isinstance(lossy, LossyDefense)
    secret = b"s" * 32
    fresh = defense_for_params("f", DefenseParams(), secret=secret)
    keyed = defense_for_params("k", DefenseParams(noise_mode=NoiseMode.KEYED_LOGITS), secret=secret)
    assert getattr(fresh, "secret", "missing") is None
    assert getattr(keyed, "secret", None) == secret


def _images(n: int = 300, seed: int = 0) -> np.ndarray:
    """Float rows away from the bounds (0, 1), so that 4-sigma copies are never clipped."""
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=(n, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("bounds", [(0.0, 1.0), None])
def test_perturbed_copies_start_with_the_row_and_stay_in_bounds(
    bounds: tuple[float, float] | None,
) -> None:
    x = _images()
    queries = QuerySet.build(x, np.zeros(len(x)), 8, bounds=bounds, seed=3)
    assert queries.perturbed.shape == (len(x), 8, 3, 4)
    assert queries.perturbed.dtype == np.float32
    np.testing.assert_array_equal(queries.perturbed[:, 0], x)
    low, high = bounds if bounds is not None else (x.min(), x.max())
    assert queries.perturbed.min() >= low and queries.perturbed.max() <= high
    assert (queries.perturbed[:, 1:] != x[:, None]).mean() > 0.99
    np.testing.assert_array_equal(queries.rows("perturbed", 3).reshape(-1, 3, 3, 4)[:, 0], x)


def test_perturbation_std_is_the_scale_times_the_input_range() -> None:
    x = _images(2000)
    queries = QuerySet.build(x, np.zeros(len(x)), 5, bounds=(0.0, 2.0), seed=4)
    noise = (queries.perturbed[:, 1:].astype(np.float64) - x[:, None]).ravel()
    expected = PERTURBATION_SCALE * 2.0
    # 96,000 draws: the sample std's relative standard error is 1 / sqrt(2 n) ~ 0.23 %.
    assert noise.std() == pytest.approx(expected, rel=4 / np.sqrt(2 * noise.size) + 1e-3)
    assert abs(noise.mean()) < 4 * expected / np.sqrt(noise.size)


def test_perturbed_copies_are_seeded() -> None:
    x = _images(20)
    build = lambda seed: QuerySet.build(x, np.zeros(20), 4, bounds=(0, 1), seed=seed).perturbed  # noqa: E731
    np.testing.assert_array_equal(build(1), build(1))
    assert not np.array_equal(build(1), build(2))


def test_integer_inputs_are_exact_repeats_in_every_mode() -> None:
    ids = np.random.default_rng(5).integers(0, 100, size=(30, 8))
    queries = QuerySet.build(ids, np.zeros(30), 4, bounds=None, seed=0)
    for mode in ("repeat", "near_duplicate", "perturbed"):
        np.testing.assert_array_equal(queries.rows(mode, 4), np.repeat(ids, 4, axis=0))
    assert queries.perturbed.dtype == ids.dtype


def test_cached_model_answers_perturbed_queries_from_the_perturbed_logits() -> None:
    weights = np.random.default_rng(6).normal(size=(12, K))
    forward = lambda x: np.asarray(x).reshape(len(x), -1) @ weights  # noqa: E731
    x = _images(10)
    queries = QuerySet.build(x, np.zeros(10), 4, bounds=(0.0, 1.0), seed=1)
    cached = CachedModel.of(forward, queries, "a@1")
    assert cached.perturbed_logits is not None
    np.testing.assert_allclose(
        cached.perturbed_logits, forward(queries.rows("perturbed", 4)).reshape(10, 4, K), rtol=1e-6
    )
    defense = LossyDefense("c", DefenseParams(output_mode=OutputMode.COARSE), CALIBRATIONS)
    answers = cached.answers(queries, with_model_id(defense, "a@1"), RNG, "perturbed", 4)
    expected = CALIBRATIONS["a@1"].answer(cached.perturbed_logits.reshape(-1, K), 4)
    np.testing.assert_array_equal(answers.reshape(-1, K), expected)


@dataclass
class World:
    targets: Targets
    shadows: list[CachedModel]
    in_mask: np.ndarray
    queries: QuerySet
    calibrations: dict[str, OutputCalibration]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """Eight digits models on halves of a 100-row pool, each the target in turn; each
    with a table fitted on rows outside the pool (tests/audit/test_population.py)."""
    torch = pytest.importorskip("torch")
    from service.audit.datasets import load_dataset
    from service.audit.population import population_calibrations, train_population
    from service.audit.training import Recipe

    dataset = load_dataset("digits")
    pool = np.sort(np.random.default_rng(0).permutation(len(dataset))[:100])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        population = train_population(
            dataset, pool, 8, Recipe(hidden=(64,), epochs=60), seed=1, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    calibrations = dict(population_calibrations(population, dataset, seed=1))
    queries = QuerySet.build(population.pool.x, population.pool.y, 4, bounds=(0.0, 16.0), seed=1)
    cached = cache_population(population, queries)
    targets = Targets(population.in_mask, np.arange(population.size), models=cached)
    yield World(targets, cached, population.in_mask, queries, calibrations)


def _attack(world: World, params: DefenseParams, name: str = "lossy") -> dict[str, dict]:
    return attack_defense(
        lambda r: defense_for_params(name, params, calibrations=world.calibrations),
        world.targets,
        world.shadows,
        world.in_mask,
        world.queries,
        seed=0,
        repeats=3,
        budgets=(1, 4),
        n_bootstrap=50,
    )


def test_calibrated_label_gets_only_deterministic_single_query_attacks(world: World) -> None:
    attacks = _attack(world, DefenseParams(output_mode=OutputMode.CALIBRATED_LABEL))
    assert attacks and {a["queries"] for a in attacks.values()} == {1}
    assert {a["mode"] for a in attacks.values()} == {"answer", "repeat"}
    assert "label_gap/answer/1" in attacks
    again = _attack(world, DefenseParams(output_mode=OutputMode.CALIBRATED_LABEL))
    assert {n: a["auc"] for n, a in attacks.items()} == {n: a["auc"] for n, a in again.items()}


def test_calibrated_label_attacks_do_no_better_than_the_label_gap(world: World) -> None:
    """Each answer is a function of the clean label, so no score of it beats knowing
    whether the label is right (up to the per-class differences a score can read)."""
    attacks = _attack(world, DefenseParams(output_mode=OutputMode.CALIBRATED_LABEL))
    gap = attacks["label_gap/answer/1"]["auc"]
    (clean,) = build_defenses(["no_defense"])
    undefended = attack_defense(
        lambda r: clean,
        world.targets,
        world.shadows,
        world.in_mask,
        world.queries,
        seed=0,
        repeats=1,
        budgets=(1,),
        n_bootstrap=50,
    )
    assert gap == undefended["label_gap/answer/1"]["auc"]  # the same clean labels
    assert gap > 0.55  # the population leaks through its labels: the bound means something
    for name, attack in attacks.items():
        assert attack["auc"] <= gap + 0.03, (name, attack["auc"], gap)


def test_coarse_keeps_the_single_query_plan(world: World) -> None:
    attacks = _attack(world, DefenseParams(output_mode=OutputMode.COARSE, confidence_buckets=3))
    assert {a["queries"] for a in attacks.values()} == {1}
