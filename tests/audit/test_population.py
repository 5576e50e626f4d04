"""The leave-one-out population and the null control of the adaptive evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.audit.defense_aware import QuerySet, Targets, attack_defense, cache_population
from service.audit.defenses import DefenseFactory
from service.audit.population import (
    Population,
    complementary_halves,
    default_population_size,
    endpoint_pool,
    train_population,
)
from service.defense import DefenseParams

torch = pytest.importorskip("torch")

from service.audit.datasets import load_dataset  # noqa: E402
from service.audit.training import Recipe  # noqa: E402

SMALL = Recipe(hidden=(64,), epochs=40)


@pytest.mark.parametrize(("n_models", "n_rows"), [(2, 10), (8, 200), (34, 600)])
def test_models_come_in_complementary_halves(n_models: int, n_rows: int) -> None:
    mask = complementary_halves(n_models, n_rows, np.random.default_rng(0))
    assert (mask.sum(axis=1) == n_rows // 2).all()  # as many rows as the target
    assert (mask.sum(axis=0) == n_models // 2).all()  # every row in half the models
    assert (mask[0::2] ^ mask[1::2]).all()
    if n_models > 2:
        assert len({tuple(row) for row in mask}) == n_models


def test_complementary_halves_need_even_counts() -> None:
    with pytest.raises(ValueError, match="even"):
        complementary_halves(3, 10, np.random.default_rng(0))


@pytest.mark.parametrize(("m", "k"), [(100, 100), (300, 34), (5000, 16), (99, 102)])
def test_default_population_reaches_ten_thousand_member_pairs(m: int, k: int) -> None:
    size = default_population_size(m)
    assert size == k and size % 2 == 0 and size * m >= min(10_000, size * m)


def test_endpoint_pool_is_the_members_then_a_seeded_choice_of_non_members() -> None:
    members = np.array([7, 3, 5])
    non_members = np.array([20, 11, 14, 30, 2])
    pool = endpoint_pool(members, non_members, seed=0)
    expected = np.random.default_rng(0).permutation(np.sort(non_members))[:3]
    np.testing.assert_array_equal(pool, np.r_[[3, 5, 7], expected])


@pytest.fixture(scope="module")
def null_world() -> Iterator[tuple[Population, Population]]:
    """Shadows on halves of a 100-row pool; 10 targets trained on other rows only."""
    dataset = load_dataset("digits")
    order = np.random.default_rng(0).permutation(len(dataset))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shadows = train_population(dataset, np.sort(order[:100]), 8, SMALL, seed=1, progress=False)
        outsiders = train_population(
            dataset, np.sort(order[100:300]), 10, SMALL, seed=2, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    yield shadows, outsiders


@pytest.mark.slow
@pytest.mark.parametrize("design", ["outside targets", "leave-one-out"])
@pytest.mark.parametrize("name", ["no_defense", "dynanoise_fresh", "dynanoise_keyed"])
def test_null_control_every_attack_interval_contains_one_half(
    null_world: tuple[Population, Population], name: str, design: str
) -> None:
    """Members and non-members drawn exchangeably (the targets trained on neither):
    nothing can tell them apart, so every attack's AUC interval must hold 0.5. In the
    leave-one-out variant target t stands in for shadow t (excluded from its own
    shadows, its membership that shadow's), which catches a bias of the design itself.
    The intervals are simultaneous for the family (Bonferroni: 1 - 0.05 / 64 each), or
    "every" would fail by chance alone on a few of ~40 correlated attacks."""
    shadows, outsiders = null_world
    queries = QuerySet.build(shadows.pool.x, shadows.pool.y, 4)
    cached = cache_population(shadows, queries)
    outside = Population(
        shadows.pool,
        shadows.pool_rows,
        shadows.in_mask,
        np.stack([outsiders.logits_of(j, shadows.pool.x) for j in range(outsiders.size)]),
        outsiders.models,
        outsiders.model_ids,
    )
    models = cache_population(outside, queries)
    if design == "leave-one-out":
        targets = Targets(shadows.in_mask, np.arange(shadows.size), models=models[: shadows.size])
    else:
        rng = np.random.default_rng(3)
        is_member = np.stack([rng.permutation(100) < 50 for _ in range(outsiders.size)])
        targets = Targets(is_member, np.full(outsiders.size, -1), models=models)
    factory = DefenseFactory((name,), DefenseParams(), 0.5, "null@1", seed=0)
    attacks = attack_defense(
        lambda r: factory.get(name, r),
        targets,
        cached,
        shadows.in_mask,
        queries,
        seed=0,
        repeats=2,
        budgets=(1, 4),
        n_bootstrap=4000,
        confidence=1.0 - 0.05 / 64,
    )
    assert 5 <= len(attacks) <= 64
    for attack, report in attacks.items():
        low, high = report["auc_ci"]
        assert low <= 0.5 <= high, (attack, report["auc"], report["auc_ci"])


def test_endpoint_pool_tops_up_with_other_rows_the_target_never_saw() -> None:
    members = np.arange(10)
    pool = endpoint_pool(members, np.array([10, 11]), seed=1, others=np.arange(30))
    assert len(pool) == 20 and len(np.unique(pool)) == 20
    assert set(pool[10:]) >= {10, 11} and not set(pool[10:]) & set(members)
    with pytest.raises(ValueError, match="never trained on"):
        endpoint_pool(members, np.array([10, 11]), seed=1)
